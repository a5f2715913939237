"""Which units of each group to prune, from their scores.

- ``adaptive`` (the source's per-layer threshold): histogram of the group's scores with bins of
  width 0.01, scanned from the left; the first local-minimum bin (lower than the bin before it and
  not higher than the bin after it) gives the threshold, its lower edge; scores below it are pruned.
  No valley, or a valley that does not follow a mode near zero (scores not polarised), no pruning.
- ``ratio``: the lowest-scored ``ratio`` of every group (per-layer ratios override it).
- ``macs``: one global ranking of the (max-normalised) scores, pruned from the bottom until the
  estimated MACs fall by the target fraction.

Every group keeps at least ``min_channels`` channels, rounded up to a multiple of ``round_to``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from passes.pruning.channel_groups import Group
from passes.pruning.importance import GroupScores

BIN_WIDTH = 0.01
NO_VALLEY = "adaptive: no histogram valley"
#: in a polarised histogram the lower mode's peak lies below this fraction of the upper mode's
LOW_MODE = 0.25


def adaptive_threshold(scores: np.ndarray, bin_width: float = BIN_WIDTH) -> float | None:
    """The lower edge of the first local-minimum histogram bin from the left, or ``None``.

    ``None`` also when the valley does not separate a mode near zero from the rest (the fullest bin
    left of it lies above ``LOW_MODE`` times the position of the fullest bin right of it): then the
    scores are not polarised, and the first dip is noise inside one mode, below which most channels
    would lie.
    """
    if len(scores) < 3:
        return None
    bins = int(math.floor(float(scores.max()) / bin_width)) + 1
    counts = np.bincount(np.minimum((scores / bin_width).astype(np.int64), bins - 1), minlength=bins)
    for i in range(1, bins - 1):
        if counts[i] < counts[i - 1] and counts[i] <= counts[i + 1]:
            low, high = int(np.argmax(counts[:i])), i + int(np.argmax(counts[i:]))
            return i * bin_width if low + 0.5 <= LOW_MODE * (high + 0.5) else None
    return None


@dataclass(frozen=True)
class Limits:
    min_channels: int = 1
    round_to: int = 1

    def allowed(self, total: int, prunable: int, wanted: int) -> int:
        """How many of ``wanted`` may go from a group of ``total`` (``prunable`` not blocked)."""
        keep = max(total - min(wanted, prunable), self.min_channels, 1)
        if self.round_to > 1:
            keep = math.ceil(keep / self.round_to) * self.round_to
        return max(0, min(prunable, total - keep))


@dataclass
class Choice:
    """The units chosen in one group and why."""

    units: np.ndarray
    rule: str


def _lowest(group: Group, scores: GroupScores, count: int) -> np.ndarray:
    free = np.array([u not in group.blocked for u in group.units], dtype=bool)
    order = [i for i in np.argsort(scores.values, kind="stable") if free[i]]
    return group.units[np.array(order[:count], dtype=np.int64)]


def by_adaptive(groups: Sequence[Group], scores: Sequence[GroupScores], limits: Limits) -> list[Choice]:
    out = []
    for group, sc in zip(groups, scores):
        delta = adaptive_threshold(sc.values)
        if delta is None:
            out.append(Choice(np.zeros(0, np.int64), NO_VALLEY))
            continue
        below = int((sc.values < delta).sum())
        count = limits.allowed(len(group.units), len(group.prunable), below)
        out.append(Choice(_lowest(group, sc, count), f"adaptive: score < {delta:.2f}"))
    return out


def by_ratio(groups: Sequence[Group], scores: Sequence[GroupScores], limits: Limits,
             ratio_of: Callable[[Group], float]) -> list[Choice]:
    out = []
    for group, sc in zip(groups, scores):
        ratio = ratio_of(group)
        count = limits.allowed(len(group.units), len(group.prunable), int(math.floor(ratio * len(group.units))))
        out.append(Choice(_lowest(group, sc, count), f"ratio {ratio:g}"))
    return out


def by_macs(groups: Sequence[Group], scores: Sequence[GroupScores], limits: Limits, target: float,
            macs_after: Callable[[list[np.ndarray]], int], macs_before: int) -> list[Choice]:
    """Prune along one global ranking until ``macs_after`` <= (1 - target) * ``macs_before``."""
    ranking = sorted(
        ((float(v) / (sc.values.max() if sc.absolute and sc.values.max() > 0 else 1.0), g, i)
         for g, (group, sc) in enumerate(zip(groups, scores))
         for i, v in enumerate(sc.values) if group.units[i] not in group.blocked),
        key=lambda item: item[0])

    def take(n: int) -> list[np.ndarray]:
        wanted = np.zeros(len(groups), dtype=np.int64)
        for _, g, _ in ranking[:n]:
            wanted[g] += 1
        return [_lowest(group, sc, limits.allowed(len(group.units), len(group.prunable), int(k)))
                for group, sc, k in zip(groups, scores, wanted)]

    goal = (1.0 - target) * macs_before
    lo, hi = 0, len(ranking)
    while lo < hi:  # smallest prefix of the ranking that reaches the goal (or all of it)
        mid = (lo + hi) // 2
        if macs_after(take(mid)) <= goal:
            hi = mid
        else:
            lo = mid + 1
    return [Choice(units, f"global MACs target {target:g}") for units in take(lo)]
