"""The latency baseline: the original after the lossless canonical rewrites, measured in the same run."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import run_model
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

import onnxopt
from onnxopt.baseline import canonical_baseline
from onnxopt.graph import initializer_inputs
from onnxopt.render import render_comparison


def _ir3_cnn() -> onnx.ModelProto:
    """Conv → BatchNormalization → Identity → Relu, IR 3: every initializer is also a graph input."""
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((8, 3, 3, 3)), "scale": rng.uniform(0.5, 1.5, 8), "bias": rng.standard_normal(8),
               "mean": rng.standard_normal(8), "var": rng.uniform(0.5, 1.5, 8)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
             helper.make_node("Identity", ["b"], ["i"]),
             helper.make_node("Relu", ["i"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])]
    inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "ir3", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def test_canonical_baseline_has_no_initializer_inputs_and_no_identity() -> None:
    # setup
    model = _ir3_cnn()
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    # execute
    base = canonical_baseline(model)
    # assert: lossless, and what changed is listed
    assert initializer_inputs(base.model) == [] and [n.op_type for n in base.model.graph.node] == [
        "Conv", "BatchNormalization", "Relu"]
    assert base.changes == ["5 initializer input(s) made constants", "1 Identity node(s) removed"]
    np.testing.assert_array_equal(run_model(base.model, {"x": x})[0], run_model(model, {"x": x})[0])


def test_a_no_op_pass_is_timed_against_the_canonical_original() -> None:
    # setup: a pass that changes nothing on this model
    model = _ir3_cnn()
    # execute
    result = onnxopt.optimize(model, ["fold-constants"], evaluation="random:8", latency_runs=5)
    # assert: the ratio's baseline is canonical A, and the canonical gain has its own line
    cmp = result.report.comparison
    assert cmp.latency_baseline == ("A canonical (5 initializer input(s) made constants; 1 Identity node(s) removed)")
    assert cmp.canonical_latency is not None and cmp.to_dict()["canonical_latency"]["runs"] == 5
    console = Console(record=True, width=200, color_system=None)
    console.print(render_comparison(cmp))
    text = console.export_text()
    assert "canonical gain: A → A canonical (not the passes')" in text
    assert "latency median (batch 1, A canonical)" in text and "baseline = A canonical" in text
