"""Calibration observers: batch invariance, fixed memory, exact histograms, and each method's range."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.calibration import (
    OBSERVERS,
    Histogram,
    HistogramObserver,
    MinMaxObserver,
    QParams,
    kl_divergences,
    make_observer,
    qparams_from_range,
    quantize_weight,
)

METHODS = sorted(OBSERVERS)


def _data(kind: str, rng: np.random.Generator, n: int = 20_000) -> np.ndarray:
    x = rng.standard_normal(n).astype(np.float32)
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "skewed":
        return (np.exp(x) - 0.5).astype(np.float32)
    if kind == "late-outlier":  # the range grows by 2**10 in the last chunk: bins merge
        x[-1] = 1000.0
        return x
    if kind == "far-from-zero":
        return (x * 1e-3 + 100.0).astype(np.float32)
    return x


def _chunks(values: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    cuts = np.sort(rng.choice(np.arange(1, values.size), size=40, replace=False))
    return np.split(values, cuts)


def _state(observer) -> tuple:
    base = (observer.lo, observer.hi, observer.count)
    if isinstance(observer, HistogramObserver):
        h = observer.histogram
        return base + (h.exponent, h.offset, h.counts.tolist(), observer.zeros)
    return base


# -- batch invariance and memory --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["normal", "relu", "skewed", "late-outlier", "far-from-zero"])
@pytest.mark.parametrize("method", METHODS)
def test_statistics_identical_for_one_batch_or_many(method: str, kind: str, rng: np.random.Generator) -> None:
    # setup
    values = _data(kind, rng)
    whole, split = make_observer(method), make_observer(method)
    # execute
    whole.update(values)
    for chunk in _chunks(values, rng):
        split.update(chunk.reshape(1, -1, 1))  # shapes do not matter either
    # assert
    assert _state(split) == _state(whole)
    for dtype, symmetric in (("uint8", False), ("int8", True)):
        assert split.qparams(dtype, symmetric) == whole.qparams(dtype, symmetric)


@pytest.mark.parametrize("method", METHODS)
def test_memory_does_not_grow_with_samples(method: str, rng: np.random.Generator) -> None:
    # setup
    observer = make_observer(method)
    observer.update(rng.standard_normal(1000).astype(np.float32))
    after_one = observer.nbytes
    # execute
    for i in range(200):
        observer.update(rng.standard_normal(1000).astype(np.float32) * (1 + i))
    # assert
    assert observer.nbytes == after_one
    if isinstance(observer, HistogramObserver):
        assert observer.histogram.counts.shape == (2048,)
        assert observer.histogram.counts.sum() == observer.count == 201_000


def test_histogram_counts_equal_direct_binning_at_final_width(rng: np.random.Generator) -> None:
    # setup
    values = np.concatenate([rng.standard_normal(5000), rng.uniform(-30, 80, 50)]).astype(np.float32)
    hist = Histogram(256)
    lo = hi = float(values[0])
    # execute: grow the range chunk by chunk
    for chunk in np.array_split(values, 17):
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
        hist.add(chunk, lo, hi)
    # assert: the same as binning everything once at the final lattice
    idx = np.floor(values.astype(np.float64) / hist.width).astype(np.int64) - hist.offset
    np.testing.assert_array_equal(hist.counts, np.bincount(idx, minlength=256))
    assert (np.floor(hi / hist.width) - np.floor(lo / hist.width) + 1 <= 256
            < np.floor(hi / (hist.width / 2)) - np.floor(lo / (hist.width / 2)) + 1)


def test_nonfinite_values_are_counted_and_ignored() -> None:
    # setup
    observer = make_observer("entropy")
    # execute
    observer.update(np.array([1.0, np.nan, -2.0, np.inf, -np.inf], np.float32))
    # assert
    assert (observer.lo, observer.hi, observer.count, observer.nonfinite) == (-2.0, 1.0, 2, 3)


@pytest.mark.parametrize("method", METHODS)
def test_empty_and_all_zero_observers_give_a_usable_scale(method: str) -> None:
    empty, zeros = make_observer(method), make_observer(method)
    zeros.update(np.zeros(100, np.float32))
    for observer in (empty, zeros):
        assert observer.qparams("uint8", False) == QParams(1.0, 0, "uint8")


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown calibration method 'kl'"):
        make_observer("kl")


# -- scale and zero point ---------------------------------------------------------------------

@pytest.mark.parametrize(("lo", "hi", "dtype", "symmetric", "expected"), [
    (-1.0, 3.0, "uint8", False, (np.float32(4 / 255), 64)),
    (0.0, 6.0, "uint8", False, (np.float32(6 / 255), 0)),  # after Relu: zero point is qmin
    (0.5, 2.0, "uint8", False, (np.float32(2 / 255), 0)),  # widened to contain 0
    (-2.0, 1.0, "int8", True, (np.float32(2 / 127), 0)),
    (-4.0, -1.0, "int8", False, (np.float32(4 / 255), 127)),
])
def test_qparams_from_range(lo: float, hi: float, dtype: str, symmetric: bool, expected: tuple) -> None:
    qp = qparams_from_range(lo, hi, dtype, symmetric)  # type: ignore[arg-type]
    assert (np.float32(qp.scale), qp.zero_point) == expected
    low, high = qp.representable
    assert low <= min(lo, 0.0) + qp.scale / 2 and high >= max(hi, 0.0) - qp.scale / 2


def test_quantize_weight_per_channel_axis_and_zero_channel() -> None:
    # setup: ConvTranspose-style weight [C_in=2, C_out=3, 1, 1], output channel 2 all zero
    w = np.array([[1.0, -0.5, 0.0], [0.25, 2.0, 0.0]], np.float32).reshape(2, 3, 1, 1)
    # execute
    q, scale = quantize_weight(w, axis=1)
    # assert
    np.testing.assert_array_equal(scale, np.array([1 / 127, 2 / 127, 1.0], np.float32))
    np.testing.assert_array_equal(q.reshape(2, 3), [[127, -32, 0], [32, 127, 0]])
    assert q.dtype == np.int8
    q_t, scale_t = quantize_weight(w, axis=None)
    assert scale_t.shape == () and np.float32(scale_t) == np.float32(2 / 127) and q_t.max() == 127
    q_r, scale_r = quantize_weight(w, axis=1, bound=63)  # reduced range (no int16 saturation on AVX2)
    np.testing.assert_array_equal(scale_r, np.array([1 / 63, 2 / 63, 1.0], np.float32))
    assert np.abs(q_r).max() == 63


# -- the methods ------------------------------------------------------------------------------

def _reference_kl(counts: np.ndarray, start: int, stop: int, levels: int) -> float:
    ref = counts[start:stop].astype(np.float64)
    p = ref.copy()
    p[0] += counts[:start].sum()
    p[-1] += counts[stop:].sum()
    group = (np.arange(stop - start) * levels) // (stop - start)
    nonempty = p > 0
    sums = np.bincount(group, weights=ref, minlength=levels)
    sizes = np.bincount(group, weights=nonempty, minlength=levels)
    q = np.where(nonempty, (sums / np.maximum(sizes, 1))[group], 0.0)
    mask = p > 0
    pn, qn = p[mask] / p.sum(), q[mask] / q.sum()
    return float(np.sum(pn * np.log(pn / np.where(qn > 0, qn, 1e-12))))


def test_vectorised_kl_matches_a_direct_computation(rng: np.random.Generator) -> None:
    counts = np.bincount(np.clip(rng.standard_normal(50_000) * 200 + 800, 0, None).astype(np.int64))
    counts[rng.integers(0, counts.size, 100)] = 0
    stops = np.arange(900, counts.size + 1, 7)
    starts = np.maximum(800 - (stops - 800) // 2, 0)
    expected = [_reference_kl(counts, int(a), int(b), 128) for a, b in zip(starts, stops)]
    np.testing.assert_allclose(kl_divergences(counts, starts, stops, 128), expected, rtol=1e-9, atol=1e-12)


def _quantization_mse(values: np.ndarray, qp: QParams) -> float:
    deq = (qp.quantize(values).astype(np.float64) - qp.zero_point) * qp.scale
    return float(np.mean((deq - values) ** 2))


@pytest.mark.parametrize(("method", "options"), [("percentile", {"percentile": 99.99}), ("entropy", {})])
def test_percentile_and_entropy_clip_outliers(method: str, options: dict, rng: np.random.Generator) -> None:
    # setup: Laplace data with a few huge outliers
    values = rng.laplace(size=100_000).astype(np.float32)
    values[:5] = [80.0, -60.0, 70.0, 90.0, -75.0]
    observer, minmax = make_observer(method, **options), MinMaxObserver()
    # execute
    observer.update(values)
    minmax.update(values)
    # assert: the bulk keeps its resolution
    lo, hi = observer.range("int8", True)
    assert 3.0 < hi < 40.0 and -hi <= lo < -3.0
    bulk = values[5:]
    chosen, widest = observer.qparams("int8", True), minmax.qparams("int8", True)
    assert _quantization_mse(bulk, chosen) < 0.1 * _quantization_mse(bulk, widest)


@pytest.mark.parametrize(("dtype", "symmetric"), [("int8", True), ("uint8", False)])
def test_mse_range_minimises_the_quantization_error(dtype: str, symmetric: bool, rng: np.random.Generator) -> None:
    # setup: heavy (Laplace) tails, so the best range clips
    values = (rng.laplace(size=200_000) + 0.5).astype(np.float32)
    observer = make_observer("mse")
    # execute
    observer.update(values)
    lo, hi = observer.range(dtype, symmetric)  # type: ignore[arg-type]
    # assert: narrower than the data, and no other scaling of the range does clearly better on the data
    assert hi < 0.9 * float(values.max())
    best = _quantization_mse(values, observer.qparams(dtype, symmetric))  # type: ignore[arg-type]
    for factor in (0.5, 0.8, 1.25, float(values.max()) / hi):
        other = qparams_from_range(lo * factor, hi * factor, dtype, symmetric)  # type: ignore[arg-type]
        assert best <= 1.02 * _quantization_mse(values, other)


def test_relu_spike_at_zero_does_not_drag_entropy_bound_down(rng: np.random.Generator) -> None:
    values = np.maximum(rng.standard_normal(200_000), 0).astype(np.float32)  # half exact zeros
    observer = make_observer("entropy")
    observer.update(values)
    lo, hi = observer.range("uint8", False)
    assert lo == 0.0 and 3.5 < hi <= float(values.max())


def test_percentile_keeps_the_requested_share(rng: np.random.Generator) -> None:
    values = rng.uniform(-1, 1, 100_000).astype(np.float32)
    observer = make_observer("percentile", percentile=99.0)
    observer.update(values)
    lo, hi = observer.range("uint8", False)
    inside = np.mean((values >= lo) & (values <= hi))
    assert 0.975 <= inside <= 0.985
    _, bound = observer.range("int8", True)
    assert 0.985 <= np.mean(np.abs(values) <= bound) <= 0.995


def test_entropy_clips_at_most_the_guard_share_of_a_long_tail(rng: np.random.Generator) -> None:
    # setup: a real long tail (log-normal), where the KL optimum alone cuts off 0.03% of the values
    values = rng.lognormal(0.0, 1.0, 200_000).astype(np.float32)
    observer = make_observer("entropy")
    observer.update(values)
    _, kl_hi = observer._kl_range(False)  # type: ignore[attr-defined]
    assert np.mean(values > kl_hi) > 2e-4
    # execute
    lo, hi = observer.range("uint8", False)
    # assert: the guard widens the range until at most 0.01% (plus one bin) lies above it
    assert hi > kl_hi and np.mean(values > hi) <= 1e-4
    assert lo == pytest.approx(float(values.min()), abs=1e-2) and hi <= float(values.max())
