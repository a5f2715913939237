"""How each op moves channel ids (see ``channel_groups``), and the analysis that applies them (``analyse``).

A rule looks at one node whose inputs were already visited. It either records what it understood
(output layouts, constant slices, weighted layers) and returns ``None``, or returns the reason it
cannot follow the channels, before recording anything; ``visit`` then blocks every id that reaches
the node. Ops without a rule are not understood. The rules of the weighted layers
(Conv/ConvTranspose/Gemm/MatMul, which create channel ids) live in ``channel_layers``; the rules
here pass ids on, unite, concatenate or move them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import default_opset, is_default_domain
from passes.pruning import channel_layers as layers
from passes.pruning.channel_groups import ChannelGraph, ConstSlice, Layout, node_name, present
from passes.pruning.consts import read
from passes.pruning.consts import shape as const_shape

Rule = Callable[[ChannelGraph, gs.Node], "str | None"]

_UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Clip", "Identity", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Erf", "Gelu", "Mish", "Sign", "Cast", "ThresholdedRelu", "Dropout"})
_POOL = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"})


def analyse(graph: gs.Graph) -> ChannelGraph:
    """Analyse ``graph`` (toposorted in place) and return its channel groups."""
    graph.toposort()
    cg = ChannelGraph(graph)
    for node in graph.nodes:
        visit(cg, node)
    cg.finish()
    return cg


def visit(cg: ChannelGraph, node: gs.Node) -> None:
    """Apply ``node``'s rule; block the channels that reach it if there is none or it refuses."""
    label = f"{node.op} '{node_name(node)}'"
    if not is_default_domain(node):
        reason: str | None = f"consumed by {label} from domain '{node.domain}'"
    elif any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        reason = f"consumed by {label}, which has a subgraph"
    elif node.op in RULES:
        reason = RULES[node.op](cg, node)
    else:
        reason = f"consumed by {label}, which the channel analysis does not understand"
    if reason is not None:
        for tensor in node.inputs:
            cg.block_tensor(tensor, reason)


def _dims(cg: ChannelGraph, tensor: gs.Tensor) -> list[int | None] | None:
    """Dims of a constant or an inferred tensor (``None`` entries are unknown)."""
    found = const_shape(tensor)
    return list(found) if found is not None else cg.shapes.get(tensor.name)


def _used(tensor: gs.Tensor, cg: ChannelGraph) -> bool:
    return bool(tensor.outputs) or any(t is tensor for t in cg.graph.outputs)


