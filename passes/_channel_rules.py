"""How each op moves channel ids (see ``_channel_groups``).

A rule looks at one node whose inputs were already visited. It either records what it understood
(output layouts, constant slices, weighted layers) and returns ``None``, or returns the reason it
cannot follow the channels, before recording anything; ``visit`` then blocks every id that reaches
the node. Ops without a rule are not understood.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import default_opset
from passes._channel_groups import ChannelGraph, ConstSlice, Layout, Weighted, node_name
from passes._prune_consts import read
from passes._prune_consts import shape as const_shape

Rule = Callable[[ChannelGraph, gs.Node], "str | None"]

_UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Clip", "Identity", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Erf", "Gelu", "Mish", "Sign", "Cast", "ThresholdedRelu", "Dropout"})
_POOL = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"})


def visit(cg: ChannelGraph, node: gs.Node) -> None:
    """Apply ``node``'s rule; block the channels that reach it if there is none or it refuses."""
    label = f"{node.op} '{node_name(node)}'"
    if node.domain not in (None, "", "ai.onnx"):
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


def _present(tensor: gs.Tensor | None) -> bool:
    return tensor is not None and bool(tensor.name)


def _layout(cg: ChannelGraph, tensor: gs.Tensor) -> Layout | None:
    return cg.layouts.get(tensor.name) if _present(tensor) else None


def _dims(cg: ChannelGraph, tensor: gs.Tensor) -> list[int | None] | None:
    """Dims of a constant or an inferred tensor (``None`` entries are unknown)."""
    found = const_shape(tensor)
    return list(found) if found is not None else cg.shapes.get(tensor.name)


def _out(cg: ChannelGraph, node: gs.Node, layout: Layout, index: int = 0) -> None:
    if index < len(node.outputs):
        cg.layouts[node.outputs[index].name] = layout


def _used(tensor: gs.Tensor, cg: ChannelGraph) -> bool:
    return bool(tensor.outputs) or any(t is tensor for t in cg.graph.outputs)


def _per_sample(dims: list[int | None] | None) -> int | None:
    """Element count with unknown/symbolic dims as 1 (as onnxopt.stats counts MACs)."""
    return None if not dims else int(np.prod([d if d else 1 for d in dims]))


