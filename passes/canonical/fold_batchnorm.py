"""BatchNormalization folding into the preceding Conv, ConvTranspose or Gemm.

A separate, explicit pass: channel pruning wants the BatchNormalization scales before folding. The
folded weights are rounded back to their dtype, so the pass is exact up to that rounding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import FreshNames, constant_value, default_opset, node_label
from onnxopt.errors import PreconditionError
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
from onnxopt.settings_check import require_known
from passes.canonical.util import all_graphs, owns

logger = logging.getLogger(__name__)


class _CannotFold(Exception):
    """Internal: a BatchNormalization that stays, with the reason as message."""


def _const(tensor: gs.Tensor, what: str) -> np.ndarray:
    value = constant_value(tensor)
    if value is None:
        raise _CannotFold(f"{what} '{tensor.name}' is not a constant")
    return np.asarray(value)


def _bn_affine(bn: gs.Node, opset: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) in float64 with BN(x) = a * x + b per channel."""
    if opset < 7:
        raise _CannotFold(f"BatchNormalization of opset {opset} (< 7) is not handled")
    if bn.attrs.get("training_mode", 0):
        raise _CannotFold("training_mode=1 uses batch statistics")
    if bn.attrs.get("spatial", 1) == 0:
        raise _CannotFold("spatial=0 (per-activation statistics) is not handled")
    if any(o.outputs for o in bn.outputs[1:]):
        raise _CannotFold("its running mean/variance outputs are used")
    scale, bias, mean, var = (_const(t, w).astype(np.float64) for t, w in
                              zip(bn.inputs[1:5], ("scale", "bias", "mean", "variance")))
    a = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return a, bias - a * mean


def _producer(bn: gs.Node, g: gs.Graph) -> gs.Node:
    x = bn.inputs[0]
    if len(x.inputs) != 1 or not owns(g, x.inputs[0]):
        raise _CannotFold("its input is not produced by a node of this graph")
    producer = x.inputs[0]
    if producer.op not in ("Conv", "ConvTranspose", "Gemm"):
        raise _CannotFold(f"preceded by {producer.op}, not Conv/ConvTranspose/Gemm")
    if len(x.outputs) != 1 or x in g.outputs:
        users = len(x.outputs) + (x in g.outputs)
        raise _CannotFold(
            f"the {producer.op} output '{x.name}' has {users} consumers; folding would change the others")
    return producer


def _fold_into(producer: gs.Node, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New (weight, bias) of ``producer`` with the affine ``a * y + b`` applied to its output."""
    weight = _const(producer.inputs[1], "weight")
    if not np.issubdtype(weight.dtype, np.floating):
        raise _CannotFold(f"weight dtype {weight.dtype} is not floating point")
    has_bias = len(producer.inputs) > 2 and not producer.inputs[2].is_empty()
    bias = _const(producer.inputs[2], "bias").astype(np.float64) if has_bias else np.zeros(1)
    w = weight.astype(np.float64)
    channels = len(a)
    if producer.op == "Conv":
        if w.shape[0] != channels:
            raise _CannotFold(f"Conv has {w.shape[0]} output channels, BatchNormalization {channels}")
        w = w * a.reshape(-1, *[1] * (w.ndim - 1))
        return w, bias * a + b
    if producer.op == "ConvTranspose":
        group = int(producer.attrs.get("group", 1))
        if w.shape[1] * group != channels or w.shape[0] % group:
            raise _CannotFold(
                f"ConvTranspose weight {list(w.shape)} (group {group}) does not give {channels} channels")
        kernel = w.shape[2:]
        grouped = w.reshape(group, w.shape[0] // group, w.shape[1], *kernel)
        w = (grouped * a.reshape(group, 1, w.shape[1], *[1] * len(kernel))).reshape(w.shape)
        return w, bias * a + b
    trans_b = int(producer.attrs.get("transB", 0))
    if w.shape[0 if trans_b else 1] != channels:
        raise _CannotFold(f"Gemm B {list(w.shape)} (transB={trans_b}) does not give {channels} channels")
    w = w * (a[:, None] if trans_b else a[None, :])
    beta = float(producer.attrs.get("beta", 1.0))
    return w, beta * bias * a + b


def _fold_batchnorm(bn: gs.Node, g: gs.Graph, opset: int, names: FreshNames, limit: float | None) -> None:
    a, b = _bn_affine(bn, opset)
    producer = _producer(bn, g)
    weight, bias = _fold_into(producer, a, b)
    peak = max(float(np.max(np.abs(weight), initial=0.0)), float(np.max(np.abs(bias), initial=0.0)))
    if limit is not None and not peak <= limit:
        raise _CannotFold(f"the folded weights would reach {peak:.3g}, above max_abs_weight={limit:g}")
    dtype = _const(producer.inputs[1], "weight").dtype
    base = producer.name or producer.outputs[0].name
    new_w = gs.Constant(names.fresh(f"{base}_bnfold_W"), weight.astype(dtype))
    new_b = gs.Constant(names.fresh(f"{base}_bnfold_B"), bias.astype(dtype))
    producer.inputs[1] = new_w
    if len(producer.inputs) > 2:
        producer.inputs[2] = new_b
    else:
        producer.inputs.append(new_b)
    if producer.op == "Gemm":
        producer.attrs["beta"] = 1.0
    y = bn.outputs[0]
    bn.inputs.clear()
    bn.outputs.clear()
    producer.outputs[0] = y
    g.nodes.remove(bn)


@dataclass(kw_only=True)
class FoldBatchNorm(Pass):
    name: ClassVar[str] = "fold-batchnorm"
    summary: ClassVar[str] = "Fold inference BatchNormalization into the preceding Conv, ConvTranspose or Gemm."
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=1e-4, atol=1e-5)

    max_abs_weight: float | None = field(default=None, metadata={
        "help": "leave a BatchNormalization unfolded when the folded weight or bias would exceed this "
                "magnitude (65504: what float16 can hold; none: no limit)"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={
        "help": "BatchNormalization node names to leave unfolded (comma-separated)"})

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        if self.max_abs_weight is not None and not self.max_abs_weight > 0:
            raise PreconditionError(f"{self.name}: max_abs_weight must be > 0, got {self.max_abs_weight:g}")
        require_known(self.name, "exclude_nodes", self.exclude_nodes,
                      [n.name for g in all_graphs(graph) for n in g.nodes if n.op == "BatchNormalization" and n.name],
                      "BatchNormalization nodes")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        opset, names = default_opset(graph), FreshNames.of(graph)
        folded_into: dict[str, int] = {}
        for g in all_graphs(graph):
            for bn in [n for n in g.nodes if n.op == "BatchNormalization"]:
                label = node_label(bn)
                if bn.name and bn.name in self.exclude_nodes:
                    report.skip(label, "excluded by exclude_nodes")
                    continue
                producer_op = bn.inputs[0].inputs[0].op if len(bn.inputs[0].inputs) == 1 else None
                try:
                    _fold_batchnorm(bn, g, opset, names, self.max_abs_weight)
                except _CannotFold as exc:
                    report.skip(label, str(exc))
                    continue
                folded_into[producer_op] = folded_into.get(producer_op, 0) + 1
                report.changes += 1
        report.details["folded_into"] = folded_into
        return report
