"""Running output statistics for comparing two models batch by batch: error metrics per output
(max/mean abs error, cosine, SNR) and top-1 agreement and paired accuracy on class scores, with
running sums so memory does not grow with the number of samples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxopt.errors import DataError


@dataclass(frozen=True)
class OutputError:
    """Error of B's output against A's over all compared samples."""

    name: str
    elements: int
    max_abs: float
    mean_abs: float
    cosine: float
    snr_db: float
    #: elements left out because A or B is NaN/inf there
    nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "elements": self.elements, "max_abs": self.max_abs, "mean_abs": self.mean_abs,
                "cosine": self.cosine, "snr_db": json_float(self.snr_db), "nonfinite": self.nonfinite}


def json_float(value: float) -> float | None:
    """Strict JSON has no inf/NaN: they become ``null``."""
    return value if math.isfinite(value) else None


# -- running statistics -----------------------------------------------------------------------

class ErrorStats:
    """Running sums for one output; ``problem`` is set (and metrics dropped) when it cannot be compared."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problem: str | None = None
        self.count = self.nonfinite = 0
        self.max_abs = self.sum_abs = self.dot = self.sum_aa = self.sum_bb = self.sum_err2 = 0.0

    def update(self, a: Any, b: Any) -> None:
        if self.problem is not None:
            return
        if not (_numeric(a) and _numeric(b)):
            self.problem = f"output '{self.name}' is not a numeric tensor: no error metrics"
            return
        if a.shape != b.shape:
            self.problem = f"output '{self.name}' has shape {list(a.shape)} in A but {list(b.shape)} in B: not compared"
            return
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        finite = np.isfinite(a64) & np.isfinite(b64)
        if not finite.all():
            self.nonfinite += int(finite.size - finite.sum())
            a64, b64 = a64[finite], b64[finite]
        diff = np.abs(a64 - b64)
        self.count += diff.size
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.sum_err2 += float(np.dot(diff, diff))
        self.dot += float(np.dot(a64, b64))
        self.sum_aa += float(np.dot(a64, a64))
        self.sum_bb += float(np.dot(b64, b64))

    def result(self) -> OutputError:
        if self.sum_aa == 0.0 and self.sum_bb == 0.0:
            cosine = 1.0
        else:
            norm = math.sqrt(self.sum_aa) * math.sqrt(self.sum_bb)
            cosine = self.dot / norm if norm else 0.0
        if self.sum_err2 == 0.0:
            snr = math.inf
        elif self.sum_aa == 0.0:
            snr = -math.inf
        else:
            snr = 10.0 * math.log10(self.sum_aa / self.sum_err2)
        return OutputError(self.name, self.count, self.max_abs, self.sum_abs / self.count if self.count else 0.0,
                           cosine, snr, self.nonfinite)


def _numeric(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"


class TopOne:
    """Top-1 agreement between A and B and, with labels, the accuracy of each (paired)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problem: str | None = None
        self.samples = self.agree = self.nonfinite = 0
        self.labelled = self.correct_a = self.correct_b = self.only_a = self.only_b = 0

    def update(self, a: Any, b: Any, labels: np.ndarray | None) -> None:
        if self.problem is not None:
            return
        scores_a, scores_b = _class_scores(a), _class_scores(b)
        if scores_a is None or scores_b is None or scores_a.shape != scores_b.shape:
            shape = list(a.shape) if isinstance(a, np.ndarray) else type(a).__name__
            self.problem = f"output '{self.name}' ({shape}) is not class scores [N, C>1]"
            return
        # a row with NaN/inf has no meaningful argmax: it counts as neither agreeing nor correct
        finite = np.isfinite(scores_a).all(axis=1) & np.isfinite(scores_b).all(axis=1)
        self.nonfinite += int((~finite).sum())
        top_a, top_b = scores_a.argmax(axis=1), scores_b.argmax(axis=1)
        self.samples += top_a.size
        self.agree += int(((top_a == top_b) & finite).sum())
        if labels is None:
            return
        truth = _label_indices(labels, scores_a.shape)
        top_a, top_b = np.where(finite, top_a, -1), np.where(finite, top_b, -1)
        hit_a, hit_b = top_a == truth, top_b == truth
        self.labelled += truth.size
        self.correct_a += int(hit_a.sum())
        self.correct_b += int(hit_b.sum())
        self.only_a += int((hit_a & ~hit_b).sum())
        self.only_b += int((hit_b & ~hit_a).sum())


def _class_scores(value: Any) -> np.ndarray | None:
    """``value`` as ``[N, C]`` class scores, or ``None`` when it is not one score vector per sample."""
    if not _numeric(value) or value.ndim < 2:
        return None
    classes = [d for d in value.shape[1:] if d != 1]
    if len(classes) != 1:
        return None
    return value.reshape(value.shape[0], classes[0])


def _label_indices(labels: np.ndarray, scores_shape: tuple[int, ...]) -> np.ndarray:
    """Class indices ``[N]`` from labels given as indices ``[N]`` / ``[N, 1]`` or one-hot rows ``[N, C]``."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == scores_shape[1]:
        return labels.argmax(axis=1)
    if labels.ndim == 0 or labels.size != labels.shape[0]:
        raise DataError(f"labels of shape {list(labels.shape)}: expected class indices [N] or one-hot rows "
                        f"[N, {scores_shape[1]}]")
    flat = labels.ravel()
    if flat.dtype.kind not in "biuf" or (flat.dtype.kind == "f" and not np.all(flat == np.round(flat))):
        raise DataError(f"labels must be integer class indices or one-hot rows, got {flat.dtype} values")
    flat = flat.astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= scores_shape[1]):
        raise DataError(f"labels range over [{flat.min()}, {flat.max()}] but the model scores {scores_shape[1]} "
                        f"classes: give class indices in [0, {scores_shape[1] - 1}]")
    return flat


def accuracy_delta_interval(only_a: int, only_b: int, n: int) -> float:
    """Half-width of the 95% interval of ``acc_B − acc_A`` from ``n`` paired samples where ``only_a``
    were right only for A and ``only_b`` only for B: the Wald interval of a paired difference,
    floored at the rule-of-three bound ``3/n`` so that no discordant pairs never claims certainty."""
    if n <= 0:
        return math.nan
    delta = (only_b - only_a) / n
    variance = max((only_a + only_b) / n - delta * delta, 0.0) / n
    return min(max(1.96 * math.sqrt(variance), 3.0 / n), 1.0)
