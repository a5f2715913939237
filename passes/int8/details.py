"""The int8 pass's report details, typed (``report.details`` of a run that quantized something);
``to_dict`` writes the JSON the report has always had, in the same order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from onnxopt.calibration import Observer, QParams
from onnxopt.pass_base import Details
from passes.int8.measure import Fusion


@dataclass(frozen=True)
class CalibrationInfo:
    samples: int
    #: the data source's one-line description
    source: str
    observed_tensors: int


@dataclass(frozen=True)
class RangeEntry:
    """A quantized tensor's calibrated range and the parameters derived from it (6 significant digits)."""

    min: float
    max: float
    #: the representable range [low, high] at this scale and zero point
    clip: list[float]
    scale: float
    zero_point: int

    @classmethod
    def of(cls, observer: Observer, qp: QParams) -> RangeEntry:
        low, high = qp.representable
        return cls(_round(observer.lo), _round(observer.hi), [_round(low), _round(high)], _round(qp.scale),
                   qp.zero_point)


@dataclass(frozen=True)
class BudgetInfo:
    """How the accuracy budget (``max_drop``) was met: one step per layer returned to float."""

    max_drop: float
    met: bool
    returned_to_float: list[str]
    #: ``{"returned": layer or None, "metric", "float", "int8", "drop", "predictions"}`` per step
    steps: list[dict[str, Any]]
    #: each layer's own quantization error (NMSE), largest first
    layer_nmse: dict[str, float]


@dataclass(frozen=True)
class ReduceRangeInfo:
    """The weight range chosen automatically (``reduce_range`` unset), and what it was chosen for."""

    value: bool
    decided_for: str


@dataclass
class Int8Details(Details):
    method: str
    activation_type: str
    per_channel: bool
    calibration: CalibrationInfo
    #: op type -> quantized nodes
    quantized_ops: dict[str, int]
    layers: int
    qdq_pairs: int
    int8_weights: int
    int32_biases: int
    #: integer-op outputs whose Relu/Clip is the quantizer's clamp
    relu_clip_as_clamp: list[str]
    #: Gemm/MatMul outputs left in float (read only by float ops)
    float_outputs: list[str]
    ranges: dict[str, RangeEntry]
    budget: BudgetInfo | None = None
    fusion: Fusion | None = None
    reduce_range: ReduceRangeInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with ``budget`` first as the report always had it."""
        out = super().to_dict()
        return {"budget": out.pop("budget"), **out} if "budget" in out else out


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value
