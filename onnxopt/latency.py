"""Paired, interleaved latency measurement (A B B A ...) so machine noise hits every model alike."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from onnxopt.progress import Progress


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


def interleaved_times(sessions: Sequence[tuple[Any, dict[str, np.ndarray]]], *, runs: int = 50,
                      warmup: int = 5, progress: Progress | None = None) -> np.ndarray:
    """Milliseconds ``[len(sessions), runs]``: each run times every session once, in an order that
    rotates by one each run (A B, B A, ...), so drift and cache effects hit every session alike."""
    for _ in range(warmup):
        for session, feeds in sessions:
            session.run(None, feeds)
    times = np.empty((len(sessions), runs))
    indices = list(range(len(sessions)))
    for i in range(runs):
        shift = i % len(indices)
        order = indices[shift:] + indices[:shift]
        for which in order:
            session, feeds = sessions[which]
            start = time.perf_counter()
            session.run(None, feeds)
            times[which, i] = (time.perf_counter() - start) * 1e3
        if progress is not None:
            progress.advance()
    return times


def paired(a_times: np.ndarray, b_times: np.ndarray, warmup: int) -> PairedLatency:
    """B against A from times measured in the same interleaved run (``interleaved_times``)."""
    ratios = b_times / np.maximum(a_times, 1e-9)
    return PairedLatency(
        runs=len(a_times), warmup=warmup,
        a_median_ms=float(np.median(a_times)), a_p90_ms=float(np.percentile(a_times, 90)),
        b_median_ms=float(np.median(b_times)), b_p90_ms=float(np.percentile(b_times, 90)),
        ratio=float(np.median(ratios)),
        ratio_p10=float(np.percentile(ratios, 10)), ratio_p90=float(np.percentile(ratios, 90)),
    )


def paired_latency(session_a: Any, feeds_a: dict[str, np.ndarray], session_b: Any,
                   feeds_b: dict[str, np.ndarray], *, runs: int = 50, warmup: int = 5) -> PairedLatency:
    """Time ``session_a.run`` and ``session_b.run`` alternately; the order swaps every pair."""
    times = interleaved_times([(session_a, feeds_a), (session_b, feeds_b)], runs=runs, warmup=warmup)
    return paired(times[0], times[1], warmup)
