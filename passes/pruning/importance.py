"""Importance of each unit (coupled channel), scored separately from any surgery.

- ``bn``: |gamma| of the BatchNormalization nodes on the unit's channels (the largest one when
  several layers are coupled, so a channel goes only if it is small everywhere); groups without
  BatchNormalization fall back to ``l1``.
- ``l1`` / ``l2``: norms of the producing layers' filters (summed over coupled layers).
- ``activation``: mean |activation| of the channel where a layer reads it, on calibration data
  (the largest over the layers that read it).

Scores are indexed by unit (root id); units without a score are NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.data import DataSource
from onnxopt.runtime import iter_activations
from passes.pruning.channel_groups import ChannelGraph, Group
from passes.pruning.consts import read, uniform
from passes.pruning.consts import shape as const_shape

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupScores:
    """The scores of one group's units, and how they were obtained."""

    values: np.ndarray  # one per unit of the group, in group order
    method: str
    #: True when the values are on an absolute scale (BN gamma); otherwise divided by the group's max
    absolute: bool


def batchnorm_scores(cg: ChannelGraph) -> np.ndarray:
    scores = np.full(cg.num_ids, np.nan)
    for node, ids in cg.batchnorms:
        gamma = read(node.inputs[1])
        if gamma is not None:
            np.fmax.at(scores, cg.roots(ids), np.abs(gamma.astype(np.float64)))
    return scores


def norm_scores(cg: ChannelGraph, order: int) -> np.ndarray:
    sums = np.zeros(cg.num_ids)
    seen = np.zeros(cg.num_ids, dtype=bool)
    for w in cg.weighted:
        if not w.produces:
            continue
        per_channel = _filter_norms(w.node.inputs[1], w.out_axis, order)
        if per_channel is None:
            continue
        roots = cg.roots(w.out_ids)
        np.add.at(sums, roots, per_channel)
        seen[roots] = True
    out = sums if order == 1 else np.sqrt(sums)
    out[~seen] = np.nan
    return out


def _filter_norms(tensor: gs.Tensor, axis: int, order: int) -> np.ndarray | None:
    """Per output channel: sum of |w| (order 1) or of w^2 (order 2); placeholders not materialised."""
    fill = uniform(tensor)
    dims = const_shape(tensor) if fill is not None else None
    if dims is not None:
        per = abs(float(fill)) ** order * (int(np.prod(dims)) // dims[axis])
        return np.full(dims[axis], per)
    weight = read(tensor)
    if weight is None:
        return None
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1).astype(np.float64)
    return np.abs(rows).sum(axis=1) if order == 1 else (rows ** 2).sum(axis=1)


def activation_scores(cg: ChannelGraph, data: DataSource, *, threads: int | None = None) -> np.ndarray:
    """Mean |x| per unit where Conv/Gemm/MatMul layers read it, over the calibration data."""
    readers = [w for w in cg.weighted if w.in_ids is not None]
    names = list(dict.fromkeys(w.node.inputs[0].name for w in readers))
    if not names:
        return np.full(cg.num_ids, np.nan)
    sums = {name: np.zeros(len(cg.layouts[name].ids)) for name in names}
    count = 0
    for values in iter_activations(cg.graph, names, data, threads=threads, description="scoring channels"):
        for name in names:
            layout = cg.layouts[name]
            x = np.abs(np.moveaxis(values[name].astype(np.float64), layout.axis, -1))
            sums[name] += x.reshape(-1, x.shape[-1]).mean(axis=0) * len(values[name])
        count += len(values[names[0]])
    scores = np.full(cg.num_ids, np.nan)
    for name in names:
        np.fmax.at(scores, cg.roots(cg.layouts[name].ids), sums[name] / max(count, 1))
    return scores


def score_groups(cg: ChannelGraph, groups: list[Group], method: str, data: DataSource | None = None,
                 threads: int | None = None) -> list[GroupScores]:
    """Scores of the units of ``groups`` with ``method`` (bn | l1 | l2 | activation)."""
    l1 = norm_scores(cg, 1)
    if method == "bn":
        primary = batchnorm_scores(cg)
    elif method == "l2":
        primary = norm_scores(cg, 2)
    elif method == "activation":
        if data is None:
            raise ValueError("activation importance needs calibration data")
        primary = activation_scores(cg, data, threads=threads)
    else:
        primary = l1
    return [_for_group(group, primary, method, l1) for group in groups]


def _for_group(group: Group, primary: np.ndarray, method: str, l1: np.ndarray) -> GroupScores:
    values = primary[group.units]
    if np.isnan(values).all():
        values, method = l1[group.units], f"l1 (no {'BatchNormalization' if method == 'bn' else method})"
    absolute = method == "bn"
    if np.isnan(values).any():  # channels nobody scored are kept
        values = np.where(np.isnan(values), np.nanmax(values) if not np.isnan(values).all() else 1.0, values)
    if not absolute:
        top = values.max() if len(values) else 0.0
        values = values / top if top > 0 else np.zeros_like(values)
    return GroupScores(values, method, absolute)
