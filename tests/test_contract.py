"""Contract tests: every registered pass on every bundled model and on a trivial graph.

The output must pass the full checker, load in onnxruntime, keep the input/output names, and match
the original within the pass's declared tolerance (exact for lossless passes); passes that declare
idempotence must change nothing when run on their own output.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import BUNDLED_MODELS, MODELS_DIR, parse, run_model
from export_shapes import EXPORT_SHAPES

from onnxopt.data import open_data
from onnxopt.pass_base import Pass, PassContext
from onnxopt.pipeline import Pipeline
from onnxopt.registry import default_registry

PASSES = default_registry().classes()
EVAL_SAMPLES = 200


def _eval_inputs(name: str) -> np.ndarray:
    with np.load(MODELS_DIR / f"{name}.eval.npz") as npz:
        return npz["input"][:EVAL_SAMPLES]


def _check_within(p: type[Pass], before: list[np.ndarray], after: list[np.ndarray]) -> None:
    tol = p.tolerance
    for a, b in zip(before, after):
        b = b.astype(a.dtype)
        if tol.exact:
            np.testing.assert_array_equal(b, a)
        elif np.isfinite(tol.rtol) and np.isfinite(tol.atol):
            np.testing.assert_allclose(b, a, rtol=tol.rtol, atol=tol.atol)
    if before[0].ndim == 2 and before[0].shape[1] > 1:
        agreement = float(np.mean(before[0].argmax(1) == after[0].argmax(1)))
        assert agreement >= tol.min_agreement, f"{p.name}: top-1 agreement {agreement:.4f} < {tol.min_agreement}"


@pytest.mark.skipif(not BUNDLED_MODELS, reason="no bundled models")
@pytest.mark.parametrize("model_name", BUNDLED_MODELS)
@pytest.mark.parametrize("pass_cls", PASSES, ids=lambda c: c.name)
def test_pass_on_bundled_model(pass_cls: type[Pass], model_name: str) -> None:
    # setup
    model = onnx.load(str(MODELS_DIR / f"{model_name}.onnx"))
    calib = open_data(MODELS_DIR / f"{model_name}.calib.npz", model)
    ctx = PassContext(calibration=calib, seed=0)
    feeds = {"input": _eval_inputs(model_name)}
    # execute
    result = Pipeline([pass_cls()]).run(model, ctx)
    # assert
    onnx.checker.check_model(result.model, full_check=True)
    assert [i.name for i in result.model.graph.input if i.name not in {t.name for t in result.model.graph.initializer}] \
        == [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    _check_within(pass_cls, run_model(model, feeds), run_model(result.model, feeds))
    if pass_cls.idempotent:
        again = Pipeline([pass_cls()]).run(result.model, ctx)
        assert not again.reports[0].modified, f"{pass_cls.name} is not idempotent: {again.reports[0].to_dict()}"


@pytest.mark.parametrize("shape", sorted(EXPORT_SHAPES))
@pytest.mark.parametrize("pass_cls", PASSES, ids=lambda c: c.name)
def test_pass_on_export_shaped_model(pass_cls: type[Pass], shape: str) -> None:
    # setup: small constructed models of real-export shapes (tests/export_shapes.py)
    model, calib, feeds = EXPORT_SHAPES[shape]()
    ctx = PassContext(calibration=open_data([calib], model), seed=0)
    # execute
    result = Pipeline([pass_cls()]).run(model, ctx)
    # assert
    onnx.checker.check_model(result.model, full_check=True)
    assert [i.name for i in result.model.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    _check_within(pass_cls, run_model(model, feeds), run_model(result.model, feeds))
    if pass_cls.idempotent:
        again = Pipeline([pass_cls()]).run(result.model, ctx)
        assert not again.reports[0].modified, f"{pass_cls.name} is not idempotent: {again.reports[0].to_dict()}"


TRIVIAL = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 3] x) => (float[N, 3] y) {
    y = Relu(x)
}
"""


@pytest.mark.parametrize("pass_cls", PASSES, ids=lambda c: c.name)
def test_pass_on_trivial_graph(pass_cls: type[Pass]) -> None:
    model = parse(TRIVIAL)
    x = np.array([[-1.0, 0.0, 2.5], [3.0, -0.5, 1.0]], np.float32)
    calib = open_data([{"x": x}], model)
    result = Pipeline([pass_cls()]).run(model, PassContext(calibration=calib))
    onnx.checker.check_model(result.model, full_check=True)
    assert [o.name for o in result.model.graph.output] == ["y"]
    _check_within(pass_cls, [np.maximum(x, 0)], run_model(result.model, {"x": x}))
