"""The int8 QDQ pass on tiny graphs (structure, numerics, onnxruntime fusion) and on bundled models."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from conftest import BUNDLED_MODELS, apply_pass, bundled, op_counts, run_model
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import open_data
from onnxopt.errors import PreconditionError
from onnxopt.ops import INTEGER_OPS
from onnxopt.pass_base import PassContext
from onnxopt.pipeline import Pipeline
from onnxopt.runtime import make_session
from passes.int8 import Int8
from passes.int8.op_table import COMPUTE_OPS, FLOAT_COMPUTE_OPS, INTEGER_LAYER_OPS, OPS, Role


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], in_shape: list, out_shape: list,
           opset: int = 17, out_name: str = "y") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v.astype(np.float32) if v.dtype == np.float64 else v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _cnn(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm (the classic CNN tail)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flatten"),
        helper.make_node("Gemm", ["f1", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = {"w1": rng.standard_normal((4, 2, 3, 3)) * 0.3, "b1": rng.standard_normal(4) * 0.1,
             "wg": rng.standard_normal((5, 4 * 4 * 4)) * 0.2, "bg": rng.standard_normal(5) * 0.1}
    return _model(nodes, inits, ["N", 2, 8, 8], ["N", 5])


def _ctx(model: onnx.ModelProto, x: np.ndarray) -> PassContext:
    return PassContext(calibration=open_data([{"x": x}], model))


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _qparams(model: onnx.ModelProto, node: str) -> tuple[float, int]:
    """(scale, zero point) of a QuantizeLinear node."""
    q = _node(model, node)
    return float(_initializer(model, q.input[1])), int(_initializer(model, q.input[2]))


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if tensor in n.output)


# -- structure, numerics, fusion --------------------------------------------------------------

@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_cnn_is_quantized_fused_and_close(method: str, rng: np.random.Generator) -> None:
    # setup
    model = _cnn(rng)
    x = rng.standard_normal((64, 2, 8, 8)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(method=method), model, _ctx(model, x))
    # assert: Q/DQ pairs on x, r1, p1, f1 (the last two reuse r1's scale); DQs for 2 weights, 2 biases
    assert op_counts(out) == {"QuantizeLinear": 4, "DequantizeLinear": 8, "Conv": 1, "Relu": 1, "MaxPool": 1,
                              "Flatten": 1, "Gemm": 1}
    assert [o.name for o in out.graph.output] == ["y"]
    assert report.details.relu_clip_as_clamp == ["c1"] and report.details.float_outputs == ["y"]
    assert report.details.fusion.integer_kernels == {"QGemm": 1, "QLinearConv": 1}
    assert report.details.fusion.float_compute_ops == {} and report.details.fusion.unfused_layers == []
    assert _qparams(out, "p1_Q") == _qparams(out, "r1_Q") == _qparams(out, "f1_Q")  # MaxPool, Flatten reuse it
    assert _initializer(out, "r1_zp") == 0  # Relu output: zero point = qmin
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.95


def test_pooling_after_the_last_layer_is_quantized_so_dequantization_runs_on_the_pooled_tensor(
        rng: np.random.Generator) -> None:
    # setup: a classifier ending Conv -> Relu -> GlobalAveragePool -> output (SqueezeNet's tail)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["y"], name="gap"),
    ]
    model = _model(nodes, {"w1": rng.standard_normal((6, 2, 3, 3)) * 0.3, "b1": rng.standard_normal(6) * 0.1},
                   ["N", 2, 8, 8], ["N", 6, 1, 1])
    x = rng.standard_normal((32, 2, 8, 8)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert: the graph output is dequantized after the pooling, which runs as an integer kernel
    dq = _producer(out, "y")
    assert dq.op_type == "DequantizeLinear" and _producer(out, dq.input[0]).op_type == "QuantizeLinear"
    assert _producer(out, _producer(out, dq.input[0]).input[0]).op_type == "GlobalAveragePool"
    assert report.details.fusion.integer_kernels == {"QLinearConv": 1, "QLinearGlobalAveragePool": 1}
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.02 * np.linalg.norm(a)


def test_softmax_over_many_rows_runs_as_qlinearsoftmax(rng: np.random.Generator) -> None:
    # setup: a detector's score head: Conv -> Transpose -> Reshape -> Softmax over 64 anchors of 2 classes
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c1"], ["t1"], name="nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t1", "anchors"], ["a1"], name="anchors"),
        helper.make_node("Softmax", ["a1"], ["y"], name="scores", axis=-1),
    ]
    inits = {"w1": rng.standard_normal((2, 3, 3, 3)) * 0.5, "b1": rng.standard_normal(2) * 0.1,
             "anchors": np.array([0, -1, 2], np.int64)}
    model = _model(nodes, inits, ["N", 3, 8, 8], ["N", 64, 2])
    x = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert: probabilities quantized from zero point 0 over their calibrated range, fused by onnxruntime
    dq = _producer(out, "y")
    q = _producer(out, dq.input[0])
    assert dq.op_type == "DequantizeLinear" and _producer(out, q.input[0]).op_type == "Softmax"
    scale, zero_point = _qparams(out, q.name)
    assert zero_point == 0 and 0.5 / 255 < scale <= 1.0 / 255 + 1e-9
    assert report.details.fusion.integer_kernels == {"QLinearConv": 1, "QLinearSoftmax": 1}
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.abs(a - b).max() < 0.05


def test_classifier_softmax_stays_float(rng: np.random.Generator) -> None:
    # setup: one row of probabilities per sample: QLinearSoftmax gains nothing and its steps tie classes
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], name="probs", axis=-1)]
    model = _model(nodes, {"w": rng.standard_normal((10, 16)) * 0.3, "b": rng.standard_normal(10) * 0.1},
                   ["N", 16], ["N", 10])
    x = rng.standard_normal((32, 16)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert: the Gemm writes float logits (QGemm), the Softmax stays float, and the report says why
    assert _producer(out, "y").op_type == "Softmax" and _producer(out, "logits").op_type == "Gemm"
    assert report.details.float_outputs == ["logits"]
    assert any(s.target == "probs" and "1 row(s) per sample stays float" in s.reason for s in report.skipped)


@pytest.mark.parametrize(("reduce_range", "bound"), [(True, 63), (False, 127)])
def test_weights_are_per_channel_int8_and_bias_int32(reduce_range: bool, bound: int, rng: np.random.Generator) -> None:
    # setup
    model = _cnn(rng)
    x = rng.standard_normal((16, 2, 8, 8)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(reduce_range=reduce_range), model, _ctx(model, x))
    # assert
    w_dq = _node(out, "w1_DQ")
    scale = _initializer(out, "w1_s")
    w1 = _initializer(model, "w1")
    np.testing.assert_allclose(scale, np.abs(w1).reshape(4, -1).max(1) / bound, rtol=1e-6)
    q = _initializer(out, "w1_q")
    assert q.dtype == np.int8 and np.abs(q).max() == bound and helper.get_attribute_value(w_dq.attribute[0]) == 0
    bias = _initializer(out, "conv1_b_q")
    x_scale = float(_initializer(out, "x_s"))
    assert bias.dtype == np.int32
    np.testing.assert_allclose(_initializer(out, "conv1_b_s"), np.float32(x_scale) * scale, rtol=1e-6)
    fc_axis = helper.get_attribute_value(_node(out, "wg_DQ").attribute[0])
    assert fc_axis == 0 and _initializer(out, "wg_s").shape == (5,)  # Gemm transB=1: [N, K]
    assert report.details.int8_weights == 2 and report.details.int32_biases == 2


def test_reduced_range_weights_run_the_same_in_the_fused_kernels(rng: np.random.Generator) -> None:
    # setup: large positive activations times large positive weights: the worst case for int16 pair sums
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[1, 1])]
    w = (np.abs(rng.standard_normal((4, 32, 1, 1))) + 1.0).astype(np.float32)
    model = _model(nodes, {"w": w}, ["N", 32, 4, 4], ["N", 4, 4, 4])
    x = (np.abs(rng.standard_normal((8, 32, 4, 4))) * 3).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert: onnxruntime's integer kernels give exactly the Q/DQ reference (no saturation on any x86)
    reference = run_model(out, {"x": x})[0]
    fused = make_session(out, optimize=True).run(None, {"x": x})[0]
    np.testing.assert_array_equal(fused, reference)
    assert report.details.fusion.kernel_deviation == 0.0


def test_per_tensor_option(rng: np.random.Generator) -> None:
    model = _cnn(rng)
    x = rng.standard_normal((8, 2, 8, 8)).astype(np.float32)
    out, _ = apply_pass(Int8(per_channel=False), model, _ctx(model, x))
    assert _initializer(out, "w1_s").shape == () and not _node(out, "w1_DQ").attribute


def test_conv_transpose_uses_axis_one(rng: np.random.Generator) -> None:
    # setup: weight [C_in=3, C_out=5, 2, 2]
    w = rng.standard_normal((3, 5, 2, 2)).astype(np.float32)
    w[:, 3] *= 20.0  # one output channel with a much larger range: per-channel must follow axis 1
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="deconv", kernel_shape=[2, 2],
                              strides=[2, 2])]
    model = _model(nodes, {"w": w, "b": rng.standard_normal(5)}, ["N", 3, 4, 4], ["N", 5, 8, 8])
    x = rng.standard_normal((8, 3, 4, 4)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(reduce_range=True), model, _ctx(model, x))
    # assert
    assert helper.get_attribute_value(_node(out, "w_DQ").attribute[0]) == 1
    np.testing.assert_allclose(_initializer(out, "w_s"), np.abs(w).max(axis=(0, 2, 3)) / 63, rtol=1e-6)
    assert _initializer(out, "deconv_b_s").shape == (5,)
    scale = _initializer(out, "w_s").reshape(1, 5, 1, 1)
    error = np.abs(_initializer(out, "w_q") * scale - w)
    assert np.all(error <= scale / 2 + 1e-7)  # every output channel keeps its own resolution
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)


def test_grouped_conv_transpose_falls_back_to_per_tensor(rng: np.random.Generator) -> None:
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv", kernel_shape=[1, 1], group=2)]
    model = _model(nodes, {"w": rng.standard_normal((4, 3, 1, 1))}, ["N", 4, 3, 3], ["N", 6, 3, 3])
    out, report = apply_pass(Int8(), model, _ctx(model, rng.standard_normal((4, 4, 3, 3)).astype(np.float32)))
    assert _initializer(out, "w_s").shape == ()
    assert any("grouped ConvTranspose" in note for note in report.notes)


def test_weight_shared_by_two_convs_is_quantized_for_both(rng: np.random.Generator) -> None:
    # setup: two layers read the same weight and bias initializers; a residual Add joins them
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c1"], name="conv_a", kernel_shape=[1, 1]),
        helper.make_node("Conv", ["c1", "w", "b"], ["c2"], name="conv_b", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c1", "c2"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "w3"], ["y"], name="conv_c", kernel_shape=[1, 1]),
    ]
    inits = {"w": rng.standard_normal((3, 3, 1, 1)), "b": rng.standard_normal(3),
             "w3": rng.standard_normal((2, 3, 1, 1))}
    model = _model(nodes, inits, ["N", 3, 4, 4], ["N", 2, 4, 4])
    x = rng.standard_normal((16, 3, 4, 4)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert: one int8 copy of the weight, read by a DQ per layer; no float copy left
    inits = {i.name for i in out.graph.initializer}
    assert "w" not in inits and "w_q" in inits
    readers = [n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "w_q"]
    assert len(readers) == 2
    weight_dq = {_producer(out, _node(out, name).input[1]).name for name in ("conv_a", "conv_b")}
    assert weight_dq == {r.name for r in readers}
    assert report.details.fusion.integer_kernels == {"QLinearAdd": 1, "QLinearConv": 3}
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)


def test_relu_after_conv_in_symmetric_mode_is_kept_and_exact(rng: np.random.Generator) -> None:
    # setup
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", kernel_shape=[1, 1])]
    model = _model(nodes, {"w": rng.standard_normal((4, 3, 1, 1)), "w2": rng.standard_normal((2, 4, 1, 1))},
                   ["N", 3, 5, 5], ["N", 2, 5, 5])
    x = rng.standard_normal((16, 3, 5, 5)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(activation_type="int8"), model, _ctx(model, x))
    # assert: Conv output quantized with zero point 0, Relu kept between DQ and Q with the same scale
    assert op_counts(out)["Relu"] == 1 and report.details.relu_clip_as_clamp == []
    relu = _node(out, "relu")
    assert _producer(out, relu.input[0]).op_type == "DequantizeLinear"
    assert _qparams(out, "r_Q") == _qparams(out, "c_Q")
    zero = _initializer(out, _node(out, "c_Q").input[2])
    assert zero.dtype == np.int8 and zero == 0
    # Relu of a dequantized symmetric value is representable: the Relu output equals the clamped Conv output
    probe = onnx.ModelProto()
    probe.CopyFrom(out)
    probe.graph.output.extend([onnx.ValueInfoProto(name="c_dq"), onnx.ValueInfoProto(name="r_dq")])
    c_dq, r_dq = run_model(probe, {"x": x})[1:]
    np.testing.assert_array_equal(r_dq, np.maximum(c_dq, 0))


@pytest.mark.parametrize("activation_type", ["uint8", "int8"])
def test_fan_out_fuses_every_layer(activation_type: str, rng: np.random.Generator) -> None:
    # setup: a Relu output read by two Convs (a residual block's input)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="branch", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["r0", "w2"], ["c2"], name="shortcut", kernel_shape=[1, 1]),
             helper.make_node("Add", ["c1", "c2"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "w3"], ["y"], name="head", kernel_shape=[1, 1])]
    inits = {f"w{i}": rng.standard_normal((3, 3, 1, 1)) for i in range(4)}
    model = _model(nodes, inits, ["N", 3, 4, 4], ["N", 3, 4, 4])
    x = rng.standard_normal((16, 3, 4, 4)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(activation_type=activation_type), model, _ctx(model, x))
    # assert: int8 pairs are dedicated per consumer (onnxruntime turns them into uint8 one by one)
    fusion = report.details.fusion
    assert fusion.integer_layers == fusion.layers == 4 and fusion.integer_kernels["QLinearAdd"] == 1
    relu_pairs = sum(1 for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r0")
    assert relu_pairs == (2 if activation_type == "int8" else 1)
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)


def test_bias_of_a_vanished_channel_fits_int32(rng: np.random.Generator) -> None:
    # setup: channel 1's weights are ~0 (a BatchNorm gamma near 0 folded in), its bias is not
    w = rng.standard_normal((3, 3, 1, 1)).astype(np.float32)
    w[1] = 1e-12
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[1, 1])]
    model = _model(nodes, {"w": w, "b": np.array([0.1, 2.0, -0.3], np.float32)}, ["N", 3, 4, 4], ["N", 3, 4, 4])
    x = rng.standard_normal((16, 3, 4, 4)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert: no clipped bias; the channel outputs its bias
    assert not any("bias exceeds" in note for note in report.notes)
    assert np.abs(_initializer(out, "conv_b_q").astype(np.int64)).max() <= 1.001 * 2**30  # half the int32 range
    y = run_model(out, {"x": x})[0]
    np.testing.assert_allclose(y[:, 1], 2.0, atol=0.05)


def test_clip_folds_only_when_its_lower_bound_is_zero(rng: np.random.Generator) -> None:
    # setup: Conv -> Clip(0, 6) and Conv -> Clip(-1, 1), each followed by another Conv
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Clip", ["c1", "zero", "six"], ["k1"], name="relu6"),
             helper.make_node("Conv", ["k1", "w"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             helper.make_node("Clip", ["c2", "minus_one", "one"], ["k2"], name="clip"),
             helper.make_node("Conv", ["k2", "w"], ["y"], name="conv3", kernel_shape=[1, 1])]
    inits = {"w": rng.standard_normal((3, 3, 1, 1)), "zero": np.array(0.0, np.float32),
             "six": np.array(6.0, np.float32),
             "minus_one": np.array(-1.0, np.float32), "one": np.array(1.0, np.float32)}
    model = _model(nodes, inits, ["N", 3, 4, 4], ["N", 3, 4, 4])
    x = rng.standard_normal((16, 3, 4, 4)).astype(np.float32) * 3
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert
    assert report.details.relu_clip_as_clamp == ["c1"]
    assert op_counts(out)["Clip"] == 2
    assert report.details.fusion.integer_kernels == {"QLinearConv": 3}
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)


def test_prepare_folds_batchnorm_scale_bias_adds_sum_and_matmul_add(rng: np.random.Generator) -> None:
    # setup: Conv -> BatchNorm -> Relu; Conv -> Mul([1, C, 1, 1] scale) -> Add([1, C, 1, 1] bias) (Caffe2);
    # Sum residual; Flatten -> MatMul -> Add
    c = 3
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], name="bn"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("Mul", ["c2", "cs"], ["m2"], name="conv2_scale"),
        helper.make_node("Add", ["m2", "cb"], ["a2"], name="conv2_bias"),
        helper.make_node("Sum", ["a2", "r1"], ["s"], name="residual"),
        helper.make_node("Flatten", ["s"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "wm"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "bm"], ["y"], name="fc_bias"),
    ]
    inits = {"w1": rng.standard_normal((c, c, 1, 1)), "g": rng.uniform(0.5, 1.5, c), "beta": rng.standard_normal(c),
             "mean": rng.standard_normal(c) * 0.1, "var": rng.uniform(0.5, 2.0, c),
             "w2": rng.standard_normal((c, c, 1, 1)), "cs": rng.uniform(0.5, 2.0, (1, c, 1, 1)),
             "cb": rng.standard_normal((1, c, 1, 1)),
             "wm": rng.standard_normal((c * 16, 5)), "bm": rng.standard_normal(5)}
    model = _model(nodes, inits, ["N", c, 4, 4], ["N", 5])
    x = rng.standard_normal((32, c, 4, 4)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert: every float op around the layers is gone into them, and onnxruntime fuses them all
    assert {r.pass_name: r.changes for r in report.prerequisites} == {
        "name-nodes": 0, "fold-batchnorm": 1, "sum-to-add": 1, "fold-conv-mul": 1, "fold-conv-add": 1,
        "matmul-add-to-gemm": 1}
    ops = op_counts(out)
    assert (ops["Conv"], ops["Gemm"], ops["Add"], ops["Relu"]) == (2, 1, 1, 1)
    assert not {"BatchNormalization", "MatMul", "Sum", "Mul"} & set(ops)
    assert report.details.fusion.integer_kernels == {"QGemm": 1, "QLinearAdd": 1, "QLinearConv": 2}
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)


def test_clipping_methods_keep_the_full_range_where_the_quantized_region_ends(rng: np.random.Generator) -> None:
    # setup: heavy-tailed activations; c1 feeds a quantized Conv, c2 only a float Sigmoid
    nodes = [helper.make_node("Conv", ["x", "eye"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["c1", "eye"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["c2"], ["y"], name="sigmoid")]
    model = _model(nodes, {"eye": np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1)}, ["N", 4, 8, 8], ["N", 4, 8, 8])
    x = rng.laplace(size=(64, 4, 8, 8)).astype(np.float32)
    # execute
    _, report = apply_pass(Int8(method="percentile", percentile=99.9), model, _ctx(model, x))
    # assert
    ranges = report.details.ranges
    assert ranges["c1"].clip[1] < 0.8 * ranges["c1"].max  # inside: clipped for resolution
    low, high = ranges["c2"].clip
    step = ranges["c2"].scale
    assert low <= ranges["c2"].min + step and high >= ranges["c2"].max - step  # exit: full range


# -- calibration data -------------------------------------------------------------------------

def test_variable_batch_sizes_give_the_same_ranges(rng: np.random.Generator) -> None:
    # setup: the same 24 samples as one chunk, and as chunks of 1, 3, 7, 13 samples, and batch sizes 1 and 24
    model = _cnn(rng)
    x = rng.standard_normal((24, 2, 8, 8)).astype(np.float32)
    chunks = [{"x": part} for part in np.split(x, [1, 4, 11])]
    # execute
    _, one = apply_pass(Int8(batch_size=24), model, _ctx(model, x))
    _, many = apply_pass(Int8(batch_size=1), model, PassContext(calibration=open_data(chunks, model)))
    # assert
    assert one.details.calibration.samples == many.details.calibration.samples == 24
    assert one.details.ranges == many.details.ranges


def test_calibration_samples_limit(rng: np.random.Generator) -> None:
    model = _cnn(rng)
    x = rng.standard_normal((40, 2, 8, 8)).astype(np.float32)
    _, limited = apply_pass(Int8(calibration_samples=10, batch_size=4), model, _ctx(model, x))
    _, first = apply_pass(Int8(), model, _ctx(model, x[:10]))
    assert limited.details.calibration.samples == 10
    assert limited.details.ranges == first.details.ranges


# -- selection --------------------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "kept_float", "reason"), [
    ({"exclude_ops": ("Gemm",)}, "fc", "excluded by exclude_ops"),
    ({"exclude_nodes": ("conv1",)}, "conv1", "excluded by exclude_nodes"),
    ({"keep_first_last": True}, "conv1", "first/last compute layer kept in float"),
])
def test_exclusions_keep_layers_in_float(setting: dict, kept_float: str, reason: str, rng: np.random.Generator) -> None:
    # setup
    model = _cnn(rng)
    x = rng.standard_normal((8, 2, 8, 8)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(**setting), model, _ctx(model, x))
    # assert: the kept layer reads its float weight directly
    node = _node(out, kept_float)
    assert node.input[1] in {i.name for i in out.graph.initializer}
    assert _initializer(out, node.input[1]).dtype == np.float32
    assert any(s.target == kept_float and reason in s.reason for s in report.skipped)


def test_keep_first_last_leaves_nothing_when_there_are_two_layers(rng: np.random.Generator) -> None:
    model = _cnn(rng)
    x = rng.standard_normal((4, 2, 8, 8)).astype(np.float32)
    out, report = apply_pass(Int8(keep_first_last=True), model, _ctx(model, x))
    assert "QuantizeLinear" not in op_counts(out) and report.changes == 0


def test_model_without_layers_is_left_unchanged(rng: np.random.Generator) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], {}, ["N", 4], ["N", 4])
    out, report = apply_pass(Int8(), model, _ctx(model, rng.standard_normal((4, 4)).astype(np.float32)))
    assert op_counts(out) == {"Relu": 1} and not report.modified
    assert any("no float32 Conv" in note for note in report.notes)


# -- refusals ---------------------------------------------------------------------------------

def test_already_quantized_model_is_refused_and_can_be_requantized(rng: np.random.Generator) -> None:
    # setup
    model = _cnn(rng)
    x = rng.standard_normal((16, 2, 8, 8)).astype(np.float32)
    quantized, _ = apply_pass(Int8(), model, _ctx(model, x))
    # execute / assert: refusal names what it found and the way out
    refusal = r"already quantized \(DequantizeLinear x8, QuantizeLinear x4\).*requantize=true"
    with pytest.raises(PreconditionError, match=refusal):
        apply_pass(Int8(), quantized, _ctx(model, x))
    again, report = apply_pass(Int8(requantize=True), quantized, _ctx(model, x))
    assert op_counts(again) == op_counts(quantized)
    strip = report.prerequisites[0]
    assert strip.pass_name == "strip-qdq" and strip.changes == 4
    assert any("removed 4 Q/DQ pair(s)" in note for note in strip.notes)


def test_requantize_dequantizes_constant_operands(rng: np.random.Generator) -> None:
    # setup: a QDQ model as other tools write it: Q/DQ on x, a uint8 scalar constant behind a DQ
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["kq", "ks", "kz"], ["k"], name="dq_k"),
             helper.make_node("Mul", ["xd", "k"], ["m"], name="mul"),
             helper.make_node("Conv", ["m", "w"], ["y"], name="conv", kernel_shape=[1, 1])]
    inits = {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8), "kq": np.array(200, np.uint8),
             "ks": np.array(0.01, np.float32), "kz": np.array(0, np.uint8), "w": rng.standard_normal((2, 3, 1, 1))}
    model = _model(nodes, inits, ["N", 3, 4, 4], ["N", 2, 4, 4])
    x = rng.standard_normal((16, 3, 4, 4)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(requantize=True), model, _ctx(model, x))
    # assert: the old pair is gone, the constant is 2.0 again, and the graph is quantized afresh
    assert "removed 1 Q/DQ pair(s)" in report.prerequisites[0].notes[0]
    assert report.details.quantized_ops == {"Conv": 1, "Mul": 1}
    mul = _node(out, "mul")
    constant = _producer(out, mul.input[1])
    assert constant.op_type == "DequantizeLinear"
    value = (_initializer(out, constant.input[0]).astype(np.float32) - _initializer(out, constant.input[2])) \
        * _initializer(out, constant.input[1])
    np.testing.assert_allclose(value, 2.0, rtol=1e-2)
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)


def test_integer_kernel_model_is_refused_even_with_requantize() -> None:
    nodes = [helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="mmi")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 2])],
                              [numpy_helper.from_array(np.ones((2, 2), np.uint8), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(PreconditionError, match="integer kernels \\(MatMulInteger\\) cannot be requantized"):
        apply_pass(Int8(requantize=True), model, PassContext(calibration=open_data("random:2", model)))


def _one_conv(rng: np.random.Generator, opset: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[1, 1])]
    return _model(nodes, {"w": rng.standard_normal((2, 3, 1, 1))}, ["N", 3, 2, 2], ["N", 2, 2, 2], opset=opset)


@pytest.mark.parametrize(("per_channel", "opset", "target"), [(True, 11, 13), (True, 9, 13), (False, 9, 10)])
def test_old_opset_is_upgraded_up_front(per_channel: bool, opset: int, target: int, rng: np.random.Generator) -> None:
    # setup: QuantizeLinear exists from opset 10, its per-channel axis from 13
    model = _one_conv(rng, opset=opset)
    ctx = _ctx(model, rng.standard_normal((4, 3, 2, 2)).astype(np.float32))
    # execute
    result = Pipeline([Int8(per_channel=per_channel)]).run(model, ctx)
    # assert
    assert result.model.opset_import[0].version == target and result.reports[0].modified
    assert result.prelude[0].details == {"from": opset, "to": target, "for": "int8"}
    assert result.prelude[0].notes == [f"opset upgraded from {opset} to {target} with the onnx version converter "
                                       f"(int8 needs opset >= {target})"]


def test_nothing_to_quantize_leaves_the_model_unprepared(rng: np.random.Generator) -> None:
    # setup: integer compute only, with unnamed nodes (nothing float32 to quantize)
    nodes = [helper.make_node("Add", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 3])],
                              [numpy_helper.from_array(np.arange(3, dtype=np.int32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.arange(12, dtype=np.int32).reshape(4, 3) - 6
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert: not renamed, not prepared, and said so
    assert [n.name for n in out.graph.node] == ["", ""]
    assert op_counts(out) == {"Add": 1, "Relu": 1} and not report.modified and report.details == {}
    assert report.notes == ["no float32 Conv/ConvTranspose/Gemm/MatMul layer can be quantized; model left unchanged "
                            "(not prepared)"]
    np.testing.assert_array_equal(run_model(out, {"x": x})[0], run_model(model, {"x": x})[0])


@pytest.mark.parametrize(("settings", "message"), [
    ({"batch_size": 0, "max_drop": -1.0}, "batch_size must be >= 1; max_drop must be >= 0"),
    ({"calibration_samples": 0}, "calibration_samples must be >= 1"),
    ({"bins": 8}, "bins must be >= 16"),
    ({"method": "percentile", "percentile": 0.0}, "percentile must be in (50, 100]"),
    ({"percentile": 100.5}, "percentile must be in (50, 100]"),
    ({"exclude_nodes": ("conv1", "nosuch")}, "exclude_nodes: 'nosuch' not found among the model's nodes "
                                             "(conv1, relu1, pool, flatten, fc)"),
    ({"exclude_ops": ("Comv",)}, "exclude_ops: 'Comv' (did you mean 'Conv'?) not found among the op types"),
])
def test_invalid_settings_are_refused(settings: dict, message: str, rng: np.random.Generator) -> None:
    model = _cnn(rng)
    with pytest.raises(PreconditionError, match=re.escape(f"int8: {message}")):
        apply_pass(Int8(**settings), model, _ctx(model, np.zeros((1, 2, 8, 8), np.float32)))


def test_exclude_nodes_accepts_the_names_given_to_unnamed_nodes(rng: np.random.Generator) -> None:
    # setup: two unnamed Convs; the report names them Conv_0 and Conv_1
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["c", "w2"], ["y"], kernel_shape=[1, 1])]
    inits = {"w1": rng.standard_normal((3, 3, 1, 1)), "w2": rng.standard_normal((2, 3, 1, 1))}
    model = _model(nodes, inits, ["N", 3, 2, 2], ["N", 2, 2, 2])
    # execute
    out, report = apply_pass(Int8(exclude_nodes=("Conv_1",)), model,
                             _ctx(model, rng.standard_normal((4, 3, 2, 2)).astype(np.float32)))
    # assert
    assert [(s.target, s.reason) for s in report.skipped] == [("Conv_1", "excluded by exclude_nodes")]
    assert _initializer(out, _node(out, "Conv_1").input[1]).dtype == np.float32


# -- accuracy budget --------------------------------------------------------------------------

def _fragile_mlp(rng: np.random.Generator) -> onnx.ModelProto:
    """fc1's output has one huge channel, so a per-tensor uint8 scale wipes out the small ones that
    alone decide fc2's argmax: quantizing fc2's input destroys agreement."""
    w1 = rng.standard_normal((8, 16)).astype(np.float32) * 0.01
    w1[:, 0] = 0.0
    b1 = np.zeros(16, np.float32)
    b1[0] = 500.0
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    w2[0] = 0.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
             helper.make_node("MatMul", ["a1", "w2"], ["y"], name="fc2")]
    return _model(nodes, {"w1": w1, "b1": b1, "w2": w2}, ["N", 8], ["N", 4])


def test_budget_returns_the_most_sensitive_layer_to_float(rng: np.random.Generator) -> None:
    # setup
    model = _fragile_mlp(rng)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    # execute
    _, plain = apply_pass(Int8(max_drop=100.0), model, _ctx(model, x))
    out, report = apply_pass(Int8(max_drop=1.0), model, _ctx(model, x))
    # assert: per-layer errors reported either way; fc2 (whose input loses the small channels) goes back
    budget = report.details.budget
    assert set(plain.details.budget.layer_nmse) == set(budget.layer_nmse) == {"fc1", "fc2"}
    assert plain.details.budget.steps[0]["drop"] > 1.0 and plain.details.budget.returned_to_float == []
    assert budget.met and budget.returned_to_float[0] == "fc2" and budget.steps[-1]["drop"] <= 1.0
    assert [s["returned"] for s in budget.steps] == [None] + budget.returned_to_float
    assert max(budget.layer_nmse, key=budget.layer_nmse.get) == "fc2"
    assert _initializer(out, _node(out, "fc2").input[1]).dtype == np.float32
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.99


# -- bundled models ---------------------------------------------------------------------------

@pytest.mark.skipif(not BUNDLED_MODELS, reason="no bundled models")
@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_model_size_and_accuracy(name: str) -> None:
    # setup
    model, calib, evaluation = bundled(name)
    ctx = PassContext(calibration=open_data(calib, model))
    with np.load(evaluation) as npz:
        x, labels = npz["input"], npz["label"]
    # execute
    out, report = apply_pass(Int8(), model, ctx)
    # assert
    assert len(out.SerializeToString()) <= 0.3 * len(model.SerializeToString())
    assert report.details.fusion.integer_layers == report.details.fusion.layers
    acc_float = np.mean(run_model(model, {"input": x})[0].argmax(1) == labels)
    acc_int8 = np.mean(run_model(out, {"input": x})[0].argmax(1) == labels)
    acc_fused = np.mean(make_session(out, optimize=True).run(None, {"input": x})[0].argmax(1) == labels)
    assert acc_float - acc_int8 <= 0.005 and acc_float - acc_fused <= 0.005


def test_automatic_weight_range_follows_this_cpu_and_is_reported(rng: np.random.Generator) -> None:
    from onnxopt.hardware import cpu_info

    # setup: reduced 7-bit weights only on x86 without int8 dot-product instructions (saturating int16)
    model = _cnn(rng)
    x = rng.standard_normal((16, 2, 8, 8)).astype(np.float32)
    cpu = cpu_info()
    expected = cpu.family == "x86" and cpu.int8_dot is not True
    # execute
    auto, auto_report = apply_pass(Int8(), model, _ctx(model, x))
    fixed, fixed_report = apply_pass(Int8(reduce_range=not expected), model, _ctx(model, x))
    # assert
    assert auto_report.details.reduce_range.value is expected
    assert any(n.startswith(f"reduce_range={str(expected).lower()}") for n in auto_report.notes)
    assert fixed_report.details.reduce_range is None
    bound = 63 if expected else 127
    assert np.abs(_initializer(auto, "w1_q").astype(np.int32)).max() == bound
    assert np.abs(_initializer(fixed, "w1_q").astype(np.int32)).max() == (127 if expected else 63)


@pytest.mark.parametrize(("cpu", "reduce_range", "saturation"), [
    (("x86_64", False), False, True),   # U8S8 through saturating int16 (vpmaddubsw), full-range weights
    (("x86_64", False), True, False),   # 7-bit weights cannot saturate
    (("x86_64", True), False, False),   # VNNI accumulates in int32
    (("aarch64", None), False, False),  # no int16 path on ARM
])
def test_kernel_deviation_hint_names_saturation_only_where_it_can_happen(
        cpu: tuple, reduce_range: bool, saturation: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import passes.int8.int8 as int8_module
    from onnxopt.hardware import CpuInfo

    monkeypatch.setattr(int8_module, "cpu_info", lambda: CpuInfo(cpu[0], "test", cpu[1], None))
    hint = Int8(reduce_range=reduce_range)._deviation_hint(PassContext(), 12, reduce_range)
    assert ("saturation" in hint) is saturation
    assert saturation or "12 layer(s)" in hint


def test_sequence_typed_tensors_survive_the_pass(rng: np.random.Generator) -> None:
    # setup: a seq(tensor(float)) between two Convs (the working copy once typed it as a tensor)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("SplitToSequence", ["c1"], ["parts"], name="split", axis=1, keepdims=1),
             helper.make_node("ConcatFromSequence", ["parts"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["y"], name="conv2", kernel_shape=[1, 1])]
    model = onnx.shape_inference.infer_shapes(_model(
        nodes, {"w1": rng.standard_normal((4, 2, 1, 1)) * 0.5, "w2": rng.standard_normal((3, 4, 1, 1)) * 0.5},
        ["N", 2, 4, 4], ["N", 3, 4, 4]))
    x = rng.standard_normal((8, 2, 4, 4)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert
    assert report.details.quantized_ops == {"Conv": 2}
    assert next(v for v in out.graph.value_info if v.name == "parts").type.HasField("sequence_type")


@pytest.mark.parametrize(("attrs", "side"), [({"dilations": [2, 2]}, 3),
                                           ({"ceil_mode": 1, "count_include_pad": 1, "pads": [1, 1, 1, 1]}, 5)])
def test_average_pool_without_a_matching_integer_kernel_stays_float(attrs: dict, side: int,
                                                                     rng: np.random.Generator) -> None:
    # setup: QLinearAveragePool has no dilations, and averages ceil-mode windows with padding differently
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("AveragePool", ["r1"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2], **attrs)]
    model = _model(nodes, {"w1": rng.standard_normal((4, 2, 1, 1)) * 0.5}, ["N", 2, 9, 9], ["N", 4, side, side], opset=19)
    x = rng.standard_normal((8, 2, 9, 9)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert
    assert _producer(out, "y").op_type == "AveragePool"
    assert any(s.target == "pool" and "AveragePool with" in s.reason for s in report.skipped)
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.02 * np.linalg.norm(a)


def test_fixed_batch_classifier_softmax_counts_rows_per_sample(rng: np.random.Generator) -> None:
    # setup: a batch of 64 fixed in the graph: 64 rows per run, but one per sample
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], name="probs", axis=-1)]
    model = _model(nodes, {"w": rng.standard_normal((10, 16)) * 0.3, "b": np.zeros(10, np.float32)}, [64, 16], [64, 10])
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, rng.standard_normal((64, 16)).astype(np.float32)))
    # assert
    assert _producer(out, "y").op_type == "Softmax"
    assert any(s.target == "probs" and "1 row(s) per sample" in s.reason for s in report.skipped)


def test_max_pool_at_the_end_keeps_its_input_full_range(rng: np.random.Generator) -> None:
    # setup: heavy tails; the MaxPool output is made of the largest values, which clipping would cut
    nodes = [helper.make_node("Conv", ["x", "eye"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["y"], name="pool", kernel_shape=[4, 4], strides=[4, 4])]
    model = _model(nodes, {"eye": np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1)}, ["N", 4, 8, 8], ["N", 4, 2, 2])
    x = rng.laplace(size=(64, 4, 8, 8)).astype(np.float32)
    # execute
    _, report = apply_pass(Int8(method="percentile", percentile=99.9), model, _ctx(model, x))
    # assert: the pool shares r1's parameters, and r1 keeps its observed maximum
    assert "MaxPool" in report.details.quantized_ops
    r1 = report.details.ranges["r1"]
    assert r1.clip[1] >= r1.max - r1.scale


def test_scale_folds_into_one_of_two_convs_sharing_a_weight(rng: np.random.Generator) -> None:
    # setup: conv1 and conv2 share w; only conv1 is followed by a scalar Mul
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Mul", ["c1", "two"], ["m1"], name="scale"),
             helper.make_node("Conv", ["m1", "w"], ["y"], name="conv2", kernel_shape=[1, 1])]
    model = _model(nodes, {"w": rng.standard_normal((3, 3, 1, 1)) * 0.5, "two": np.array(2.0, np.float32)},
                   ["N", 3, 4, 4], ["N", 3, 4, 4])
    x = rng.standard_normal((16, 3, 4, 4)).astype(np.float32)
    # execute
    out, report = apply_pass(Int8(), model, _ctx(model, x))
    # assert: conv1 gets a doubled copy of the weight, conv2 keeps the original values
    conv_mul = next(r for r in report.prerequisites if r.pass_name == "fold-conv-mul")
    assert conv_mul.changes == 1 and "Mul" not in op_counts(out)
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.03 * np.linalg.norm(a)


def test_folded_constants_never_take_an_existing_name(rng: np.random.Generator) -> None:
    # setup: another Conv's weight already has the name the scale fold would give conv's weight
    nodes = [helper.make_node("Conv", ["x", "conv_weight_scaled"], ["c0"], name="conv0", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["c0", "w"], ["c1"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("Mul", ["c1", "s"], ["y"], name="scale")]
    model = _model(nodes, {"conv_weight_scaled": rng.standard_normal((3, 3, 1, 1)), "w": rng.standard_normal((3, 3, 1, 1)),
                           "s": rng.uniform(0.5, 2, (1, 3, 1, 1))}, ["N", 3, 4, 4], ["N", 3, 4, 4])
    x = rng.standard_normal((8, 3, 4, 4)).astype(np.float32)
    # execute
    out, _ = apply_pass(Int8(), model, _ctx(model, x))
    # assert
    a, b = run_model(model, {"x": x})[0], run_model(out, {"x": x})[0]
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)


def test_op_table_is_consistent_with_the_core_op_families() -> None:
    # the sets the plan and the fusion report derive from the table
    # assert: every kernel is one the core knows as quantized; every layer has a weight axis and a kernel
    assert all(rule.kernels <= INTEGER_OPS for rule in OPS.values())
    assert COMPUTE_OPS == {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    assert all(OPS[op].weight_axis is not None and OPS[op].kernels for op in COMPUTE_OPS)
    assert FLOAT_COMPUTE_OPS == COMPUTE_OPS | {"FusedConv", "FusedGemm", "FusedMatMul", "NhwcConv"}
    assert INTEGER_LAYER_OPS == {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger",
                                 "MatMulInteger", "QLinearConvTranspose", "DynamicQuantizeMatMul"}
    assert not any(rule.float_output for rule in OPS.values() if rule.role is not Role.COMPUTE)


def test_typed_details_serialise_to_the_report_json(rng: np.random.Generator) -> None:
    # setup
    model = _one_conv(rng, opset=13)
    ctx = _ctx(model, rng.standard_normal((4, 3, 2, 2)).astype(np.float32))
    # execute: reduce_range left to the pass, so its decision is a detail too
    _, report = apply_pass(Int8(), model, ctx)
    as_json = json.loads(json.dumps(report.to_dict()))["details"]
    # assert: the JSON keys in the report's order, the nested dataclasses as plain values
    assert list(as_json) == ["method", "activation_type", "per_channel", "calibration", "quantized_ops", "layers",
                             "qdq_pairs", "int8_weights", "int32_biases", "relu_clip_as_clamp", "float_outputs",
                             "ranges", "fusion", "reduce_range"]
    assert as_json["calibration"] == {"samples": 4, "source": report.details.calibration.source,
                                      "observed_tensors": report.details.calibration.observed_tensors}
    assert as_json["fusion"]["layers"] == report.details.fusion.layers == 1
    assert as_json["reduce_range"]["value"] is report.details.reduce_range.value
