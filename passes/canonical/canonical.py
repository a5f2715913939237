"""Canonicalisation: shape inference, Identity/Dropout removal and dead-node cleanup.

These passes tidy a graph before (and after) the compressing passes; constant folding and
BatchNormalization folding live in ``passes.canonical.fold_constants`` and ``passes.canonical.fold_batchnorm``. All
are lossless. Every pass walks If/Loop bodies too, and every node it leaves alone gets a reason in
the report.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import INFERENCE_FAILURES, constant_value, default_opset, node_label, rewire
from onnxopt.pass_base import Pass, PassContext, PassReport
from passes.canonical.util import (
    all_graphs,
    all_nodes,
    apply_inferred,
    first_line,
    infer,
    owns,
)

logger = logging.getLogger(__name__)


# -- shape inference -------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ShapeInference(Pass):
    name: ClassVar[str] = "shape-inference"
    summary: ClassVar[str] = ("Annotate tensors with the dtypes/shapes onnx shape inference (with data "
                              "propagation) finds; weights untouched.")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        try:
            inferred = infer(graph, report.notes)
        except INFERENCE_FAILURES as exc:
            report.notes.append(f"shape inference failed, graph left as it was: {first_line(exc)}")
            logger.warning("shape inference failed: %s", first_line(exc))
            return report
        report.changes = apply_inferred(graph, inferred, report)
        report.details["tensors_annotated"] = report.changes
        return report


# -- Identity / Dropout ----------------------------------------------------------------------------
def _identity_skip(node: gs.Node, g: gs.Graph, opset: int) -> str | None:
    """Why ``node`` (Identity/Dropout) cannot be removed from ``g``, else ``None``."""
    if node.op == "Dropout":
        if any(o.outputs or o in g.outputs for o in node.outputs[1:] if not o.is_empty()):
            return "its mask output is used"
        if opset < 7 and node.attrs.get("is_test", 0) == 0:
            return "Dropout before opset 7 without is_test=1 is in training mode"
        if len(node.inputs) > 2 and not node.inputs[2].is_empty():
            mode = constant_value(node.inputs[2])
            if mode is None or bool(np.asarray(mode).item()):
                return "training_mode is not a constant false"
    if not node.inputs or node.inputs[0].is_empty():
        return "it has no input"
    src, dst = node.inputs[0], node.outputs[0]
    if dst in g.outputs:
        if src in g.inputs or src in g.outputs:
            return "both its input and its output are graph inputs/outputs; removing it would merge them"
        if isinstance(src, gs.Constant) or len(src.inputs) != 1 or not owns(g, src.inputs[0]):
            return "its input is not produced inside this graph, so nothing can write the graph output"
    return None


def _remove_identity(node: gs.Node, g: gs.Graph) -> None:
    src, dst = node.inputs[0], node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    if dst in g.outputs:
        # The producer writes the graph output directly; src's other consumers read it from there.
        producer = src.inputs[0]
        producer.outputs[producer.outputs.index(src)] = dst
        keep, new = src, dst
    else:
        keep, new = dst, src
    rewire(keep, new)
    g.nodes.remove(node)


@dataclass(kw_only=True)
class EliminateIdentity(Pass):
    name: ClassVar[str] = "eliminate-identity"
    summary: ClassVar[str] = "Remove Identity and inference-mode Dropout, rewiring their consumers."

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        opset = default_opset(graph)
        for g in all_graphs(graph):
            for node in [n for n in g.nodes if n.op in ("Identity", "Dropout")]:
                reason = _identity_skip(node, g, opset)
                if reason:
                    report.skip(node_label(node), reason)
                    continue
                _remove_identity(node, g)
                report.changes += 1
        return report


# -- cleanup ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DeadNodeCleanup(Pass):
    name: ClassVar[str] = "cleanup"
    summary: ClassVar[str] = ("Remove nodes whose outputs reach no graph output and the initializers only "
                              "they used; sort topologically.")

    merge_duplicate_constants: bool = field(default=False, metadata={
        "help": "also make consumers of byte-identical initializers share one (later per-tensor passes "
                "then see shared weights)"})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        merged = self._merge_duplicates(graph) if self.merge_duplicate_constants else 0
        nodes_before = sum(1 for _ in all_nodes(graph))
        consts_before = _constant_names(graph)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        nodes_removed = nodes_before - sum(1 for _ in all_nodes(graph))
        consts_removed = len(consts_before - _constant_names(graph))
        report.details.update(nodes_removed=nodes_removed, initializers_removed=consts_removed,
                              duplicate_initializers_merged=merged)
        report.changes = nodes_removed + consts_removed
        return report

    @staticmethod
    def _merge_duplicates(graph: gs.Graph) -> int:
        """Merge the main graph's duplicate initializers (a kept one is visible to every subgraph too)."""
        merged = 0
        first: dict[tuple[str, tuple[int, ...], str], gs.Constant] = {}
        for tensor in list(graph.tensors().values()):
            if not isinstance(tensor, gs.Constant) or tensor in graph.outputs:
                continue
            values = np.ascontiguousarray(tensor.values)
            key = (str(values.dtype), values.shape, hashlib.sha256(values.tobytes()).hexdigest())
            keep = first.setdefault(key, tensor)
            if keep is tensor or not np.array_equal(keep.values, values):
                continue
            rewire(tensor, keep)
            merged += 1
        return merged


def _constant_names(graph: gs.Graph) -> set[str]:
    return {name for g in all_graphs(graph) for name, t in g.tensors().items() if isinstance(t, gs.Constant)}
