"""The Python API: optimize() checks before it computes, measures before it writes, and warns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TINY_CLASSIFIER, parse, run_model

import onnxopt
from onnxopt.errors import DataError



@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(path, input=rng.standard_normal((16, 4)).astype(np.float32), label=rng.integers(0, 4, 16))
    return path


def test_failed_measurement_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    with pytest.raises(DataError, match="not available"):
        onnxopt.optimize(parse(TINY_CLASSIFIER), ["eliminate-identity"], evaluation="random", output=out,
                         providers=("NoSuchExecutionProvider",))
    assert not out.exists()


def test_result_is_saved_after_the_comparison_and_named_in_it(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "out.onnx"
    result = onnxopt.optimize(parse(TINY_CLASSIFIER), ["eliminate-identity"], evaluation=data, output=out,
                              latency_runs=0)
    assert result.report.output == str(out.resolve())
    assert result.report.comparison is not None
    assert result.report.comparison.model_b == f"{out.resolve()} (optimized)"
    assert result.report.comparison.agreement == 1.0
    assert onnx.load(str(out)).graph == result.model.graph


def test_initializers_listed_as_inputs_are_reported_as_dropped() -> None:
    # setup: IR 8 model whose bias is an initializer *and* a graph input (an overridable default)
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[N, 2] x, float[2] bias) => (float[N, 2] y) <float[2] bias = {1.0, 2.0}> {
            y = Add(x, bias)
        }""")
    x = np.ones((3, 2), np.float32)
    # execute
    result = onnxopt.optimize(model, ["cleanup"])
    # assert: same numbers, the input is gone, and the report says so
    assert [i.name for i in result.model.graph.input] == ["x"]
    np.testing.assert_array_equal(run_model(result.model, {"x": x})[0], run_model(model, {"x": x})[0])
    assert any("1 initializer(s) as graph inputs (bias)" in w for w in result.report.warnings)


def test_calibrating_and_evaluating_on_the_same_file_warns(data: Path) -> None:
    result = onnxopt.optimize(parse(TINY_CLASSIFIER), ["eliminate-identity"], calibration=data, evaluation=data,
                              latency_runs=0)
    assert any("in-sample" in w for w in result.report.warnings)
    result = onnxopt.optimize(parse(TINY_CLASSIFIER), ["eliminate-identity"], calibration="random", evaluation=data,
                              latency_runs=0)
    assert not any("in-sample" in w for w in result.report.warnings)
    assert any("random data" in w for w in result.report.warnings)


def test_every_public_name_resolves_and_a_module_import_loads_no_api() -> None:
    # assert: each name in onnxopt.__all__ comes from the module that defines it
    for name in onnxopt.__all__:
        value = getattr(onnxopt, name)
        assert getattr(value, "__name__", name) == name
    # execute: a fresh interpreter that uses one module only
    probe = ("import sys, onnxopt.data; "
             "print(sorted(m for m in ('onnxopt.api', 'onnxopt.evaluate', 'onnxopt.registry') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    # assert: the API, the evaluator and the registry were not imported; submodules still resolve
    assert out.strip() == "[]"
    assert onnxopt.errors.OnnxoptError is onnxopt.OnnxoptError and onnxopt.runtime.make_session
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        onnxopt.nope  # noqa: B018
