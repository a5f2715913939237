"""Streaming calibration observers: ``update(values)`` collects statistics, ``qparams()`` turns them
into a scale and zero point (the torch.ao.quantization observer idea).

Memory does not grow with the number of samples: ``MinMaxObserver`` keeps two numbers and the
histogram observers keep a fixed number of bins. The histogram lives on a lattice of bins of width
``2**e`` aligned at zero; when new data no longer fits, ``e`` grows and neighbouring bins merge
exactly (no rebinning error). Since a value's bin at the final width does not depend on when it was
seen, the counts are identical whether the data arrives in one batch or in many.
"""

from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Literal, Mapping

import numpy as np

logger = logging.getLogger(__name__)

QuantDtype = Literal["uint8", "int8"]

_QRANGE: Mapping[str, tuple[int, int]] = MappingProxyType({"uint8": (0, 255), "int8": (-128, 127)})
#: the lowest bin-width exponent (all-zero data lives in one bin of width 2**-160)
_MIN_EXPONENT = -160
#: bin indices stay below 2**_INDEX_BITS so float64 scaling and int64 indices are exact
_INDEX_BITS = 52


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: QuantDtype

    @property
    def qmin(self) -> int:
        return _QRANGE[self.dtype][0]

    @property
    def qmax(self) -> int:
        return _QRANGE[self.dtype][1]

    @property
    def representable(self) -> tuple[float, float]:
        """The real interval that quantizes without clipping."""
        return (self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """``QuantizeLinear`` semantics (round half to even, saturate)."""
        q = np.rint(np.asarray(values, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, self.qmin, self.qmax).astype(self.dtype)


def qparams_from_range(lo: float, hi: float, dtype: QuantDtype, symmetric: bool) -> QParams:
    """Scale and zero point covering ``[lo, hi]`` (always widened to contain 0, so 0 is exact).

    Symmetric: zero point in the middle and ``scale = max|x| / 127``. Asymmetric: the full integer
    range spans ``[lo, hi]``; when ``lo == 0`` the zero point is ``qmin``, which makes a preceding
    Relu exactly the clamp of the quantizer.
    """
    qmin, qmax = _QRANGE[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        bound = max(-lo, hi)
        zero_point = 0 if dtype == "int8" else 128
        scale = bound / 127.0
    else:
        scale = (hi - lo) / (qmax - qmin)
        zero_point = qmin if scale == 0 else int(np.clip(round(qmin - lo / scale), qmin, qmax))
    scale32 = float(np.float32(scale))
    if not math.isfinite(scale32) or scale32 <= np.finfo(np.float32).tiny:
        scale32 = 1.0
    return QParams(scale32, zero_point, dtype)


def quantize_weight(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in ``[-127, 127]``, per channel along ``axis`` (or per tensor if ``None``).

    Returns ``(int8 values, float32 scales)``; scales have the length of ``axis`` (or are a scalar).
    """
    w = np.asarray(weight, np.float32)
    if axis is None:
        bound = np.asarray(np.max(np.abs(w)) if w.size else 0.0, np.float32)
        shaped = bound
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        bound = np.max(np.abs(w), axis=others) if w.size else np.zeros(w.shape[axis], np.float32)
        shaped = np.expand_dims(bound, others)
    scale = np.where(bound > 0, bound / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    shaped_scale = np.where(shaped > 0, shaped / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / shaped_scale), -127, 127).astype(np.int8)
    return q, scale


# -- observers -------------------------------------------------------------------------------

class Observer(abc.ABC):
    """Collects statistics of one tensor over calibration batches."""

    method: ClassVar[str]

    def __init__(self) -> None:
        self.lo = math.inf
        self.hi = -math.inf
        self.count = 0
        self.nonfinite = 0

    @property
    def empty(self) -> bool:
        return self.count == 0

    def update(self, values: np.ndarray) -> None:
        """Add one batch of values (any shape; NaN and inf are counted and ignored)."""
        v = np.asarray(values)
        if not np.issubdtype(v.dtype, np.floating):
            v = v.astype(np.float32)
        v = v.reshape(-1)
        if v.size == 0:
            return
        lo, hi = float(v.min()), float(v.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates into min/max
            finite = np.isfinite(v)
            self.nonfinite += int(v.size - finite.sum())
            v = v[finite]
            if v.size == 0:
                return
            lo, hi = float(v.min()), float(v.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.count += int(v.size)
        self._collect(v)

    def _collect(self, values: np.ndarray) -> None:
        """Subclass hook: fold finite values (already counted in ``lo``/``hi``) into the state."""

    def range(self, dtype: QuantDtype, symmetric: bool) -> tuple[float, float]:
        """The clipping range this method chooses for the given integer type."""
        if self.empty:
            return 0.0, 0.0
        return self._range(dtype, symmetric)

    @abc.abstractmethod
    def _range(self, dtype: QuantDtype, symmetric: bool) -> tuple[float, float]:
        ...

    def qparams(self, dtype: QuantDtype = "uint8", symmetric: bool = False) -> QParams:
        lo, hi = self.range(dtype, symmetric)
        return qparams_from_range(lo, hi, dtype, symmetric)

    @property
    def nbytes(self) -> int:
        """Bytes of collected state (constant in the number of samples)."""
        return 32


class MinMaxObserver(Observer):
    """The running minimum and maximum."""

    method = "minmax"

    def _range(self, dtype: QuantDtype, symmetric: bool) -> tuple[float, float]:
        return self.lo, self.hi


class Histogram:
    """Fixed-size counts on the lattice ``[k * 2**e, (k+1) * 2**e)``, ``k`` in ``offset .. offset+bins``.

    ``e`` is the smallest exponent at which the range seen so far fits in ``bins`` bins, so the
    final lattice depends only on the global minimum and maximum, and merging on growth is exact.
    """

    def __init__(self, bins: int) -> None:
        if bins < 16:
            raise ValueError(f"a calibration histogram needs at least 16 bins, got {bins}")
        self.bins = bins
        self.exponent = _MIN_EXPONENT
        self.offset = 0
        self.counts = np.zeros(bins, np.int64)

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    def add(self, values: np.ndarray, lo: float, hi: float) -> None:
        """Add finite ``values``; ``lo``/``hi`` is the range of *all* values seen including these."""
        exponent = self._fit(lo, hi)
        offset = math.floor(math.ldexp(lo, -exponent))
        if (exponent, offset) != (self.exponent, self.offset):
            self._remap(exponent, offset)
        self.counts += np.bincount(self._indices(values), minlength=self.bins)[: self.bins]

    def _fit(self, lo: float, hi: float) -> int:
        exponent = self.exponent
        magnitude = max(abs(lo), abs(hi))
        if magnitude > 0:
            exponent = max(exponent, math.frexp(magnitude)[1] - _INDEX_BITS)
        span = hi - lo
        if span > 0:
            exponent = max(exponent, math.floor(math.log2(span / self.bins)))
        while math.floor(math.ldexp(hi, -exponent)) - math.floor(math.ldexp(lo, -exponent)) + 1 > self.bins:
            exponent += 1
        return exponent

    def _indices(self, values: np.ndarray) -> np.ndarray:
        """``floor(x / 2**e) - offset``, exactly: scaling by a power of two only rounds on underflow
        (possible for e > 0) and float32 holds integers below 2**24; float64 covers the rest."""
        factor = math.ldexp(1.0, -self.exponent)
        magnitude = max(abs(self.offset), abs(self.offset + self.bins))
        if values.dtype == np.float32 and -126 <= self.exponent <= 0 and magnitude < 2**24:
            scaled = values * np.float32(factor)
        else:
            scaled = values.astype(np.float64) * factor
        np.floor(scaled, out=scaled)
        scaled -= self.offset
        return scaled.astype(np.intp)

    def _remap(self, exponent: int, offset: int) -> None:
        shift = exponent - self.exponent
        nonzero = np.flatnonzero(self.counts)
        counts = np.zeros(self.bins, np.int64)
        if nonzero.size:
            old = self.offset + nonzero.astype(np.int64)
            new = np.right_shift(old, shift) - offset  # arithmetic shift == floor division by 2**shift
            np.add.at(counts, new, self.counts[nonzero])
        self.exponent, self.offset, self.counts = exponent, offset, counts

    def edges(self) -> np.ndarray:
        """Left edges of the ``bins`` bins and the right edge of the last one."""
        return (self.offset + np.arange(self.bins + 1, dtype=np.float64)) * self.width

    def magnitude(self) -> tuple[np.ndarray, float]:
        """Counts of ``|x|`` on bins ``[j*w, (j+1)*w)`` from 0, at most ``bins`` of them, and ``w``."""
        k = self.offset + np.arange(self.bins, dtype=np.int64)
        folded = np.where(k >= 0, k, -k - 1)  # bin [-w, 0) folds onto [0, w)
        used = self.counts > 0
        top = int(folded[used].max()) if used.any() else 0
        shift = 0
        while (top >> shift) >= self.bins:
            shift += 1
        out = np.zeros(self.bins, np.int64)
        np.add.at(out, folded[used] >> shift, self.counts[used])
        return out[: (top >> shift) + 1], math.ldexp(self.width, shift)


class HistogramObserver(Observer):
    """Base of the methods that choose a clipping range from a histogram."""

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        self.histogram = Histogram(bins)

    def _collect(self, values: np.ndarray) -> None:
        self.histogram.add(values, self.lo, self.hi)

    @property
    def nbytes(self) -> int:
        return super().nbytes + int(self.histogram.counts.nbytes)

    def _magnitude_range(self, bound: float, symmetric: bool) -> tuple[float, float]:
        """The range for a clipping bound on ``|x|``: one-sided data stays one-sided."""
        if symmetric or (self.lo < 0 < self.hi):
            return max(self.lo, -bound), min(self.hi, bound)
        return (0.0, min(self.hi, bound)) if self.lo >= 0 else (max(self.lo, -bound), 0.0)

    def _levels(self, dtype: QuantDtype, symmetric: bool) -> int:
        """Integer steps available on one side of zero for this data."""
        one_sided = not symmetric and (self.lo >= 0 or self.hi <= 0)
        return 255 if one_sided else 127


class PercentileObserver(HistogramObserver):
    """Clip at a percentile of ``|x|`` (symmetric) or at both tails (asymmetric)."""

    method = "percentile"

    def __init__(self, bins: int = 2048, percentile: float = 99.999) -> None:
        super().__init__(bins)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def _range(self, dtype: QuantDtype, symmetric: bool) -> tuple[float, float]:
        q = self.percentile / 100.0
        if symmetric:
            counts, width = self.histogram.magnitude()
            cdf = np.cumsum(counts) / counts.sum()
            bound = (int(np.searchsorted(cdf, q)) + 1) * width
            return self._magnitude_range(bound, True)
        counts = self.histogram.counts
        cdf = np.cumsum(counts) / counts.sum()
        edges = self.histogram.edges()
        lo = edges[int(np.searchsorted(cdf, 1.0 - q, side="right"))]
        hi = edges[int(np.searchsorted(cdf, q)) + 1]
        return max(self.lo, float(lo)), min(self.hi, float(hi))


class EntropyObserver(HistogramObserver):
    """The clipping bound on ``|x|`` that minimises KL(reference || quantized) (TensorRT style): every
    bin edge from ``levels`` up is tried; the clipped tail is folded into the last kept bin."""

    method = "entropy"

    def _range(self, dtype: QuantDtype, symmetric: bool) -> tuple[float, float]:
        counts, width = self.histogram.magnitude()
        levels = self._levels(dtype, symmetric) + 1
        if len(counts) <= levels:
            return self._magnitude_range(len(counts) * width, symmetric)
        stops = np.arange(levels, len(counts) + 1)
        best = int(stops[int(np.argmin(kl_divergences(counts, stops, levels)))])
        return self._magnitude_range(best * width, symmetric)


def kl_divergences(counts: np.ndarray, stops: np.ndarray, levels: int) -> np.ndarray:
    """For each ``stop``: KL(P || Q) where P is ``counts[:stop]`` with the tail added to its last bin
    and Q is ``counts[:stop]`` merged into ``levels`` groups, each group's mass spread evenly over its
    non-empty bins (a tail landing in an empty bin gets probability 1e-12). Vectorised with prefix sums."""
    c = counts.astype(np.float64)
    total = c.sum()
    csum = np.concatenate([[0.0], np.cumsum(c)])
    nonempty = np.concatenate([[0.0], np.cumsum(c > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        clogc = np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0)
    plogp_prefix = np.concatenate([[0.0], np.cumsum(clogc)])
    edges = (np.arange(levels + 1)[None, :] * stops[:, None] + levels - 1) // levels  # [K, levels + 1]
    group_sum = csum[edges[:, 1:]] - csum[edges[:, :-1]]
    group_nonempty = nonempty[edges[:, 1:]] - nonempty[edges[:, :-1]]
    kept = csum[stops]
    tail = total - kept
    last = c[stops - 1]
    # sum_j p_j log p_j with the tail merged into the last kept bin
    plogp = (plogp_prefix[stops] - np.where(last > 0, last * np.log(np.maximum(last, 1e-300)), 0.0)
             + np.where(last + tail > 0, (last + tail) * np.log(np.maximum(last + tail, 1e-300)), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        q_bin = np.where(group_sum > 0, group_sum / np.maximum(group_nonempty, 1), 1.0) / kept[:, None]
        plogq = np.sum(np.where(group_sum > 0, group_sum * np.log(q_bin), 0.0), axis=1)
    q_last = np.where(last > 0, q_bin[:, -1], 1e-12)
    plogq = plogq + tail * np.log(q_last)
    return (plogp - total * np.log(total)) / total - plogq / total


class MseObserver(HistogramObserver):
    """The clipping range that minimises the expected squared quantization error on the histogram
    (clipping error of the tails plus ``scale**2 / 12`` rounding noise inside the range)."""

    method = "mse"
    #: fractions of the full range tried
    grid = np.linspace(0.05, 1.0, 192)

    def _range(self, dtype: QuantDtype, symmetric: bool) -> tuple[float, float]:
        hist = self.histogram
        edges = hist.edges()
        used = hist.counts > 0
        centers = np.clip(0.5 * (edges[:-1] + edges[1:]), self.lo, self.hi)[used]
        counts = hist.counts[used].astype(np.float64)
        if symmetric:
            bound = max(-self.lo, self.hi)
            ranges = [(-bound * f, bound * f) for f in self.grid]
        else:
            ranges = [(self.lo * f, self.hi * f) for f in self.grid]
        params = [qparams_from_range(lo, hi, dtype, symmetric) for lo, hi in ranges]
        rmin = np.array([qp.representable[0] for qp in params])[:, None]
        rmax = np.array([qp.representable[1] for qp in params])[:, None]
        noise = np.array([qp.scale ** 2 / 12.0 for qp in params])[:, None]
        clipped = np.clip(centers[None, :], rmin, rmax)
        inside = (centers[None, :] >= rmin) & (centers[None, :] <= rmax)
        errors = ((centers[None, :] - clipped) ** 2 + inside * noise) @ counts
        lo, hi = ranges[int(np.argmin(errors))]
        return max(self.lo, lo), min(self.hi, hi)


OBSERVERS: Mapping[str, type[Observer]] = MappingProxyType({
    cls.method: cls for cls in (MinMaxObserver, PercentileObserver, EntropyObserver, MseObserver)})

Method = Literal["minmax", "percentile", "entropy", "mse"]


def make_observer(method: str, **options: float | int) -> Observer:
    """A fresh observer for ``method`` (``minmax``, ``percentile``, ``entropy``, ``mse``)."""
    try:
        cls = OBSERVERS[method]
    except KeyError:
        raise ValueError(f"unknown calibration method '{method}'; known: {', '.join(OBSERVERS)}") from None
    return cls(**options)  # type: ignore[arg-type]
