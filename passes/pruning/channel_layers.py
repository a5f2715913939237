"""Channel rules of the weighted layers (see ``_channel_rules``): Conv, ConvTranspose, Gemm and MatMul
with constant weights create fresh ids for their output channels (a depthwise Conv passes its input
ids on), record the weight and bias slices, and consume the ids of their input channels.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from passes.pruning.channel_groups import ChannelGraph, ConstSlice, Layout, Weighted, node_name, present
from passes.pruning.consts import shape as const_shape


def _per_sample(dims: list[int | None] | None) -> int | None:
    """Element count with unknown/symbolic dims as 1 (as onnxopt.stats counts MACs)."""
    return None if not dims else int(np.prod([d if d else 1 for d in dims]))


def _bias_slice(cg: ChannelGraph, node: gs.Node, index: int, out_ids: np.ndarray) -> ConstSlice | None | str:
    if len(node.inputs) <= index or not present(node.inputs[index]):
        return None
    dims = const_shape(node.inputs[index])
    if dims is None:
        return f"bias of {node.op} '{node_name(node)}' is not a constant"
    if len(dims) == 0 or dims[-1] == 1:
        return None
    if dims[-1] != len(out_ids):
        return f"bias of {node.op} '{node_name(node)}' does not have one value per output channel"
    return ConstSlice(node, index, len(dims) - 1, out_ids)


def conv(cg: ChannelGraph, node: gs.Node) -> str | None:
    w = const_shape(node.inputs[1])
    if w is None:
        return f"the weight of {node.op} '{node_name(node)}' is not a constant"
    x = cg.layout_of(node.inputs[0])
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
    cg.set_output(node, Layout(out_ids, 1, len(w)))
    return None


def gemm(cg: ChannelGraph, node: gs.Node) -> str | None:
    b = const_shape(node.inputs[1])
    if b is None or len(b) != 2:
        return f"the weight of Gemm '{node_name(node)}' is not a constant matrix"
    trans_b = int(node.attrs.get("transB", 0))
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    out_ids = cg.fresh(b[n_axis])
    bias = _bias_slice(cg, node, 2, out_ids)
    if isinstance(bias, str):
        return bias
    x = cg.layout_of(node.inputs[0])
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
    cg.set_output(node, Layout(out_ids, 1, 2))
    return None


def matmul(cg: ChannelGraph, node: gs.Node) -> str | None:
    b = const_shape(node.inputs[1])
    y = cg.shapes.get(node.outputs[0].name)
    if b is None or len(b) != 2 or not y:
        return f"MatMul '{node_name(node)}' does not multiply by a constant matrix (or its output rank is unknown)"
    out_ids = cg.fresh(b[1])
    x = cg.layout_of(node.inputs[0])
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
    cg.set_output(node, Layout(out_ids, len(y) - 1, len(y)))
    return None
