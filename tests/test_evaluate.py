"""The evaluator: errors, agreement and accuracy against numbers computed by hand, fp16 IO, JSON,
CPU feature parsing and the rich rendering."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import BUNDLED_MODELS, bundled
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from onnxopt.data import RandomSource, input_specs, open_data
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.evaluate import accuracy_delta_interval, compare
from onnxopt.hardware import CpuInfo, parse_cpuinfo
from onnxopt.pass_base import PassReport
from onnxopt.render import render_comparison, render_pass_reports, render_stats
from onnxopt.stats import model_stats

SAMPLES, FEATURES, CLASSES = 40, 6, 4
FAST = {"latency_runs": 3, "warmup": 1}


def linear_model(weight: np.ndarray, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """``logits = input @ weight`` with a dynamic batch, in float32 or float16 throughout."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "linear",
        [helper.make_tensor_value_info("input", dtype, ["N", weight.shape[0]])],
        [helper.make_tensor_value_info("logits", dtype, ["N", weight.shape[1]])],
        [numpy_helper.from_array(weight.astype(np_dtype), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def weight(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)


@pytest.fixture
def inputs(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((SAMPLES, FEATURES)).astype(np.float32)


@pytest.fixture
def labels(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, CLASSES, SAMPLES)


def npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "eval.npz"
    np.savez(path, **arrays)
    return path


def test_model_against_itself_is_exact(tmp_path: Path, weight: np.ndarray, inputs: np.ndarray,
                                       labels: np.ndarray) -> None:
    # setup
    path = tmp_path / "m.onnx"
    onnx.save(linear_model(weight), str(path))
    data = npz(tmp_path, input=inputs, label=labels)
    expected_accuracy = float(np.mean((inputs @ weight).argmax(1) == labels))
    # execute
    cmp = compare(path, path, data, batch_size=16, **FAST)
    # assert
    assert cmp.samples == SAMPLES and cmp.labelled_samples == SAMPLES and not cmp.synthetic
    assert cmp.agreement == 1.0 and cmp.logits_output == "logits"
    assert cmp.accuracy_a == cmp.accuracy_b == pytest.approx(expected_accuracy)
    assert cmp.accuracy_delta == 0.0
    (out,) = cmp.outputs
    assert (out.name, out.elements, out.max_abs, out.mean_abs, out.nonfinite) == ("logits", SAMPLES * CLASSES, 0, 0, 0)
    assert out.cosine == pytest.approx(1.0) and out.snr_db == math.inf
    assert cmp.latency is not None and math.isfinite(cmp.latency.ratio) and cmp.latency.ratio > 0
    assert cmp.latency_batch == 1
    assert cmp.size_a_bytes == cmp.size_b_bytes == path.stat().st_size
    assert cmp.stats_a.parameters == FEATURES * CLASSES and cmp.stats_a.macs == FEATURES * CLASSES


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_perturbed_copy_errors_match_hand_computation(batch_size: int, weight: np.ndarray, inputs: np.ndarray,
                                                      rng: np.random.Generator) -> None:
    # setup
    noise = (0.05 * rng.standard_normal(weight.shape)).astype(np.float32)
    a = (inputs @ weight).astype(np.float64)
    b = (inputs @ (weight + noise)).astype(np.float64)
    err = np.abs(a - b)
    data = open_data([{"input": inputs}], linear_model(weight))
    # execute
    cmp = compare(linear_model(weight), linear_model(weight + noise), data, batch_size=batch_size, latency_runs=0)
    # assert
    (out,) = cmp.outputs
    assert out.max_abs == pytest.approx(err.max(), rel=1e-4)
    assert out.mean_abs == pytest.approx(err.mean(), rel=1e-4)
    assert out.cosine == pytest.approx(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-6)
    assert out.snr_db == pytest.approx(10 * np.log10(np.sum(a**2) / np.sum(err**2)), rel=1e-3)
    assert cmp.agreement == pytest.approx(np.mean(a.argmax(1) == b.argmax(1)))
    assert cmp.latency is None and cmp.accuracy_a is None


def test_accuracy_with_labels_matches_hand_computation(weight: np.ndarray, inputs: np.ndarray,
                                                       labels: np.ndarray) -> None:
    # setup: B swaps classes 0 and 1, so its predictions differ exactly where A predicts 0 or 1
    swap = weight[:, [1, 0, 2, 3]]
    pred_a, pred_b = (inputs @ weight).argmax(1), (inputs @ swap).argmax(1)
    only_a = int(np.sum((pred_a == labels) & (pred_b != labels)))
    only_b = int(np.sum((pred_b == labels) & (pred_a != labels)))
    model = linear_model(weight)
    data = open_data([{"input": inputs[:25], "label": labels[:25]}, {"input": inputs[25:], "label": labels[25:]}],
                     model)
    # execute
    cmp = compare(model, linear_model(swap), data, batch_size=8, latency_runs=0)
    # assert
    assert cmp.accuracy_a == pytest.approx(np.mean(pred_a == labels))
    assert cmp.accuracy_b == pytest.approx(np.mean(pred_b == labels))
    assert cmp.agreement == pytest.approx(np.mean(pred_a == pred_b))
    assert cmp.accuracy_delta_ci95 == pytest.approx(accuracy_delta_interval(only_a, only_b, SAMPLES))
    assert any("labelled samples" in w for w in cmp.warnings)


@pytest.mark.parametrize(("only_a", "only_b", "n", "expected"), [
    (10, 0, 100, 1.96 * math.sqrt((0.1 - 0.01) / 100)),  # Wald interval of the paired difference
    (0, 0, 1000, 0.003),  # no discordant pairs: the rule-of-three floor 3/n
    (5, 5, 100, 1.96 * math.sqrt(0.1 / 100)),
    (0, 0, 1, 1.0),  # one sample: the interval is capped at the whole range
])
def test_accuracy_delta_interval(only_a: int, only_b: int, n: int, expected: float) -> None:
    assert accuracy_delta_interval(only_a, only_b, n) == pytest.approx(expected)


def test_nonfinite_scores_count_as_disagreeing_and_wrong(weight: np.ndarray, inputs: np.ndarray,
                                                        labels: np.ndarray) -> None:
    # setup: NaN inputs in 5 rows make both models' scores NaN there
    x = inputs.copy()
    x[:5] = np.nan
    model = linear_model(weight)
    expected = (x @ weight).argmax(1) == labels
    expected[:5] = False
    # execute
    cmp = compare(model, model, open_data([{"input": x, "label": labels}], model), latency_runs=0)
    # assert
    assert cmp.agreement == pytest.approx((SAMPLES - 5) / SAMPLES)
    assert cmp.accuracy_a == pytest.approx(np.mean(expected))
    assert "5 of 40 sample(s) have NaN/inf class scores" in cmp.warnings[0]


def test_labels_outside_the_classes_are_refused(weight: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> None:
    model = linear_model(weight)
    with pytest.raises(DataError, match=r"labels range over \[100, 103\] but the model scores 4 classes"):
        compare(model, model, open_data([{"input": inputs, "label": labels * 0 + 100 + np.arange(SAMPLES) % 4}],
                                        model), latency_runs=0)


def test_one_hot_labels_equal_index_labels(weight: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> None:
    # setup
    model = linear_model(weight)
    one_hot = np.eye(CLASSES, dtype=np.float32)[labels]
    # execute
    by_index = compare(model, model, open_data([{"input": inputs, "label": labels}], model), latency_runs=0)
    by_row = compare(model, model, open_data([{"input": inputs, "label": one_hot}], model), latency_runs=0)
    # assert
    assert by_index.accuracy_a == by_row.accuracy_a == pytest.approx(np.mean((inputs @ weight).argmax(1) == labels))


def test_fp16_io_model_against_float32(weight: np.ndarray, inputs: np.ndarray) -> None:
    # setup
    a, b = linear_model(weight), linear_model(weight, TensorProto.FLOAT16)
    exact = inputs.astype(np.float64) @ weight.astype(np.float64)
    b_by_hand = (inputs.astype(np.float16) @ weight.astype(np.float16)).astype(np.float64)
    # execute
    cmp = compare(a, b, open_data([{"input": inputs}], a), **FAST)
    # assert: B was fed float16 and its float16 output compared in float64
    (out,) = cmp.outputs
    assert 0 < out.max_abs < 0.05
    assert out.max_abs == pytest.approx(np.abs(exact - b_by_hand).max(), abs=5e-4)
    assert cmp.agreement is not None and cmp.agreement >= 0.9
    assert cmp.size_b_bytes < cmp.size_a_bytes
    assert any("model B computes in float16" in w for w in cmp.warnings)
    assert not any("model A computes in float16" in w for w in cmp.warnings)


def test_no_data_uses_random_inputs_and_warns(weight: np.ndarray) -> None:
    # execute
    cmp = compare(linear_model(weight), linear_model(weight), None, **FAST)
    # assert
    assert cmp.synthetic and "random" in cmp.data and cmp.samples == 64
    assert cmp.accuracy_a is None
    assert any("synthetic" in w and "nothing about accuracy" in w for w in cmp.warnings)


def test_regression_output_gets_errors_only_and_labels_warn(inputs: np.ndarray, labels: np.ndarray,
                                                            rng: np.random.Generator) -> None:
    # setup: one output value per sample is not class scores
    model = linear_model(rng.standard_normal((FEATURES, 1)).astype(np.float32))
    data = open_data([{"input": inputs, "label": labels}], model)
    # execute
    cmp = compare(model, model, data, latency_runs=0)
    # assert
    assert cmp.agreement is None and cmp.accuracy_a is None and cmp.logits_output is None
    assert cmp.outputs[0].max_abs == 0 and cmp.outputs[0].elements == SAMPLES
    assert any("not class scores" in w for w in cmp.warnings)


def test_models_with_different_inputs_are_refused(weight: np.ndarray) -> None:
    # setup
    other = linear_model(weight)
    other.graph.input[0].name = "x"
    other.graph.node[0].input[0] = "x"
    # execute / assert
    with pytest.raises(DataError, match="different inputs"):
        compare(linear_model(weight), other, None, latency_runs=0)


def test_unknown_logits_output_is_refused(weight: np.ndarray) -> None:
    with pytest.raises(OnnxoptError, match="logits output 'probs'"):
        compare(linear_model(weight), linear_model(weight), None, latency_runs=0, logits_output="probs")


def test_json_round_trip_is_strict(weight: np.ndarray, inputs: np.ndarray, labels: np.ndarray,
                                   tmp_path: Path) -> None:
    # setup
    model = linear_model(weight)
    cmp = compare(model, model, npz(tmp_path, input=inputs, label=labels), **FAST)
    # execute
    back = json.loads(json.dumps(cmp.to_dict(), allow_nan=False))
    # assert
    assert back["agreement"] == 1.0 and back["accuracy_delta"] == 0.0
    assert back["outputs"][0]["snr_db"] is None and back["outputs"][0]["max_abs"] == 0
    assert back["latency"]["runs"] == 3 and isinstance(back["latency"]["significant"], bool)
    assert back["providers"] == ["CPUExecutionProvider"] and back["threads"] == 1
    assert back["stats_a"]["op_histogram"] == {"MatMul": 1} and back["cpu"]["arch"]


# -- CPU features ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "machine", "int8_dot", "flags"), [
    ("model name\t: Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", "x86_64", True, ("avx512_vnni",)),
    ("model name\t: Core\nflags\t\t: fpu avx2 avx_vnni amx_int8 amx_tile\n", "x86_64", True,
     ("avx_vnni", "amx_int8", "amx_tile")),
    ("model name\t: EPYC\nflags\t\t: fpu avx2 avx512f\n", "x86_64", False, ()),
    ("processor\t: 0\nFeatures\t: fp asimd asimddp asimdhp\n", "aarch64", True, ("asimddp",)),
    ("processor\t: 0\nFeatures\t: fp asimd\n", "aarch64", False, ()),
    ("", "x86_64", None, ()),
    ("flags\t\t: avx512_vnni\n", "riscv64", None, ()),
])
def test_parse_cpuinfo(text: str, machine: str, int8_dot: bool | None, flags: tuple[str, ...]) -> None:
    info = parse_cpuinfo(text, machine)
    assert (info.int8_dot, info.int8_flags) == (int8_dot, flags)
    assert info.int8_dot_text == ("unknown" if int8_dot is None else ", ".join(flags) or "no")


# -- rendering ------------------------------------------------------------------------------------

def _text(renderable: object) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_comparison_shows_metrics_conditions_and_warnings(weight: np.ndarray) -> None:
    # setup
    cmp = compare(linear_model(weight), linear_model(weight), None, **FAST)
    # execute
    text = _text(render_comparison(cmp))
    # assert
    for expected in ("top-1 agreement (logits)", "100.00%", "∞ (identical)", "latency median (batch 1)",
                     "file size", "CPUExecutionProvider, 1 thread", "[synthetic]", "⚠ data is synthetic"):
        assert expected in text, expected


def test_render_pass_reports_and_stats(weight: np.ndarray) -> None:
    # setup
    report = PassReport("fold-batchnorm", changes=2, nodes_removed=2, details={"scale": 0.5, "nodes": ["a", "b"]})
    report.skip("bn3", "scale is not a constant initializer")
    report.skip("bn4", "scale is not a constant initializer")
    # execute
    passes = _text(render_pass_reports([report]))
    stats = _text(render_stats(model_stats(linear_model(weight))))
    # assert
    assert "fold-batchnorm" in passes and "scale=0.5, nodes=(2 items)" in passes
    assert "skipped 2× — scale is not a constant initializer" in passes
    assert "MatMul" in stats and "input: float32[N, 6]" in stats and "ai.onnx 17" in stats


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_model_against_itself(name: str) -> None:
    # setup: the first 256 evaluation samples keep the test fast
    model, _, eval_path = bundled(name)
    with np.load(eval_path) as z:
        inputs, labels = z["input"][:256], z["label"][:256]
    # execute
    cmp = compare(model, model, open_data([{"input": inputs, "label": labels}], model), latency_runs=0)
    # assert
    assert cmp.samples == len(inputs) and cmp.agreement == 1.0 and all(o.max_abs == 0 for o in cmp.outputs)
    assert cmp.accuracy_a is not None and cmp.accuracy_a == cmp.accuracy_b


def test_random_source_is_what_none_means(weight: np.ndarray) -> None:
    # setup
    model = linear_model(weight)
    # execute
    cmp = compare(model, model, RandomSource(input_specs(model), samples=10), latency_runs=0)
    # assert
    assert cmp.synthetic and cmp.samples == 10


@pytest.mark.parametrize(("details", "expected"), [
    ({"method": "minmax", "ratio": 0.123456, "per_channel": True}, "method=minmax, ratio=0.1235, per_channel=True"),
    ({"folded_into": {"Conv": 16}}, "folded_into=Conv:16"),
    ({"layers": [1, 2, 3], "big": {str(i): i for i in range(5)}}, "layers=(3 items), big=(5 entries)"),
])
def test_pass_details_summary(details: dict, expected: str) -> None:
    from onnxopt.render import summarize_details

    assert summarize_details(details, width=200) == expected
