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


DYNAMIC_CONV = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[?, 2, 8, W] x) => (float[?, 2, 8, W] y) <float[2, 2, 3, 3] w = {%s}> {
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    y = Relu(c)
}
""" % ", ".join(str(v / 10) for v in range(36))


def test_default_comparison_sizes_dynamic_dims_and_says_how(tmp_path: Path) -> None:
    # setup: an unnamed batch dim and a named width, as exported OCR recognisers have
    model = parse(DYNAMIC_CONV)
    out = tmp_path / "out.onnx"
    # execute
    result = onnxopt.optimize(model, ["eliminate-identity"], evaluation="random", output=out, latency_runs=3)
    # assert: written and measured; the width came from the default, and the report says so
    assert out.exists() and result.report.comparison is not None and result.report.comparison.samples == 64
    assert "x[3]=64 (default)" in result.report.comparison.data
    assert any("random data: 'W' of input 'x' sized 64 by default" in w for w in result.report.warnings)


def test_default_comparison_takes_dynamic_dims_from_the_calibration_data(tmp_path: Path) -> None:
    # setup
    model = parse(DYNAMIC_CONV)
    calib = [{"x": np.ones((3, 2, 8, 12), np.float32)}]
    # execute
    result = onnxopt.optimize(model, ["eliminate-identity"], calibration=calib, evaluation="random", latency_runs=3)
    # assert
    assert "x[3]=12 (as in the calibration data)" in result.report.comparison.data
    assert not any("by default" in w for w in result.report.warnings)


def test_a_default_comparison_that_cannot_run_still_writes_the_model(tmp_path: Path) -> None:
    # setup: the Reshape only works for a width of 5, which random data cannot know
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[N, W] x) => (float[N, 5] y) <int64[2] shape = {-1, 5}> {
            r = Reshape(x, shape)
            y = Relu(r)
        }""")
    out = tmp_path / "out.onnx"
    # execute
    result = onnxopt.optimize(model, ["eliminate-identity"], evaluation="random", output=out)
    # assert
    assert out.exists() and result.report.comparison is None
    assert any(w.startswith("the default comparison on random inputs could not run (") for w in result.report.warnings)


def test_few_calibration_samples_warn(data: Path) -> None:
    result = onnxopt.optimize(parse(TINY_CLASSIFIER), ["eliminate-identity"], calibration=data)
    assert any(w.startswith("only 16 calibration samples (fewer than 100)") for w in result.report.warnings)
