"""Physically remove pruned channels: slice every constant that carries them, fix attributes and shapes.

The input is a ``ChannelGraph`` and a boolean mask over channel ids (``pruned[root]``). Weights,
biases, BatchNormalization parameters and per-channel constants lose the pruned positions along the
recorded axis; depthwise Convs get their ``group`` attribute and feature Reshapes their target shape
updated; the recorded shapes of intermediate tensors are corrected. The result is an ordinary,
smaller ONNX graph.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from passes.pruning.channel_groups import ChannelGraph
from passes.pruning.consts import Names, read, replace, replace_sliced

logger = logging.getLogger(__name__)


def apply(graph: gs.Graph, cg: ChannelGraph, pruned: np.ndarray, names: Names) -> int:
    """Remove the channels whose unit is marked in ``pruned``; return the number of constants changed."""
    plans: dict[tuple[int, int], tuple[gs.Node, int, dict[int, np.ndarray]]] = {}
    for s in cg.slices:
        drop = cg.pruned_positions(s.ids, pruned)
        if not drop.any():
            continue
        _, _, keep = plans.setdefault((id(s.node), s.index), (s.node, s.index, {}))
        keep[s.axis] = keep.get(s.axis, np.ones(len(s.ids), dtype=bool)) & ~drop
    for node, index, keep in plans.values():
        replace_sliced(graph, names, node, index, keep)
    for node, ids in cg.group_attrs:
        node.attrs["group"] = int((~cg.pruned_positions(ids, pruned)).sum())
    for node, ids in cg.reshapes:
        kept = int((~cg.pruned_positions(ids, pruned)).sum())
        target = np.array(read(node.inputs[1]), dtype=np.int64).reshape(-1)
        if target[1] != kept:
            target[1] = kept
            replace(graph, names, node, 1, target)
    tensors = graph.tensors()
    for name, layout in cg.layouts.items():
        tensor = tensors.get(name)
        drop = cg.pruned_positions(layout.ids, pruned)
        if tensor is not None and tensor.shape is not None and drop.any() and len(tensor.shape) > layout.axis:
            dims = list(tensor.shape)
            dims[layout.axis] = int((~drop).sum())
            tensor.shape = dims
    logger.debug("sliced %d constants", len(plans))
    return len(plans)