def _axes(cg: ChannelGraph, node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and _present(node.inputs[1]):
        value = read(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return None


# -- channel-keeping ops ---------------------------------------------------------------------
def _unary(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = _layout(cg, node.inputs[0])
    if x is not None:
        for i in range(len(node.outputs)):  # Dropout's mask has the same layout
            _out(cg, node, x, i)
    return None


def _pool(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = _layout(cg, node.inputs[0])
    if x is None:
        return None
    if x.axis != 1:
        return f"{node.op} '{node_name(node)}' pools over the channel axis"
    if len(node.outputs) > 1 and _used(node.outputs[1], cg):
        return f"the indices output of {node.op} '{node_name(node)}' depends on channel positions"
    _out(cg, node, x)
    return None


def _normalization(cg: ChannelGraph, node: gs.Node) -> str | None:
    """BatchNormalization / InstanceNormalization: per-channel parameters are sliced."""
    x = _layout(cg, node.inputs[0])
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
    _out(cg, node, x)
    return None


def _elementwise(cg: ChannelGraph, node: gs.Node) -> str | None:
    """Add/Mul/...: computed operands unite their ids; constant operands are sliced if per-channel."""
    laid = [(i, lay) for i, t in enumerate(node.inputs) if (lay := _layout(cg, t)) is not None]
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
    _out(cg, node, Layout(ids, axis, out_rank))
    return None


def _concat(cg: ChannelGraph, node: gs.Node) -> str | None:
    laid = [_layout(cg, t) for t in node.inputs]
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
        _out(cg, node, present[0])
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
    _out(cg, node, Layout(np.concatenate(parts), axis, rank))
    return None


def _spatial(cg: ChannelGraph, tensor: gs.Tensor) -> int | None:
    dims = cg.shapes.get(tensor.name)
    if not dims or any(d is None for d in dims[2:]):
        return None
    return int(np.prod(dims[2:], dtype=np.int64))


def _flatten(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = _layout(cg, node.inputs[0])
    if x is None:
        return None
    axis = int(node.attrs.get("axis", 1)) % max(x.rank, 1)
    spread = _spatial(cg, node.inputs[0])
    if x.axis != 1 or axis != 1 or spread is None:
        return f"Flatten '{node_name(node)}' mixes the channels with other axes (or the spatial size is unknown)"
    cg.spread[id(node)] = spread
    _out(cg, node, Layout(np.repeat(x.ids, spread), 1, 2))
    return None


def _reshape(cg: ChannelGraph, node: gs.Node) -> str | None:
    """Reshape [N, C, *S] -> [N, C*prod(S)] (feature vector), or one that keeps [N, C, ...]."""
    x = _layout(cg, node.inputs[0])
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
    _out(cg, node, layout)
    return None


def _transpose(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = _layout(cg, node.inputs[0])
    if x is not None:
        perm = [int(p) for p in node.attrs.get("perm", range(x.rank - 1, -1, -1))]
        _out(cg, node, Layout(x.ids, perm.index(x.axis), x.rank))
    return None


def _squeeze(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = _layout(cg, node.inputs[0])
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
    _out(cg, node, Layout(x.ids, x.axis - sum(a < x.axis for a in axes), x.rank - len(axes)))
    return None


def _unsqueeze(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = _layout(cg, node.inputs[0])
    if x is None:
        return None
    axes = _axes(cg, node)
    if axes is None:
        return f"Unsqueeze '{node_name(node)}' has computed axes"
    rank = x.rank + len(axes)
    kept = [p for p in range(rank) if p not in {a % rank for a in axes}]
    _out(cg, node, Layout(x.ids, kept[x.axis], rank))
    return None


def _pad(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = _layout(cg, node.inputs[0])
    if x is None:
        return None
    pads = node.attrs.get("pads")
    if pads is None and len(node.inputs) > 1:
        pads = read(node.inputs[1])
    if pads is None or (len(node.inputs) > 3 and _present(node.inputs[3])):
        return f"Pad '{node_name(node)}' has computed pads or explicit axes"
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if pads[x.axis] or pads[x.axis + x.rank]:
        return f"Pad '{node_name(node)}' pads the channel axis"
    _out(cg, node, x)
    return None


def _resize(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = _layout(cg, node.inputs[0])
    if x is None:
        return None
    scales_at = 1 if node.op == "Upsample" or default_opset(cg.graph) < 11 else 2
    scales = node.attrs.get("scales")
    if scales is None and len(node.inputs) > scales_at and _present(node.inputs[scales_at]):
        scales = read(node.inputs[scales_at])
    sizes = node.inputs[3] if node.op == "Resize" and len(node.inputs) > 3 else None
    if _present(sizes) or scales is None or float(np.asarray(scales).reshape(-1)[x.axis]) != 1.0:
        return f"{node.op} '{node_name(node)}' has target sizes or scales the channel axis"
    _out(cg, node, x)
    return None


def _softmax(cg: ChannelGraph, node: gs.Node) -> str | None:
    x = _layout(cg, node.inputs[0])
    if x is None:
        return None
    modern = default_opset(cg.graph) >= 13
    axis = int(node.attrs.get("axis", -1 if modern else 1)) % x.rank
    if (modern and axis == x.axis) or (not modern and x.axis >= axis):
        return f"{node.op} '{node_name(node)}' normalises over the channels"
    _out(cg, node, x)
    return None


# -- weighted layers -------------------------------------------------------------------------
def _bias_slice(cg: ChannelGraph, node: gs.Node, index: int, out_ids: np.ndarray) -> ConstSlice | None | str:
    if len(node.inputs) <= index or not _present(node.inputs[index]):
        return None
    dims = const_shape(node.inputs[index])
    if dims is None:
        return f"bias of {node.op} '{node_name(node)}' is not a constant"
    if len(dims) == 0 or dims[-1] == 1:
        return None
    if dims[-1] != len(out_ids):
        return f"bias of {node.op} '{node_name(node)}' does not have one value per output channel"
    return ConstSlice(node, index, len(dims) - 1, out_ids)


def _conv(cg: ChannelGraph, node: gs.Node) -> str | None:
    w = const_shape(node.inputs[1])
    if w is None:
        return f"the weight of {node.op} '{node_name(node)}' is not a constant"
    x = _layout(cg, node.inputs[0])
    group = int(node.attrs.get("group", 1))
    transpose = node.op == "ConvTranspose"
    cin_axis, cout_axis = (0, 1) if transpose else (1, 0)
    cout = w[cout_axis] * (group if transpose else 1)
    y = cg.shapes.get(node.outputs[0].name)
    base = _per_sample(cg.shapes.get(node.inputs[0].name) if transpose else y)
    macs = None if base is None else base * int(np.prod(w[1:]))
    if group == 1:
        kind = "conv_transpose" if transpose else "conv"
        out_ids = cg.fresh(cout)
    elif not transpose and w[1] == 1 and x is not None and x.axis == 1 and len(x.ids) == group \
            and cout % group == 0:
        kind = "depthwise"
        out_ids = np.repeat(x.ids, cout // group)
    else:
        cg.weighted.append(Weighted(node, "grouped", None, cout_axis, None, None, macs))
        return f"read by grouped convolution {node.op} '{node_name(node)}' (group={group})"
    bias = _bias_slice(cg, node, 2, out_ids)
    if isinstance(bias, str):
        return bias
    slices = [ConstSlice(node, 1, cout_axis, out_ids)]
    if kind == "depthwise":
        cg.group_attrs.append((node, x.ids))
    in_ids = None
    if x is not None and kind != "depthwise":
        if x.axis == 1 and len(x.ids) == w[cin_axis]:
            in_ids = x.ids
            slices.append(ConstSlice(node, 1, cin_axis, x.ids))
        else:
            cg.block(x.ids, f"{node.op} '{node_name(node)}' reads channels that do not line up with its weight")
    cg.slices.extend(slices + ([bias] if bias else []))
    cg.weighted.append(Weighted(node, kind, cin_axis if in_ids is not None else None, cout_axis,
                                x.ids if kind == "depthwise" else in_ids, out_ids, macs))
    _out(cg, node, Layout(out_ids, 1, len(w)))
    return None


def _gemm(cg: ChannelGraph, node: gs.Node) -> str | None:
    b = const_shape(node.inputs[1])
    if b is None or len(b) != 2:
        return f"the weight of Gemm '{node_name(node)}' is not a constant matrix"
    trans_b = int(node.attrs.get("transB", 0))
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    out_ids = cg.fresh(b[n_axis])
    bias = _bias_slice(cg, node, 2, out_ids)
    if isinstance(bias, str):
        return bias
    x = _layout(cg, node.inputs[0])
    in_ids = None
    if x is not None:
        if not node.attrs.get("transA", 0) and x.axis == 1 and len(x.ids) == b[k_axis]:
            in_ids = x.ids
            cg.slices.append(ConstSlice(node, 1, k_axis, x.ids))
        else:
            cg.block(x.ids, f"Gemm '{node_name(node)}' reads its input transposed or misaligned")
    cg.slices.extend([ConstSlice(node, 1, n_axis, out_ids)] + ([bias] if bias else []))
    y = _per_sample(cg.shapes.get(node.outputs[0].name))
    cg.weighted.append(Weighted(node, "gemm", k_axis if in_ids is not None else None, n_axis, in_ids, out_ids,
                                None if y is None else y * b[k_axis]))
    _out(cg, node, Layout(out_ids, 1, 2))
    return None


def _matmul(cg: ChannelGraph, node: gs.Node) -> str | None:
    b = const_shape(node.inputs[1])
    y = cg.shapes.get(node.outputs[0].name)
    if b is None or len(b) != 2 or not y:
        return f"MatMul '{node_name(node)}' does not multiply by a constant matrix (or its output rank is unknown)"
    out_ids = cg.fresh(b[1])
    x = _layout(cg, node.inputs[0])
    in_ids = None
    if x is not None:
        if x.axis == x.rank - 1 and len(x.ids) == b[0]:
            in_ids = x.ids
            cg.slices.append(ConstSlice(node, 1, 0, x.ids))
        else:
            cg.block(x.ids, f"MatMul '{node_name(node)}' reads channels that are not its last axis")
    cg.slices.append(ConstSlice(node, 1, 1, out_ids))
    cg.weighted.append(Weighted(node, "matmul", 0 if in_ids is not None else None, 1, in_ids, out_ids,
                                _per_sample(y) * b[0]))
    _out(cg, node, Layout(out_ids, len(y) - 1, len(y)))
    return None


RULES: dict[str, Rule] = {
    **{op: _unary for op in _UNARY},
    **{op: _pool for op in _POOL},
    **{op: _elementwise for op in _ELEMENTWISE},
    "BatchNormalization": _normalization, "InstanceNormalization": _normalization,
    "Concat": _concat, "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Pad": _pad, "Resize": _resize, "Upsample": _resize,
    "Softmax": _softmax, "LogSoftmax": _softmax,
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "MatMul": _matmul,
}
