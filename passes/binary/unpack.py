"""Turn a bit-packed model (``binary`` pass) back into a plain float model.

Every constant subgraph that unpacks bits (it contains a BitShift and all its inputs are
constants) is evaluated once in onnxruntime, with the same kernels a session would run, and
replaced by the float initializer it computes, under the same tensor name. The result needs no
bitwise ops, so runtimes without BitShift can run it, and its outputs equal the packed model's.
The subgraphs are found by their ops, not their names, so models packed by earlier versions (one
bit-decoding chain per layer, names under ``<weight>/binary0/``) unpack the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.graph import export, rewire
from onnxopt.pass_base import EXACT, Pass, PassContext, PassReport, Tolerance
from onnxopt.runtime import make_session
from passes.binary.pack import UNPACK_OPS

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class UnpackBinary(Pass):
    name: ClassVar[str] = "unpack"
    summary: ClassVar[str] = "fold bit-packed weight subgraphs (from 'binary') back into float initializers"
    needs_calibration: ClassVar[bool] = False
    lossy: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True
    tolerance: ClassVar[Tolerance] = EXACT

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        targets = _unpacked_tensors(graph)
        if not targets:
            report.notes.append("no bit-packed weights found")
            return report
        outputs = {id(t) for t in graph.outputs}
        for t in [t for t in targets if id(t) in outputs]:
            report.skip(f"tensor '{t.name}'", "is a graph output; left computed")
        targets = [t for t in targets if id(t) not in outputs]
        values = _evaluate(graph, [t.name for t in targets], ctx) if targets else {}
        for tensor in targets:
            constant = gs.Constant(tensor.name, values[tensor.name])
            rewire(tensor, constant)
            tensor.inputs.clear()
            report.changes += 1
        report.details["unpacked"] = [t.name for t in targets]
        return report


def _unpacked_tensors(graph: gs.Graph) -> list[gs.Variable]:
    """Outputs of constant subgraphs that contain an unpacking op and feed non-constant nodes."""
    constant: set[int] = set()  # ids of tensors computed from constants only
    unpacks: set[int] = set()  # ids of tensors with an unpacking op upstream
    const_nodes: set[int] = set()
    for node in graph.nodes:
        has_subgraph = any(isinstance(v, gs.Graph) for v in node.attrs.values())
        if not has_subgraph and (node.op == "Constant" or (node.inputs and all(
                isinstance(t, gs.Constant) or id(t) in constant for t in node.inputs))):
            const_nodes.add(id(node))
            constant.update(id(t) for t in node.outputs)
        if node.op in UNPACK_OPS or any(id(t) in unpacks for t in node.inputs):
            unpacks.update(id(t) for t in node.outputs)
    outputs = {id(t) for t in graph.outputs}
    found = []
    for node in graph.nodes:
        if id(node) not in const_nodes:
            continue
        for t in node.outputs:
            live = id(t) in outputs or any(id(c) not in const_nodes for c in t.outputs)
            if id(t) in unpacks and live:
                found.append(t)
    return found


def _evaluate(graph: gs.Graph, names: list[str], ctx: PassContext) -> dict[str, np.ndarray]:
    """Values of the constant tensors ``names``, computed by onnxruntime (optimizations off)."""
    model = export(graph)
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    needed: set[int] = set()
    stack = list(names)
    while stack:
        index = producer.get(stack.pop())
        if index is not None and index not in needed:
            needed.add(index)
            stack.extend(nodes[index].input)
    picked = [nodes[i] for i in sorted(needed)]
    used = {name for node in picked for name in node.input}
    sub = onnx.helper.make_graph(
        picked, "unpack", inputs=[], outputs=[onnx.ValueInfoProto(name=n) for n in names],
        initializer=[t for t in model.graph.initializer if t.name in used])
    sub_model = onnx.helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    session = make_session(sub_model, providers=ctx.providers, threads=ctx.threads)
    return dict(zip(names, session.run(names, {})))
