"""Warnings for claims a comparison cannot support, and for results worse than the original."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.claims import calibration_warning, claim_warnings
from onnxopt.evaluate import Comparison
from onnxopt.hardware import CpuInfo
from onnxopt.latency import PairedLatency
from onnxopt.stats import model_stats


def _comparison(model: onnx.ModelProto, **changes: object) -> Comparison:
    stats = model_stats(model)
    base = Comparison(model_a="a", model_b="b", providers=["CPUExecutionProvider"], threads=1, batch_size=32,
                      optimized_sessions=True, data="eval.npz", samples=10_000, synthetic=False, size_a_bytes=1,
                      size_b_bytes=1, stats_a=stats, stats_b=stats, cpu=CpuInfo("x86_64", "test", True, False))
    return replace(base, **changes)  # type: ignore[arg-type]


def _quantized_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["logits"])], "qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _latency(p10: float, p90: float, runs: int = 50) -> PairedLatency:
    return PairedLatency(runs, 5, 1.0, 1.1, 1.0, 1.1, (p10 + p90) / 2, p10, p90)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"cpu": CpuInfo("x86_64", "old", False, False)}, "no int8 dot-product instructions"),
    ({"cpu": CpuInfo("riscv64", "unknown", None, None)}, "is unknown"),
    ({"threads": None, "latency": _latency(0.5, 0.6)}, "threads not pinned"),
    ({"latency": _latency(0.9, 1.1)}, "inside this run's noise band"),
    ({"latency": _latency(0.5, 0.6, runs=5)}, "only 5 paired latency runs"),
    ({"labelled_samples": 200, "accuracy_a": 0.9, "accuracy_b": 0.89, "accuracy_delta_ci95": 0.03},
     "not a significant difference"),
    ({"labelled_samples": 100, "accuracy_a": 0.9, "accuracy_b": 0.9, "accuracy_delta_ci95": 0.03},
     "cannot be ruled out"),
    ({"synthetic": True}, "synthetic"),
])
def test_claim_warnings(changes: dict[str, object], expected: str) -> None:
    # setup
    model = _quantized_model()
    # execute
    warnings = claim_warnings(_comparison(model, **changes), model, model)
    # assert
    assert any(expected in w for w in warnings), warnings


def test_supported_claims_raise_no_warnings() -> None:
    # setup: int8 on a VNNI CPU, a significant speed-up, a delta outside its interval and within the budget
    model = _quantized_model()
    cmp = _comparison(model, latency=_latency(0.5, 0.6), labelled_samples=10_000, accuracy_a=0.9, accuracy_b=0.895,
                      accuracy_delta_ci95=0.002)
    # execute / assert
    assert claim_warnings(cmp, model, model) == []


def _grown(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with two more Identity nodes before its output."""
    grown = onnx.ModelProto()
    grown.CopyFrom(model)
    out = grown.graph.node[-1].output[0]
    grown.graph.node[-1].output[0] = f"{out}_0"
    grown.graph.node.extend([helper.make_node("Identity", [f"{out}_0"], [f"{out}_1"]),
                             helper.make_node("Identity", [f"{out}_1"], [out])])
    return grown


@pytest.mark.parametrize(("changes", "expected"), [
    ({"latency": _latency(1.5, 1.7)}, "B is slower than A: latency ×1.60 (p10–p90 1.50–1.70); B has more Identity (+2)"),
    ({"size_a_bytes": 1000, "size_b_bytes": 1100}, "B's file is ×1.10 the size of A's (+100 bytes; parameter bytes "
                                                   "×1.00); B has more Identity (+2)"),
    ({"labelled_samples": 10_000, "accuracy_a": 0.9, "accuracy_b": 0.85, "accuracy_delta_ci95": 0.01},
     "accuracy dropped 5.00 pts (90.00% → 85.00%), over the 1-point budget"),
    ({"agreement": 0.97}, "top-1 agreement with the original is 97.00%, under the 99% budget"),
    ({"samples": 40, "agreement": 1.0}, "only 40 unlabelled evaluation samples (fewer than 100): each one moves "
                                        "agreement by 2.5 pts"),
    ({"samples": 50, "labelled_samples": 50, "accuracy_a": 0.9, "accuracy_b": 0.9, "accuracy_delta_ci95": 0.06},
     "only 50 labelled evaluation samples (fewer than 100): each one moves agreement and accuracy by 2.0 pts"),
])
def test_worse_results_and_small_samples_are_called_out(changes: dict[str, object], expected: str) -> None:
    # setup: B has two more Identity nodes than A
    model = _quantized_model()
    cmp = replace(_comparison(model, **changes), stats_b=model_stats(_grown(model)))
    # execute
    warnings = claim_warnings(cmp, model, model)
    # assert
    assert any(w.startswith(expected) for w in warnings), warnings


def test_calibration_with_few_samples_warns() -> None:
    assert calibration_warning(32).startswith("only 32 calibration samples (fewer than 100)")
    assert calibration_warning(100) is None
