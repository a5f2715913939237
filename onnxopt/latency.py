"""Paired, interleaved latency measurement (A B A B ...) so machine noise hits both models alike."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedLatency:
    """Latency of A and B measured in one interleaved run, in milliseconds."""

    runs: int
    warmup: int
    a_median_ms: float
    a_p90_ms: float
    b_median_ms: float
    b_p90_ms: float
    #: median over runs of the per-pair ratio b/a (robust to drift across the run)
    ratio: float
    #: 10th..90th percentile of the per-pair ratios: a ratio inside this band around 1.0 is noise
    ratio_p10: float
    ratio_p90: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def significant(self) -> bool:
        """True when the per-pair ratios are consistently on one side of 1.0."""
        return self.ratio_p90 < 1.0 or self.ratio_p10 > 1.0


def paired_latency(session_a: Any, feeds_a: dict[str, np.ndarray], session_b: Any,
                   feeds_b: dict[str, np.ndarray], *, runs: int = 50, warmup: int = 5) -> PairedLatency:
    """Time ``session_a.run`` and ``session_b.run`` alternately; order swaps every pair."""
    for _ in range(warmup):
        session_a.run(None, feeds_a)
        session_b.run(None, feeds_b)
    a_times = np.empty(runs)
    b_times = np.empty(runs)
    for i in range(runs):
        order = ((0, session_a, feeds_a), (1, session_b, feeds_b))
        for which, session, feeds in (order if i % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            session.run(None, feeds)
            elapsed = (time.perf_counter() - start) * 1e3
            (a_times if which == 0 else b_times)[i] = elapsed
    ratios = b_times / np.maximum(a_times, 1e-9)
    return PairedLatency(
        runs=runs, warmup=warmup,
        a_median_ms=float(np.median(a_times)), a_p90_ms=float(np.percentile(a_times, 90)),
        b_median_ms=float(np.median(b_times)), b_p90_ms=float(np.percentile(b_times, 90)),
        ratio=float(np.median(ratios)),
        ratio_p10=float(np.percentile(ratios, 10)), ratio_p90=float(np.percentile(ratios, 90)),
    )
