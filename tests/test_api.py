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
from onnxopt.api import check_runs
from onnxopt.errors import DataError, ModelSaveError
from onnxopt.runtime import run_error



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


SCATTER = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[4,3] data, int64[4,1] idx, float[4,3] upd) => (float[4,3] y) {
    y = ScatterND <reduction="add"> (data, idx, upd)
}"""
#: the same model computing in float16, as an fp16 pass without the kernel probe would write it
SCATTER_FLOAT16 = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[4,3] data, int64[4,1] idx, float[4,3] upd) => (float[4,3] y) {
    d = Cast <to=10> (data)
    u = Cast <to=10> (upd)
    h = ScatterND <reduction="add"> (d, idx, u)
    y = Cast <to=1> (h)
}"""


def test_a_model_that_fails_at_run_time_is_refused_like_one_that_fails_to_load() -> None:
    # setup: onnxruntime loads a float16 ScatterND with reduction=add and fails on its first run
    original, broken = parse(SCATTER), parse(SCATTER_FLOAT16)
    calib = onnxopt.open_data({"data": np.ones((4, 3), np.float32), "idx": np.zeros((4, 1), np.int64),
                               "upd": np.ones((4, 3), np.float32)}, original)
    # execute / assert
    assert check_runs(original, calib, ["CPUExecutionProvider"], {}, lambda feed: run_error(original, feed)) == []
    with pytest.raises(ModelSaveError, match="fails at run time on list .*ScatterND"):
        check_runs(original, calib, ["CPUExecutionProvider"], {}, lambda feed: run_error(broken, feed))


def test_the_run_check_proves_nothing_when_the_original_fails_too() -> None:
    # setup: random indices (0..9) are out of range for the original as well
    original, broken = parse(SCATTER), parse(SCATTER_FLOAT16)
    # execute
    warnings = check_runs(original, None, ["CPUExecutionProvider"], {}, lambda feed: run_error(broken, feed))
    # assert
    assert warnings == ["the run check proves nothing: the original model fails on random inputs "
                        "(4 samples, seed 0; latency/structure only) too"]


def test_int8_calibrates_a_stateful_model_from_a_list_of_dicts() -> None:
    # setup: x [B, 4] beside a recurrent state [2, B, 8]; the dicts hold 5, 7 and 2 samples
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[B, 4] x, float[2, B, 8] state) => (float[B, 8] y) {
            h = MatMul(x, w)
            s = ReduceMean <axes=[0], keepdims=0> (state)
            y = Add(h, s)
        }""")
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8), "w"))
    rng = np.random.default_rng(0)
    dicts = [{"x": rng.standard_normal((b, 4)).astype(np.float32),
              "state": rng.standard_normal((2, b, 8)).astype(np.float32)} for b in (5, 7, 2)]
    # execute
    result = onnxopt.optimize(model, ["int8"], calibration=dicts)
    # assert: quantized, runs on every dict, and the report says where the samples are
    counts = {op: sum(n.op_type == op for n in result.model.graph.node) for op in ("QuantizeLinear", "MatMul")}
    assert counts["QuantizeLinear"] >= 1 and counts["MatMul"] == 1
    for d in dicts:
        out, = run_model(result.model, d)
        ref, = run_model(model, d)
        np.testing.assert_allclose(out, ref, atol=0.1)
    assert result.report.calibration.endswith("; samples lie on state (axis 1)")
