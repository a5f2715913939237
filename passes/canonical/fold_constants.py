"""Constant folding: evaluate nodes whose inputs are all constants once, with onnxruntime."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import INFERENCE_FAILURES, STANDARD_DOMAINS, constant_value, nbytes, node_label
from onnxopt.ops import QDQ_OPS
from onnxopt.pass_base import Pass, PassContext, PassReport
from onnxopt.runtime import make_session
from passes.canonical.util import (
    all_graphs,
    all_nodes,
    apply_inferred,
    first_line,
    infer,
)

logger = logging.getLogger(__name__)

_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                         "Multinomial", "Bernoulli"})


def _static_shape_value(node: gs.Node) -> np.ndarray | None:
    """The value of a ``Shape``/``Size`` node, or of ``Gather(Shape(x), const)``, from static dims."""
    if node.op in ("Shape", "Size") and isinstance(node.inputs[0], gs.Variable):
        dims = node.inputs[0].shape
        if dims is None:
            return None
        if node.op == "Shape":
            dims = dims[node.attrs.get("start", 0):node.attrs.get("end", len(dims))]
        if not all(isinstance(d, int) for d in dims):
            return None
        return np.array(dims, np.int64) if node.op == "Shape" else np.array(math.prod(dims), np.int64)
    if node.op != "Gather" or node.attrs.get("axis", 0) not in (0, -1):
        return None
    data, index_values = node.inputs[0], constant_value(node.inputs[1])
    if len(data.inputs) != 1 or data.inputs[0].op != "Shape" or index_values is None:
        return None
    shape_node = data.inputs[0]
    dims = shape_node.inputs[0].shape
    if dims is None:
        return None
    dims = dims[shape_node.attrs.get("start", 0):shape_node.attrs.get("end", len(dims))]
    idx = np.asarray(index_values).astype(np.int64)
    if np.any(idx >= len(dims)) or np.any(idx < -len(dims)):
        return None
    picked = np.array(dims, dtype=object)[idx]
    if not all(isinstance(d, int) for d in np.atleast_1d(picked)):
        return None
    return np.array(picked, dtype=np.int64).reshape(idx.shape)


def _fold_static_shapes(graph: gs.Graph) -> int:
    count = 0
    for g in all_graphs(graph):
        for node in list(g.nodes):
            value = _static_shape_value(node)
            if value is not None and not isinstance(node.outputs[0], gs.Constant):
                out = node.outputs[0]
                out.to_constant(value)
                out.inputs.clear()
                count += 1
    return count


def _evaluate(nodes: list[gs.Node], constants: dict[str, np.ndarray], graph: gs.Graph) -> dict[str, np.ndarray]:
    """Every output of ``nodes`` (topologically sorted, inputs in ``constants`` or produced by earlier
    ones), computed in onnxruntime with optimizations off: the kernels the model itself runs with."""
    tensors: dict[str, gs.Tensor] = {name: gs.Constant(name, value) for name, value in constants.items()}

    def copy(t: gs.Tensor) -> gs.Tensor:
        return gs.Variable.empty() if t.is_empty() else tensors.setdefault(t.name, gs.Variable(t.name))

    copies = [gs.Node(n.op, n.name, dict(n.attrs), [copy(t) for t in n.inputs], [copy(t) for t in n.outputs],
                      domain=n.domain) for n in nodes]
    outputs = [tensors[t.name] for n in nodes for t in n.outputs if not t.is_empty()]
    probe = gs.Graph(nodes=copies, outputs=outputs, opset=graph.opset, import_domains=graph.import_domains)
    names = [t.name for t in outputs]
    results = make_session(probe).run(names, {})
    if not all(isinstance(r, np.ndarray) for r in results):
        raise TypeError("an output is not a tensor")
    return dict(zip(names, results))


@dataclass(kw_only=True)
class ConstantFolding(Pass):
    name: ClassVar[str] = "fold-constants"
    summary: ClassVar[str] = ("Evaluate nodes whose inputs are all constants (and Shape of static dims) "
                              "once, storing the results as initializers.")

    size_threshold_bytes: int = field(default=1 << 20, metadata={
        "help": "a folded tensor above this size stays computed when it would be larger than the inputs "
                "it is computed from (Expand/Tile/ConstantOfShape would bloat the model)"})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        try:
            apply_inferred(graph, infer(graph, report.notes), report)
        except INFERENCE_FAILURES as exc:
            report.notes.append(f"shape inference failed ({first_line(exc)}); Shape nodes of static shapes "
                                "are not folded")
        before = {id(n) for n in all_nodes(graph)}
        report.details["shape_values_folded"] = _fold_static_shapes(graph)
        graph.toposort()
        for g in all_graphs(graph):  # outer graphs first: their folded tensors are constants inside
            self._fold(g, graph, report)
        graph.cleanup(remove_unused_graph_inputs=False)
        report.changes = len(before - {id(n) for n in all_nodes(graph)})
        report.details["nodes_folded"] = report.changes
        return report

    def _fold(self, g: gs.Graph, root: gs.Graph, report: PassReport) -> None:
        values, candidates = self._candidates(g, report)
        constants = {t.name: _value(t, values) for n in candidates for t in n.inputs
                     if isinstance(t, gs.Constant) or t.name in values}  # initializers and lowered Constant nodes
        folded: set[int] = set()
        if candidates:
            try:
                values.update(_evaluate(candidates, constants, root))
                folded = {id(n) for n in candidates}
            except Exception:  # noqa: BLE001 - onnxruntime's exception types are not public; retry node by node
                folded = self._fold_one_by_one(candidates, values, root, report)
        folded.update(id(n) for n in g.nodes if n.op == "Constant" and n.outputs[0].name in values)
        for node in g.nodes:
            if id(node) not in folded:
                continue
            for out in node.outputs:
                if out.name in values and (out in g.outputs or any(id(c) not in folded for c in out.outputs)):
                    self._materialize(out, values, folded, report)

    def _candidates(self, g: gs.Graph, report: PassReport) -> tuple[dict[str, np.ndarray], list[gs.Node]]:
        """(values of lowered Constant nodes, nodes computable from constants alone in topological order)."""
        values: dict[str, np.ndarray] = {}
        available: set[str] = set()
        candidates = []
        for node in g.nodes:
            if not all(isinstance(t, gs.Constant) or t.name in available for t in node.inputs if not t.is_empty()):
                continue
            lowered = constant_value(node.outputs[0]) if node.op == "Constant" else None
            if lowered is not None:
                values[node.outputs[0].name] = np.asarray(lowered)
                available.add(node.outputs[0].name)
                continue
            reason = self._exclusion(node)
            if reason:
                report.skip(node_label(node), reason)
                continue
            candidates.append(node)
            available.update(t.name for t in node.outputs if not t.is_empty())
        return values, candidates

    @staticmethod
    def _fold_one_by_one(candidates: list[gs.Node], values: dict[str, np.ndarray], root: gs.Graph,
                         report: PassReport) -> set[int]:
        folded: set[int] = set()
        for node in candidates:
            known = [t for t in node.inputs if not t.is_empty()]
            if not all(isinstance(t, gs.Constant) or t.name in values for t in known):
                continue  # an input's producer failed; the first failure was reported
            try:
                values.update(_evaluate([node], {t.name: _value(t, values) for t in known}, root))
            except Exception as exc:  # noqa: BLE001 - onnxruntime's exception types are not public
                report.skip(node_label(node), f"onnxruntime could not evaluate it: {first_line(exc)}")
            else:
                folded.add(id(node))
        return folded

    def _materialize(self, tensor: gs.Tensor, values: dict[str, np.ndarray], folded: set[int],
                     report: PassReport) -> None:
        """Turn a computed tensor into a constant, or keep its producer when that would bloat the model."""
        if isinstance(tensor, gs.Constant):
            return
        producer, value = tensor.inputs[0], values[tensor.name]
        source_bytes = sum(_value(t, values).nbytes for t in producer.inputs if not t.is_empty())
        if producer.op != "Constant" and value.nbytes > self.size_threshold_bytes and value.nbytes > source_bytes:
            folded.discard(id(producer))
            report.skip(node_label(producer), f"folding would store {value.nbytes} bytes (> size_threshold_bytes="
                                                f"{self.size_threshold_bytes}, larger than its inputs)")
            for t in producer.inputs:
                if not t.is_empty():
                    self._materialize(t, values, folded, report)
            return
        tensor.to_constant(value)
        tensor.inputs.clear()

    def _exclusion(self, node: gs.Node) -> str | None:
        """Why a node whose inputs are all constant must not be folded, else ``None``."""
        if node.op in _RANDOM_OPS:
            return "non-deterministic op; folding would freeze one random draw"
        if node.op == "Dropout" and len(node.inputs) > 2 and not node.inputs[2].is_empty():
            return "Dropout with a training_mode input may be random"
        if node.op in QDQ_OPS:
            return "Q/DQ nodes stay: they mark quantization for the runtime"
        if (node.domain or "") not in STANDARD_DOMAINS:
            return f"op of custom domain '{node.domain}'"
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return f"{node.op} with a subgraph is not evaluated (its body is folded separately)"
        out_bytes = [nbytes(t) for t in node.outputs if not t.is_empty()]
        in_bytes = [nbytes(t) for t in node.inputs if not t.is_empty()]
        if None not in out_bytes and None not in in_bytes and sum(out_bytes) > self.size_threshold_bytes \
                and sum(out_bytes) > sum(in_bytes):
            return (f"folding would store {sum(out_bytes)} bytes (> size_threshold_bytes="
                    f"{self.size_threshold_bytes}, larger than its inputs)")
        return None


def _value(tensor: gs.Tensor, values: dict[str, np.ndarray]) -> np.ndarray:
    return tensor.values if isinstance(tensor, gs.Constant) else values[tensor.name]
