"""The latency baseline: the original model after the lossless canonical rewrites every optimized
model gets for free.

Any model onnxopt writes has its initializers as constants (an IR < 4 export lists them as graph
inputs too, which stops onnxruntime from folding and fusing them) and no Identity nodes. Timing B
against the raw original would credit every pass with that gain, up to ×0.33 on such exports for a
pass that changed nothing. So every latency ratio's baseline is the original with those rewrites
(``eliminate-identity`` through the pipeline), measured in the same interleaved run; the gain of
the rewrites alone is reported on its own line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx

from onnxopt.errors import PassError
from onnxopt.graph import initializer_inputs

logger = logging.getLogger(__name__)


@dataclass
class Baseline:
    """The canonical original, and what the canonical rewrites changed (empty: it is the original)."""

    model: onnx.ModelProto
    changes: list[str] = field(default_factory=list)
    #: why the canonical rewrites could not be applied (then ``model`` is the original)
    problem: str | None = None

    @property
    def description(self) -> str:
        if not self.changes:
            return "A"
        return f"A canonical ({'; '.join(self.changes)})"


def canonical_baseline(model: onnx.ModelProto) -> Baseline:
    """``model`` with initializer inputs turned into constants and Identity nodes removed."""
    from onnxopt.pipeline import Pipeline
    from onnxopt.registry import default_registry

    frozen = len(initializer_inputs(model))
    try:
        result = Pipeline([default_registry().create("eliminate-identity")]).run(model)
    except PassError as exc:
        logger.info("no canonical baseline: %s", exc)
        return Baseline(model, problem=str(exc))
    changes = []
    if frozen:
        changes.append(f"{frozen} initializer input(s) made constants")
    removed = result.reports[0].nodes_removed
    if removed:
        changes.append(f"{removed} Identity node(s) removed")
    return Baseline(result.model if changes else model, changes)
