"""Shared test helpers: run models in onnxruntime with graph optimizations off, bundled models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxopt.graph import export, import_graph
from onnxopt.pass_base import Pass, PassContext, PassReport
from onnxopt.pipeline import Pipeline
from onnxopt.runtime import make_session

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
BUNDLED_MODELS = sorted(p.stem for p in MODELS_DIR.glob("*.onnx"))

#: a 4-class model with a Constant weight and an Identity: every canonical pass has something to do
TINY_CLASSIFIER = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] input) => (float[N, 4] logits) {
    w = Constant <value = float[4, 4] {1,0,0,0, 0,2,0,0, 0,0,3,0, 0,0,0,4}> ()
    h = MatMul(input, w)
    d = Identity(h)
    logits = Relu(d)
}
"""


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` in onnxruntime (CPU, ORT_DISABLE_ALL) so runtime rewrites hide nothing."""
    return make_session(model).run(None, feeds)


def apply_pass(p: Pass, model: onnx.ModelProto, ctx: PassContext | None = None) -> tuple[onnx.ModelProto, PassReport]:
    """Run one pass through the pipeline (so postconditions and export checks apply)."""
    result = Pipeline([p]).run(model, ctx or PassContext())
    onnx.checker.check_model(result.model, full_check=True)
    return result.model, result.reports[0]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def parse(text: str) -> onnx.ModelProto:
    """A model from ONNX textual syntax, checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def bundled(name: str) -> tuple[onnx.ModelProto, Path, Path]:
    """(model, calibration npz, evaluation npz) of a bundled model."""
    return (onnx.load(str(MODELS_DIR / f"{name}.onnx")), MODELS_DIR / f"{name}.calib.npz",
            MODELS_DIR / f"{name}.eval.npz")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


__all__ = ["TINY_CLASSIFIER", "run_model", "apply_pass", "op_counts", "parse", "bundled", "BUNDLED_MODELS", "MODELS_DIR",
           "export", "import_graph", "gs"]
