"""Recovery without training, step 1: fold pruned channels that are constant into the next bias.

A channel whose value does not depend on the input (a BatchNormalization with gamma 0 outputs its
beta; a ReLU of that is still constant; a filter of zeros outputs its bias) contributes a constant
to every layer that reads it. Before the channel is removed, that contribution is added to the
reading layer's bias (Conv bias, Gemm C, or the per-channel Add after a MatMul). For Convs with
zero padding the border outputs saw zeros instead of the constant, so there the fold is approximate;
least squares on calibration data (``_prune_lstsq``) corrects the rest.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from passes.pruning.channel_groups import ChannelGraph, ConstSlice, Weighted, node_name
from passes.pruning.consts import Names, producer, read, replace, require, uniform
from passes.pruning.consts import shape as const_shape

logger = logging.getLogger(__name__)

_Memo = dict[tuple[str, int], "float | None"]


def _clip(node: gs.Node, v: float) -> float:
    low = node.attrs.get("min", read(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None)
    high = node.attrs.get("max", read(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None)
    return float(np.clip(v, -np.inf if low is None else low, np.inf if high is None else high))


_SCALAR: dict[str, Callable[[gs.Node, float], float]] = {
    "Relu": lambda n, v: max(v, 0.0),
    "LeakyRelu": lambda n, v: v if v >= 0 else float(n.attrs.get("alpha", 0.01)) * v,
    "Sigmoid": lambda n, v: float(1.0 / (1.0 + np.exp(-v))),
    "Tanh": lambda n, v: float(np.tanh(v)),
    "Clip": _clip,
    "Identity": lambda n, v: v, "Dropout": lambda n, v: v, "Cast": lambda n, v: v,
}
_SAME_POSITION = frozenset({"MaxPool", "GlobalMaxPool", "GlobalAveragePool", "Transpose", "Squeeze", "Unsqueeze"})
_COMBINE: dict[str, Callable[[list[float]], float]] = {
    "Add": sum, "Sum": sum, "Max": max, "Min": min,
    "Sub": lambda v: v[0] - v[1], "Mul": lambda v: float(np.prod(v)), "Div": lambda v: v[0] / v[1],
}


class ConstantChannels:
    """Which channel positions of which tensors hold a value that does not depend on the input."""

    def __init__(self, cg: ChannelGraph) -> None:
        self.cg = cg
        self._weighted = {id(w.node): w for w in cg.weighted}
        self._memo: _Memo = {}
        self._zero: dict[int, np.ndarray] = {}
        self._consts: dict[str, np.ndarray | None] = {}

    def value(self, tensor: gs.Tensor, pos: int) -> float | None:
        key = (tensor.name, pos)
        if key not in self._memo:
            self._memo[key] = None  # cycles cannot happen in a DAG; this only guards re-entry
            self._memo[key] = self._evaluate(tensor, pos)
        return self._memo[key]

    def _evaluate(self, tensor: gs.Tensor, pos: int) -> float | None:
        node = producer(tensor)
        if node is None or tensor.name not in self.cg.layouts:
            return None
        op = node.op
        if op in _SCALAR:
            v = self.value(node.inputs[0], pos)
            return None if v is None else _SCALAR[op](node, v)
        if op in _SAME_POSITION or (op == "AveragePool" and not (node.attrs.get("count_include_pad", 0)
                                                                   and any(node.attrs.get("pads", [])))):
            return self.value(node.inputs[0], pos)
        if op in ("Flatten", "Reshape"):
            spread = self.cg.spread.get(id(node), 1)
            return self.value(node.inputs[0], pos // spread)
        if op == "BatchNormalization":
            return self._batchnorm(node, pos)
        if op in _COMBINE:
            return self._combine(node, pos)
        if op == "Concat":
            if any(t.name not in self.cg.layouts for t in node.inputs):
                return None
            for t in node.inputs:
                size = len(self.cg.layouts[t.name].ids)
                if pos < size:
                    return self.value(t, pos)
                pos -= size
            return None
        weighted = self._weighted.get(id(node))
        if weighted is None or weighted.out_ids is None or not self._zero_filters(weighted)[pos]:
            return None
        return _bias_value(weighted, pos)

    def _zero_filters(self, w: Weighted) -> np.ndarray:
        """Per output channel of ``w``: is its filter all zero? (computed once per layer)"""
        if id(w.node) not in self._zero:
            tensor = w.node.inputs[1]
            fill = uniform(tensor)
            dims = const_shape(tensor)
            if fill is not None and dims is not None:
                zero = np.full(dims[w.out_axis], float(fill) == 0.0)
            else:
                rows = np.moveaxis(require(tensor), w.out_axis, 0)
                zero = ~rows.reshape(rows.shape[0], -1).any(axis=1)
            self._zero[id(w.node)] = zero
        return self._zero[id(w.node)]

    def _read(self, tensor: gs.Tensor) -> np.ndarray | None:
        if tensor.name not in self._consts:
            self._consts[tensor.name] = read(tensor)
        return self._consts[tensor.name]

    def _batchnorm(self, node: gs.Node, pos: int) -> float | None:
        params = [float(p[pos]) for t in node.inputs[1:5] if (p := self._read(t)) is not None]
        if len(params) != 4:
            return None
        gamma, beta, mean, var = params
        v = self.value(node.inputs[0], pos)
        if v is None:
            return beta if gamma == 0.0 else None
        return gamma * (v - mean) / float(np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))) + beta

    def _combine(self, node: gs.Node, pos: int) -> float | None:
        layout = self.cg.layouts[node.outputs[0].name]
        values = []
        for t in node.inputs:
            if t.name in self.cg.layouts:
                v = self.value(t, pos)
            else:
                c = self._read(t)
                v = None if c is None else _per_channel_value(c, layout.axis - (layout.rank - c.ndim), pos)
            if v is None:
                return None
            values.append(v)
        return float(_COMBINE[node.op](values))


def _per_channel_value(c: np.ndarray, axis: int, pos: int) -> float | None:
    if axis >= 0:
        c = np.take(c, pos if c.shape[axis] > 1 else 0, axis=axis)
    flat = c.reshape(-1)
    return float(flat[0]) if flat.size and np.all(flat == flat[0]) else None


def _bias_value(w: Weighted, pos: int) -> float | None:
    """The output of a producer whose filter for channel ``pos`` is all zero: its bias."""
    if len(w.node.inputs) < 3 or not w.node.inputs[2].name:
        return 0.0
    bias = read(w.node.inputs[2])
    if bias is None or (bias.ndim > 1 and bias.shape[0] != 1):
        return None
    value = _per_channel_value(bias, bias.ndim - 1, pos)
    beta = float(w.node.attrs.get("beta", 1.0)) if w.kind == "gemm" else 1.0
    return None if value is None else beta * value


def fold_constant_channels(graph: gs.Graph, cg: ChannelGraph, pruned: np.ndarray,
                           names: Names) -> tuple[int, list[tuple[str, str]]]:
    """Add the contribution of pruned constant channels to the readers' biases (before surgery).

    Returns the number of channels folded and (layer, reason) for readers that could not take it.
    """
    constants = ConstantChannels(cg)
    folded = 0
    skipped: list[tuple[str, str]] = []
    for w in cg.weighted:
        if w.in_ids is None or w.in_axis is None or w.kind not in ("conv", "gemm", "matmul"):
            continue
        drop = np.flatnonzero(cg.pruned_positions(w.in_ids, pruned))
        values = {int(p): v for p in drop if (v := constants.value(w.node.inputs[0], int(p)))}
        if not values:
            continue
        weight = np.moveaxis(require(w.node.inputs[1]).astype(np.float64), w.in_axis, 0)
        delta = sum(v * weight[p].reshape(weight.shape[1], -1).sum(axis=1) for p, v in values.items())
        if w.kind == "gemm":
            delta = delta * float(w.node.attrs.get("alpha", 1.0))
        why = _add_to_bias(graph, cg, w, np.asarray(delta), names)
        if why is None:
            folded += len(values)
        else:
            skipped.append((node_name(w.node), why))
    return folded, skipped


def _add_to_bias(graph: gs.Graph, cg: ChannelGraph, w: Weighted, delta: np.ndarray, names: Names) -> str | None:
    node, n, out_ids = w.node, len(delta), w.out_ids
    assert out_ids is not None  # conv/gemm/matmul produce their output channels
    if w.kind == "matmul":
        return _add_to_following_add(graph, cg, w, delta, names)
    if w.kind == "gemm":
        beta = float(node.attrs.get("beta", 1.0))
        if beta == 0.0:
            return "Gemm has beta = 0"
        delta = delta / beta
    dtype = require(node.inputs[1]).dtype
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
    old = read(node.inputs[2]) if has_bias else np.zeros(n, dtype)
    if old is None:
        return "its bias is not a constant"
    new = (old.astype(np.float64) + delta).astype(dtype)  # broadcasts a scalar/[1] bias to [n]
    replace(graph, names, node, 2, new)
    if not has_bias or old.ndim == 0 or old.shape[-1] != n:
        cg.slices.append(ConstSlice(node, 2, new.ndim - 1, out_ids))
    return None


def bias_add(cg: ChannelGraph, w: Weighted) -> ConstSlice | None:
    """The per-channel constant of the Add that alone reads a MatMul's output (its bias), if any."""
    consumers = w.node.outputs[0].outputs
    if len(consumers) != 1 or consumers[0].op != "Add":
        return None
    return next((s for s in cg.slices if s.node is consumers[0] and np.array_equal(s.ids, w.out_ids)), None)


def _add_to_following_add(graph: gs.Graph, cg: ChannelGraph, w: Weighted, delta: np.ndarray,
                          names: Names) -> str | None:
    s = bias_add(cg, w)
    if s is None:
        return "MatMul has no per-channel bias Add to take the constant"
    old = require(s.node.inputs[s.index])
    shape = [1] * old.ndim
    shape[s.axis] = len(delta)
    replace(graph, names, s.node, s.index, (old + delta.reshape(shape)).astype(old.dtype))
    return None