def _axes(cg: ChannelGraph, node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and present(node.inputs[1]):
        value = read(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return None


# -- channel-keeping ops ---------------------------------------------------------------------
def _unary(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = cg.layout_of(node.inputs[0])
    if x is not None:
        for i in range(len(node.outputs)):  # Dropout's mask has the same layout
            cg.set_output(node, x, i)
    return None


def _pool(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = cg.layout_of(node.inputs[0])
    if x is None:
        return None
    if x.axis != 1:
        return f"{node.op} '{node_name(node)}' pools over the channel axis"
    if len(node.outputs) > 1 and _used(node.outputs[1], cg):
        return f"the indices output of {node.op} '{node_name(node)}' depends on channel positions"
    cg.set_output(node, x)
    return None


def _normalization(cg: ChannelGraph, node: gs.Node) -> str | None:
    """BatchNormalization / InstanceNormalization: per-channel parameters are sliced."""
    x = cg.layout_of(node.inputs[0])
    if x is None:
        return None
    params = range(1, 5 if node.op == "BatchNormalization" else 3)
    if x.axis != 1:
        return f"{node.op} '{node_name(node)}' normalises an axis other than the channels"
    if any(_used(t, cg) for t in node.outputs[1:]):
        return f"{node.op} '{node_name(node)}' outputs training statistics"
    for i in params:
        if const_shape(node.inputs[i]) != (len(x.ids),):
            return f"parameter '{node.inputs[i].name}' of {node.op} '{node_name(node)}' is not a constant [C] vector"
    cg.slices.extend(ConstSlice(node, i, 0, x.ids) for i in params)
    if node.op == "BatchNormalization":
        cg.batchnorms.append((node, x.ids))
    cg.set_output(node, x)
    return None


def _elementwise(cg: ChannelGraph, node: gs.Node) -> str | None:
    """Add/Mul/...: computed operands unite their ids; constant operands are sliced if per-channel."""
    laid = [(i, lay) for i, t in enumerate(node.inputs) if (lay := cg.layout_of(t)) is not None]
    if not laid:
        return None
    ranks = [len(d) for t in node.inputs if (d := _dims(cg, t)) is not None] + [lay.rank for _, lay in laid]
    out_dims = cg.shapes.get(node.outputs[0].name)
    out_rank = len(out_dims) if out_dims else max(ranks)
    axes = {lay.axis + out_rank - lay.rank for _, lay in laid}
    ids = laid[0][1].ids
    if len(axes) != 1 or any(len(lay.ids) != len(ids) for _, lay in laid):
        return f"{node.op} '{node_name(node)}' combines tensors whose channels do not line up"
    axis = axes.pop()
    slices = []
    for i, t in enumerate(node.inputs):
        if any(i == j for j, _ in laid):
            continue
        constant = const_shape(t) is not None
        dims = _dims(cg, t)
        if dims is None:
            return f"operand '{t.name}' of {node.op} '{node_name(node)}' has an unknown shape"
        aligned = axis - (out_rank - len(dims))
        if aligned < 0 or dims[aligned] == 1:
            continue
        if constant and dims[aligned] == len(ids):
            slices.append(ConstSlice(node, i, aligned, ids))
            continue
        return f"{node.op} '{node_name(node)}' combines the channels with '{t.name}', which the analysis cannot follow"
    for _, lay in laid[1:]:
        cg.unite(ids, lay.ids)
    cg.slices.extend(slices)
    cg.set_output(node, Layout(ids, axis, out_rank))
    return None


def _concat(cg: ChannelGraph, node: gs.Node) -> str | None:
    laid = [cg.layout_of(t) for t in node.inputs]
    present = [lay for lay in laid if lay is not None]
    if not present:
        return None
    rank = present[0].rank
    axis = int(node.attrs.get("axis", 0)) % rank
    if any(lay.rank != rank for lay in present):
        return f"Concat '{node_name(node)}' joins tensors of different ranks"
    if all(lay.axis != axis for lay in present):  # joined along another axis: channels must line up
        if len(present) != len(laid) or len({(lay.axis, len(lay.ids)) for lay in present}) != 1:
            return f"Concat '{node_name(node)}' joins along axis {axis} tensors whose channels do not line up"
        for lay in present[1:]:
            cg.unite(present[0].ids, lay.ids)
        cg.set_output(node, present[0])
        return None
    if any(lay.axis != axis for lay in present):
        return f"Concat '{node_name(node)}' joins tensors whose channels lie on different axes"
    parts = []
    for t, lay in zip(node.inputs, laid):
        if lay is not None:
            parts.append(lay.ids)
            continue
        dims = _dims(cg, t)
        if not dims or len(dims) != rank or not dims[axis]:
            return f"Concat '{node_name(node)}' joins '{t.name}', whose channel count is unknown"
        opaque = cg.fresh(int(dims[axis]))
        cg.block(opaque, f"concatenated by '{node_name(node)}' with '{t.name}', which has no channel layout")
        parts.append(opaque)
    cg.set_output(node, Layout(np.concatenate(parts), axis, rank))
    return None


def _spatial(cg: ChannelGraph, tensor: gs.Tensor) -> int | None:
    dims = cg.shapes.get(tensor.name)
    if not dims or any(d is None for d in dims[2:]):
        return None
    return int(np.prod(dims[2:], dtype=np.int64))


def _flatten(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = cg.layout_of(node.inputs[0])
    if x is None:
        return None
    axis = int(node.attrs.get("axis", 1)) % max(x.rank, 1)
    spread = _spatial(cg, node.inputs[0])
    if x.axis != 1 or axis != 1 or spread is None:
        return f"Flatten '{node_name(node)}' mixes the channels with other axes (or the spatial size is unknown)"
    cg.spread[id(node)] = spread
    cg.set_output(node, Layout(np.repeat(x.ids, spread), 1, 2))
    return None


def _reshape(cg: ChannelGraph, node: gs.Node) -> str | None:
    """Reshape [N, C, *S] -> [N, C*prod(S)] (feature vector), or one that keeps [N, C, ...]."""
    x = cg.layout_of(node.inputs[0])
    if x is None:
        return None
    target = read(node.inputs[1])
    dims, out = cg.shapes.get(node.inputs[0].name), cg.shapes.get(node.outputs[0].name)
    spread = _spatial(cg, node.inputs[0])
    c = len(x.ids)
    why = f"Reshape '{node_name(node)}' mixes the channels with other axes"
    if x.axis != 1 or target is None or dims is None or out is None or len(out) < 2 or spread is None:
        return why
    if len(out) == 2 and out[1] == c * spread:
        layout = Layout(np.repeat(x.ids, spread), 1, 2)
        cg.spread[id(node)] = spread
    elif out[1] == c and (out[2:] == dims[2:] or (spread == 1 and all(d == 1 for d in out[2:]))):
        layout = Layout(x.ids, 1, len(out))
    else:
        return why
    if len(target) > 1 and target[1] > 0:
        cg.reshapes.append((node, layout.ids))
    cg.set_output(node, layout)
    return None


def _transpose(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = cg.layout_of(node.inputs[0])
    if x is not None:
        perm = [int(p) for p in node.attrs.get("perm", range(x.rank - 1, -1, -1))]
        cg.set_output(node, Layout(x.ids, perm.index(x.axis), x.rank))
    return None


def _squeeze(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = cg.layout_of(node.inputs[0])
    if x is None:
        return None
    axes = _axes(cg, node)
    if axes is None:
        dims = cg.shapes.get(node.inputs[0].name)
        if dims is None or any(d is None for d in dims):
            return f"Squeeze '{node_name(node)}' has no axes and an unknown input shape"
        axes = [i for i, d in enumerate(dims) if d == 1]
    axes = [a % x.rank for a in axes]
    if x.axis in axes:
        return f"Squeeze '{node_name(node)}' removes the channel axis"
    cg.set_output(node, Layout(x.ids, x.axis - sum(a < x.axis for a in axes), x.rank - len(axes)))
    return None


def _unsqueeze(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = cg.layout_of(node.inputs[0])
    if x is None:
        return None
    axes = _axes(cg, node)
    if axes is None:
        return f"Unsqueeze '{node_name(node)}' has computed axes"
    rank = x.rank + len(axes)
    kept = [p for p in range(rank) if p not in {a % rank for a in axes}]
    cg.set_output(node, Layout(x.ids, kept[x.axis], rank))
    return None


def _pad(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = cg.layout_of(node.inputs[0])
    if x is None:
        return None
    pads = node.attrs.get("pads")
    if pads is None and len(node.inputs) > 1:
        pads = read(node.inputs[1])
    if pads is None or (len(node.inputs) > 3 and present(node.inputs[3])):
        return f"Pad '{node_name(node)}' has computed pads or explicit axes"
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if pads[x.axis] or pads[x.axis + x.rank]:
        return f"Pad '{node_name(node)}' pads the channel axis"
    cg.set_output(node, x)
    return None


def _resize(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = cg.layout_of(node.inputs[0])
    if x is None:
        return None
    scales_at = 1 if node.op == "Upsample" or default_opset(cg.graph) < 11 else 2
    scales = node.attrs.get("scales")
    if scales is None and len(node.inputs) > scales_at and present(node.inputs[scales_at]):
        scales = read(node.inputs[scales_at])
    sizes = node.inputs[3] if node.op == "Resize" and len(node.inputs) > 3 else None
    if present(sizes) or scales is None or float(np.asarray(scales).reshape(-1)[x.axis]) != 1.0:
        return f"{node.op} '{node_name(node)}' has target sizes or scales the channel axis"
    cg.set_output(node, x)
    return None


def _softmax(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = cg.layout_of(node.inputs[0])
    if x is None:
        return None
    modern = default_opset(cg.graph) >= 13
    axis = int(node.attrs.get("axis", -1 if modern else 1)) % x.rank
    if (modern and axis == x.axis) or (not modern and x.axis >= axis):
        return f"{node.op} '{node_name(node)}' normalises over the channels"
    cg.set_output(node, x)
    return None


RULES: dict[str, Rule] = {
    **{op: _unary for op in _UNARY},
    **{op: _pool for op in _POOL},
    **{op: _elementwise for op in _ELEMENTWISE},
    "BatchNormalization": _normalization, "InstanceNormalization": _normalization,
    "Concat": _concat, "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Pad": _pad, "Resize": _resize, "Upsample": _resize,
    "Softmax": _softmax, "LogSoftmax": _softmax,
    "Conv": layers.conv, "ConvTranspose": layers.conv, "Gemm": layers.gemm, "MatMul": layers.matmul,
}
