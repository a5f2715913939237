"""``onnxopt inspect``: static statistics plus a dry run of every pass that needs no data."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxopt.errors import PassError
from onnxopt.pass_base import PassContext, PassReport
from onnxopt.pipeline import Pipeline
from onnxopt.registry import Registry, default_registry
from onnxopt.stats import ModelStats, model_stats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassPreview:
    """What one pass would do to the model at its default settings (with what its prerequisites do)."""

    name: str
    status: str  # "would change", "no change", "needs calibration data", "not applicable"
    changes: int = 0
    nodes_added: int = 0
    nodes_removed: int = 0
    skipped: int = 0
    reason: str = ""


@dataclass
class Inspection:
    stats: ModelStats
    producer: str
    ir_version: int
    previews: list[PassPreview] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.to_dict(), "producer": self.producer, "ir_version": self.ir_version,
                "passes": [p.__dict__ for p in self.previews]}


def inspect_model(model: onnx.ModelProto, registry: Registry | None = None) -> Inspection:
    registry = registry or default_registry()
    producer = f"{model.producer_name} {model.producer_version}".strip() or "unknown"
    info = Inspection(model_stats(model), producer, model.ir_version)
    for cls in registry.classes():
        if cls.needs_calibration:
            info.previews.append(PassPreview(cls.name, "needs calibration data"))
            continue
        try:
            report = Pipeline([cls()]).run(model, PassContext()).reports[0]
        except PassError as exc:
            info.previews.append(PassPreview(cls.name, "not applicable", reason=str(exc)))
            continue
        counted = _with_prerequisites(report) if report.modified else [report]  # else they were undone
        info.previews.append(PassPreview(
            cls.name, "would change" if report.modified else "no change", sum(r.changes for r in counted),
            sum(r.nodes_added for r in counted), sum(r.nodes_removed for r in counted),
            sum(len(r.skipped) for r in counted)))
    return info


def _with_prerequisites(report: PassReport) -> list[PassReport]:
    """``report`` and the reports of the prerequisites it ran (theirs too): what the pass did in all."""
    return [report, *(r for nested in report.prerequisites for r in _with_prerequisites(nested))]
