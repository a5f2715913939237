"""The measured budget of the pruning passes' defaults: how far a candidate moves the model.

The calibration data is split in two: the first part is what recovery fits on (least squares) and
what block sensitivity is probed on, the rest only measures the candidate against the original, so
the drop is never measured on the samples the candidate was fitted to. The drop is, with
``onnxopt.evaluate.compare`` on the held-out part:

- ``accuracy``: original accuracy minus the candidate's, in percentage points, when the data has
  labels and the first output is class scores ``[N, C>1]``;
- ``top-1 disagreement``: 100 - top-1 agreement with the original in percent, for class scores
  without labels;
- ``relative L2 error``: ``100 * ||b - a|| / ||a||`` over all samples, the worst output, for every
  other model (detectors, segmentation maps, embeddings), where no decision can be compared.

All three are in percent (points), as ``max_drop`` of the int8 pass is.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import onnx

from onnxopt.data import DataSource, IterableSource
from onnxopt.evaluate import compare

logger = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 1.0
HELP = ("the most the measured drop on held-out calibration samples may be, in percentage points: accuracy with "
        "labels, else top-1 agreement for class scores, else relative L2 output error in percent")
#: fewer held-out samples than this cannot resolve a 1-point budget (one sample is more than 1%)
MIN_CHECK_SAMPLES = 100
#: the share of the search samples recovery fits on; the rest measures the drop
FIT_SHARE = 0.4


@dataclass(frozen=True)
class Drop:
    """How much a candidate lost against the original on held-out calibration samples."""

    metric: str
    value: float
    samples: int

    def __str__(self) -> str:
        shown = f"{self.value:.2f} points" if self.metric == "accuracy" else f"{self.value:.2f}%"
        return f"{self.metric} drop {shown} on {self.samples} held-out calibration samples"

    def to_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "drop": round(self.value, 6), "samples": self.samples}


@dataclass(frozen=True)
class Split:
    """The calibration samples a search uses: ``fit`` for recovery/probing, ``check`` for the drop."""

    fit: DataSource
    check: DataSource
    fit_samples: int
    check_samples: int


def split(data: DataSource, samples: int) -> Split | None:
    """The first ``samples`` calibration samples split into fit and check parts (in memory);
    ``None`` when there are fewer than 4 (nothing can be held out)."""
    rows: list[dict] = []
    count = 0
    for batch in data.batches(32, description="budget samples"):
        row = dict(batch.inputs)
        if batch.labels is not None:
            row["label"] = batch.labels
        rows.append(row)
        count += batch.size
        if count >= samples:
            break
    if count < 4:
        return None
    total = min(count, samples)
    fit = max(1, int(round(FIT_SHARE * total)))
    return Split(IterableSource(_slice(rows, 0, fit), data.specs), IterableSource(_slice(rows, fit, total), data.specs),
                 fit, total - fit)


def few_samples_note(parts: Split) -> str | None:
    """A note when the held-out part is too small to resolve a 1% budget."""
    if parts.check_samples >= MIN_CHECK_SAMPLES:
        return None
    return (f"the drop is measured on {parts.check_samples} held-out calibration samples, fewer than "
            f"{MIN_CHECK_SAMPLES}: one sample moves it by more than 1%; give more calibration data")


def _slice(rows: list[dict], start: int, stop: int) -> list[dict]:
    """Samples ``start:stop`` of the concatenated ``rows`` (each row a batch of input arrays)."""
    out = []
    offset = 0
    for row in rows:
        size = len(next(iter(row.values())))
        lo, hi = max(start - offset, 0), min(stop - offset, size)
        if lo < hi:
            out.append({k: v[lo:hi] for k, v in row.items()})
        offset += size
    return out


def measure(original: onnx.ModelProto, candidate: onnx.ModelProto, data: DataSource,
            threads: int | None = None) -> Drop:
    """The drop of ``candidate`` against ``original`` on ``data`` (see the module doc)."""
    cmp = compare(original, candidate, data, latency_runs=0, threads=threads)
    if cmp.accuracy_a is not None and cmp.accuracy_b is not None:
        return Drop("accuracy", 100.0 * (cmp.accuracy_a - cmp.accuracy_b), cmp.labelled_samples)
    if cmp.agreement is not None:
        return Drop("top-1 disagreement", 100.0 * (1.0 - cmp.agreement), cmp.samples)
    errors = [10 ** (-o.snr_db / 20) if math.isfinite(o.snr_db) else (0.0 if o.snr_db > 0 else 1.0)
              for o in cmp.outputs]
    return Drop("relative L2 error", 100.0 * max(errors, default=0.0), cmp.samples)


@dataclass(frozen=True)
class Trial:
    """One candidate of a search: its setting, MACs after, and measured drop."""

    setting: float
    macs: int
    drop: Drop
    within: bool

    def to_dict(self) -> dict[str, object]:
        return {"setting": round(self.setting, 4), "macs": self.macs, **self.drop.to_dict(), "within": self.within}


def bisect(attempt: Callable[[float], Trial], high: float, steps: int) -> list[Trial]:
    """Bisection on a setting in (0, ``high``] for the largest one whose trial is within budget
    (the drop is taken to grow with it); the trials in the order they ran."""
    lo, hi = 0.0, high
    trials = []
    for step in range(steps):
        mid = (lo + hi) / 2
        trial = attempt(mid)
        trials.append(trial)
        logger.info("budget search %d/%d: setting %.3f -> %s (%s)", step + 1, steps, mid, trial.drop,
                    "within" if trial.within else "over")
        lo, hi = (mid, hi) if trial.within else (lo, mid)
    return trials
