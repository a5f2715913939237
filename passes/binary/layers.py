"""Which layers the binary pass binarises, and their geometry.

A *weight layer* is a Conv, Gemm or MatMul node whose weight is a float initializer. Its weight is
viewed as a matrix ``[channels, K]`` (one row per output channel, ``K`` weights per channel) in the
order an im2col patch of its input is laid out, so that the layer computes ``Y = X · Wᵀ`` with
``X`` the ``[rows, K]`` patches (``patch_rows``). Grouped convolutions have one patch matrix per
group; output channel ``c`` belongs to group ``c // (channels / groups)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassReport

logger = logging.getLogger(__name__)

#: ops counted when deciding which compute layers are first and last in the network
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger",
                         "QLinearConv", "QLinearMatMul"})
SUPPORTED_OPS = ("Conv", "Gemm", "MatMul")
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass
class WeightLayer:
    """A binarisable node: its weight initializer and how the weight maps to ``[channels, K]``."""

    node: gs.Node
    weight: gs.Constant
    #: axis of the weight tensor that indexes output channels
    channel_axis: int
    groups: int = 1

    @property
    def name(self) -> str:
        return self.node.name or self.weight.name

    @property
    def channels(self) -> int:
        return int(self.weight.shape[self.channel_axis])

    @property
    def k(self) -> int:
        """Weights per output channel."""
        return int(np.prod(self.weight.shape)) // self.channels

    def matrix(self, values: np.ndarray | None = None) -> np.ndarray:
        """The weight (or ``values`` of the weight's shape) as ``[channels, K]``."""
        w = self.weight.values if values is None else values
        return np.moveaxis(w, self.channel_axis, 0).reshape(self.channels, -1)

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        """Inverse of ``matrix``: a ``[channels, K]`` array back in the weight's layout."""
        moved = list(self.weight.shape)
        moved.insert(0, moved.pop(self.channel_axis))
        return np.ascontiguousarray(np.moveaxis(m.reshape(moved), 0, self.channel_axis))

    def alpha_shape(self) -> list[int]:
        """Shape under which per-channel scales broadcast against the weight."""
        shape = [1] * len(self.weight.shape)
        shape[self.channel_axis] = self.channels
        return shape

    # -- im2col -----------------------------------------------------------------------------
    def batch(self, x_shape: tuple[int, ...]) -> int:
        """Samples in an input of shape ``x_shape`` (Gemm with transA holds them on axis 1)."""
        return int(x_shape[1] if self.node.op == "Gemm" and self.node.attrs.get("transA", 0) else x_shape[0])

    def positions(self, x_shape: tuple[int, ...]) -> int:
        """Patch rows per sample for an input of shape ``x_shape``."""
        if self.node.op == "Conv":
            return int(np.prod(self._conv_geometry(x_shape)[3]))
        if self.node.op == "MatMul":
            return int(np.prod(x_shape[1:-1])) if len(x_shape) > 2 else 1
        return 1

    def patch_rows(self, x: np.ndarray, sample: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Patches ``[rows, groups, K]`` of input ``x`` at (sample, position) pairs."""
        if self.node.op == "Conv":
            return self._conv_patches(x, sample, position)
        if self.node.op == "Gemm":
            a = x.T if self.node.attrs.get("transA", 0) else x
            return a[sample][:, None, :]
        rows = x.reshape(x.shape[0], -1, x.shape[-1]) if x.ndim > 1 else x[None, None, :]
        return rows[sample, position][:, None, :]

    def _conv_geometry(self, x_shape: tuple[int, ...]):
        attrs = self.node.attrs
        kernel = list(self.weight.shape[2:])
        nd = len(kernel)
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        spatial = list(x_shape[2:])
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = [max((math.ceil(s / st) - 1) * st + e - s, 0) for s, st, e in zip(spatial, strides, eff)]
            small = [t // 2 for t in total]
            begin = small if auto_pad == "SAME_UPPER" else [t - h for t, h in zip(total, small)]
            pads = begin + [t - b for t, b in zip(total, begin)]
        elif auto_pad == "VALID":
            pads = [0] * (2 * nd)
        else:
            pads = list(attrs.get("pads", [0] * (2 * nd)))
        out = [(s + pads[i] + pads[i + nd] - e) // st + 1 for i, (s, e, st) in enumerate(zip(spatial, eff, strides))]
        return strides, dilations, pads, out, eff

    def _conv_patches(self, x: np.ndarray, sample: np.ndarray, position: np.ndarray) -> np.ndarray:
        strides, dilations, pads, out, eff = self._conv_geometry(x.shape)
        nd = len(out)
        padded = np.pad(x[np.unique(sample)], [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
        remap = np.searchsorted(np.unique(sample), sample)
        windows = np.lib.stride_tricks.sliding_window_view(padded, eff, axis=tuple(range(2, 2 + nd)))
        windows = windows[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
                          + tuple(slice(None, None, d) for d in dilations)]
        where = np.unravel_index(position, out)
        patches = windows[(remap, slice(None)) + tuple(where)]  # [rows, C, *kernel]
        return patches.reshape(len(sample), self.groups, -1)


def select_layers(graph: gs.Graph, *, op_types: tuple[str, ...], keep_first: bool, keep_last: bool,
                  exclude_nodes: tuple[str, ...], min_weights: int, report: PassReport,
                  min_channel_weights: int = 0) -> list[WeightLayer]:
    """Weight layers to binarise, in graph order; every candidate left alone gets a reason."""
    first, last = boundary_compute_nodes(graph)
    consumers: dict[int, int] = {}
    for node in graph.nodes:
        for t in node.inputs:
            consumers[id(t)] = consumers.get(id(t), 0) + 1
    chosen = []
    for node in graph.nodes:
        if node.op not in op_types:
            continue
        target = f"{node.op} '{node.name or (node.inputs[1].name if len(node.inputs) > 1 else '')}'"
        reason = _reject(node, consumers)
        if reason is None and node.name in exclude_nodes:
            reason = "excluded by exclude_nodes"
        if reason is None and keep_first and id(node) in first:
            reason = "first compute layer kept in full precision (keep_first)"
        if reason is None and keep_last and id(node) in last:
            reason = "last compute layer kept in full precision (keep_last)"
        if reason is None and node.inputs[1].values.size < min_weights:
            reason = f"{node.inputs[1].values.size} weights < min_weights={min_weights}"
        if reason is None and _layer(node).k < min_channel_weights:
            reason = f"{_layer(node).k} weights per output channel < min_channel_weights={min_channel_weights}"
        if reason is not None:
            report.skip(target, reason)
            continue
        chosen.append(_layer(node))
    return chosen


def _reject(node: gs.Node, consumers: dict[int, int]) -> str | None:
    if len(node.inputs) < 2:
        return "has no weight input"
    w = node.inputs[1]
    if not isinstance(w, gs.Constant):
        return "weight is not a constant initializer (computed, or already packed)"
    if isinstance(node.inputs[0], gs.Constant):
        return "both operands are constant (fold constants first)"
    if w.values.dtype.type not in FLOAT_DTYPES:
        return f"weight has dtype {w.values.dtype}, not a float type"
    if consumers.get(id(w), 0) > 1:
        return "weight is shared with another node"
    if node.op == "Conv" and w.values.ndim < 3:
        return f"Conv weight of rank {w.values.ndim}"
    if node.op == "MatMul" and w.values.ndim != 2:
        return f"MatMul weight of rank {w.values.ndim}; only 2-D weights are binarised"
    if node.op == "Gemm" and w.values.ndim != 2:
        return f"Gemm weight of rank {w.values.ndim}"
    return None


def _layer(node: gs.Node) -> WeightLayer:
    w = node.inputs[1]
    if node.op == "Conv":
        return WeightLayer(node, w, 0, int(node.attrs.get("group", 1)))
    if node.op == "Gemm":
        return WeightLayer(node, w, 0 if node.attrs.get("transB", 0) else 1)
    return WeightLayer(node, w, 1)


def boundary_compute_nodes(graph: gs.Graph) -> tuple[set[int], set[int]]:
    """Ids of compute nodes with no compute node upstream (first) and none downstream (last)."""
    order = graph.nodes
    upstream: dict[int, bool] = {}
    first = set()
    for node in order:
        seen = any(upstream.get(id(t), False) for t in node.inputs)
        if node.op in COMPUTE_OPS and not seen:
            first.add(id(node))
        for t in node.outputs:
            upstream[id(t)] = seen or node.op in COMPUTE_OPS
    downstream: dict[int, bool] = {}
    last = set()
    for node in reversed(order):
        seen = any(downstream.get(id(t), False) for t in node.outputs)
        if node.op in COMPUTE_OPS and not seen:
            last.add(id(node))
        for t in node.inputs:
            downstream[id(t)] = downstream.get(id(t), False) or seen or node.op in COMPUTE_OPS
    return first, last
