"""The binary-weight pass (passes/binary.py and helpers) and its inverse, the unpack pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import BUNDLED_MODELS, apply_pass, bundled, op_counts, run_model
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import open_data
from onnxopt.errors import PreconditionError
from onnxopt.graph import import_graph
from onnxopt.pass_base import PassContext, PassReport
from onnxopt.pipeline import Pipeline
from passes.binary.alpha import LEVELS, ScaleFormat, decode_log, encode_log
from passes.binary.hwgq import lloyd_uniform_step
from passes.binary.layers import select_layers
from passes.binary.pack import pack_signs, unpack_signs
from passes.binary import BinaryWeights
from passes.binary import UnpackBinary

#: ops that decode the bit stream, once per run (shared by every packed layer)
UNPACK_STREAM = {"BitShift": 2, "Cast": 1, "Where": 1, "Reshape": 1, "Split": 1}
#: ops of one 1-bit layer's unpacking subgraph, by scale storage (uint8 codes add Cast + Pow + Mul)
UNPACK_LAYER = {"float32": {"Reshape": 1, "Mul": 1}, "uint8": {"Reshape": 1, "Mul": 2, "Cast": 1, "Pow": 1}}


def _model(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], x_shape: list[object],
           y_shape: list[object], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _cnn(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv(3→5) Relu Conv(5→15, stride 2) Relu Conv(15→15, 1x1, group 3) Relu Flatten MatMul Relu Gemm.

    conv2 (675 weights) and conv3 (75) do not fill their last byte of bits; fc1 (5760) does.
    """
    weights = {
        "w1": rng.standard_normal((5, 3, 3, 3)).astype(np.float32) * 0.3,
        "w2": rng.standard_normal((15, 5, 3, 3)).astype(np.float32) * 0.2,
        "b2": rng.standard_normal(15).astype(np.float32) * 0.1,
        "w3": rng.standard_normal((15, 5, 1, 1)).astype(np.float32) * 0.3,
        "w4": rng.standard_normal((240, 24)).astype(np.float32) * 0.1,
        "w5": rng.standard_normal((10, 24)).astype(np.float32) * 0.3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["a2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["a3"], name="conv3", group=3),
        helper.make_node("Relu", ["a3"], ["r3"]),
        helper.make_node("Flatten", ["r3"], ["f"]),
        helper.make_node("MatMul", ["f", "w4"], ["m"], name="fc1"),
        helper.make_node("Relu", ["m"], ["r4"]),
        helper.make_node("Gemm", ["r4", "w5"], ["y"], name="fc2", transB=1),
    ]
    return _model(nodes, weights, ["N", 3, 8, 8], ["N", 10])


def _inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, 3, 8, 8)).astype(np.float32)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# -- bit packing ----------------------------------------------------------------------------------

def test_bit_order_is_little_endian_within_a_byte() -> None:
    # setup: flat elements 0, 3, 4, 5 and 8 are +1
    signs = np.array([1, -1, -1, 1, 1, 1, -1, -1, 1], np.int8)
    # execute
    packed = pack_signs(signs)
    # assert: bit j of byte i is element 8i+j; the last byte is padded with zeros
    assert packed.dtype == np.uint8 and packed.shape == (2, 1)
    assert packed.ravel().tolist() == [0b00111001, 0b00000001]
    np.testing.assert_array_equal(unpack_signs(packed, signs.shape), signs)


def _with_zero_channel(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` with output channel 0 of weight ``name`` all zeros (its scale is exactly 0)."""
    index = [t.name for t in model.graph.initializer].index(name)
    w = numpy_helper.to_array(model.graph.initializer[index]).copy()
    w[0] = 0.0
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(w, name))
    return model


@pytest.mark.parametrize("settings", [
    {"bits": 1, "alpha_dtype": "float32"}, {"bits": 2, "alpha_dtype": "float32"}, {"alpha_dtype": "float16"},
    {"bits": 2, "hwgq": True}, {"bits": 1, "alpha_dtype": "uint8"}, {"bits": 2, "alpha_dtype": "uint8"}])
@pytest.mark.parametrize("calibrated", [False, True])
def test_unpack_of_packed_equals_binarised_float_model(rng: np.random.Generator, settings: dict[str, object],
                                                       calibrated: bool) -> None:
    # setup
    model = _cnn(rng)
    x = _inputs(rng, 64)
    ctx = PassContext(calibration=open_data([{"x": x}], model)) if calibrated else PassContext()
    settings = {**settings, "min_weights": 0}
    # execute
    packed, _ = apply_pass(BinaryWeights(**settings), model, ctx)
    unpacked, unpack_report = apply_pass(UnpackBinary(), packed)
    binarised, _ = apply_pass(BinaryWeights(pack=False, **settings), model, ctx)
    # assert: the same float weights bit for bit, and the same outputs
    assert unpack_report.changes == 3
    assert op_counts(unpacked) == op_counts(model) == op_counts(binarised)
    got, want = _weights(unpacked), _weights(binarised)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    feeds = {"x": x[:8]}
    out_packed, out_unpacked = run_model(packed, feeds)[0], run_model(unpacked, feeds)[0]
    np.testing.assert_array_equal(out_packed, out_unpacked)
    np.testing.assert_array_equal(out_unpacked, run_model(binarised, feeds)[0])


def test_plain_binarisation_is_mean_abs_times_sign(rng: np.random.Generator) -> None:
    # setup: a zero weight must binarise to +alpha
    model = _cnn(rng)
    w2 = _weights(model)["w2"].copy()
    w2[0, 0, 0, 0] = 0.0
    model.graph.initializer[[t.name for t in model.graph.initializer].index("w2")].CopyFrom(
        numpy_helper.from_array(w2, "w2"))
    # execute
    out, report = apply_pass(BinaryWeights(min_weights=0, pack=False, alpha_dtype="float32"), model)
    # assert
    alpha = np.abs(w2.astype(np.float64)).mean(axis=(1, 2, 3)).astype(np.float32)
    expected = alpha[:, None, None, None] * np.where(w2 >= 0, 1, -1).astype(np.float32)
    np.testing.assert_array_equal(_weights(out)["w2"], expected)
    assert _weights(out)["w2"][0, 0, 0, 0] == alpha[0] > 0
    assert report.details["refit"].startswith("not run (no calibration data)")


@pytest.mark.parametrize(("channels", "k", "alpha_dtype"), [
    (16, 256, "float32"), (32, 576, "float32"), (8, 1152, "float32"), (16, 256, "float16"),
    (16, 256, "uint8"), (32, 576, "uint8"), (64, 144, "uint8")])
def test_per_layer_bytes_match_the_formula(channels: int, k: int, alpha_dtype: str) -> None:
    # setup: Gemm → MatMul(K → channels) → Gemm, so the middle layer is packed
    rng = np.random.default_rng(1)
    weights = {"w0": rng.standard_normal((4, k)).astype(np.float32), "w": rng.standard_normal((k, channels)).astype(np.float32),
               "w9": rng.standard_normal((channels, 3)).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w0"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "w"], ["m"], name="middle"),
             helper.make_node("Gemm", ["m", "w9"], ["y"], name="last")]
    model = _model(nodes, weights, ["N", 4], ["N", 3])
    scale_bits = {"float32": 32, "float16": 16, "uint8": 8}[alpha_dtype]
    header = 8 if alpha_dtype == "uint8" else 0  # the uint8 codes' two float32 scalars per layer
    # execute
    out, report = apply_pass(BinaryWeights(alpha_dtype=alpha_dtype), model)
    # assert: bytes = channels·(K/8 + scale bytes) (+ 8); ratio 32K/(K + scale bits) up to those 8 bytes
    (row,) = report.details["layers"]
    assert row["k"] == k and row["channels"] == channels
    assert row["packed_bytes"] == channels * (k // 8 + scale_bits // 8) + header
    assert row["compression"] == pytest.approx(4 * channels * k / row["packed_bytes"], abs=5e-4)
    assert row["compression"] == pytest.approx(32 * k / (k + scale_bits), rel=1e-3 + header / row["packed_bytes"])
    bits = _weights(out)["binary/signs.bits"]
    assert bits.dtype == np.uint8 and bits.size == k * channels // 8
    if alpha_dtype == "uint8":
        assert _weights(out)["b0/a.c"].dtype == np.uint8


# -- file size ------------------------------------------------------------------------------------

def _chain(layers: int, width: int = 64) -> onnx.ModelProto:
    """``layers`` MatMul+Relu of ``width`` → ``width`` with long (transformer-like) weight names."""
    rng = np.random.default_rng(7)
    names = [f"encoder.layers.{i}.feed_forward.output_projection.weight" for i in range(layers)]
    weights = {name: rng.standard_normal((width, width)).astype(np.float32) / 8 for name in names}
    nodes, x = [], "x"
    for i, name in enumerate(names):
        nodes += [helper.make_node("MatMul", [x, name], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}" if i < layers - 1 else "y"], name=f"relu{i}")]
        x = f"r{i}"
    return _model(nodes, weights, ["N", width], ["N", width])


def _structure_bytes(model: onnx.ModelProto) -> int:
    """Serialized bytes less the initializers' payloads: names, nodes, dims, value_info."""
    return model.ByteSize() - sum(len(t.raw_data) for t in model.graph.initializer)


@pytest.mark.parametrize(("alpha_dtype", "bound"), [("float32", 110), ("uint8", 260)])
def test_serialized_overhead_per_packed_layer_is_pinned(alpha_dtype: str, bound: int) -> None:
    # setup: 10 layers, the 8 middle ones packable; packing 4 more layers costs 4 times the marginal
    # overhead (the bit-stream decoding is paid once per model and cancels out)
    model = _chain(10)
    settings = {"alpha_dtype": alpha_dtype, "min_weights": 0}
    # execute
    all_8, report = apply_pass(BinaryWeights(**settings), model)
    only_4, _ = apply_pass(BinaryWeights(exclude_nodes=("mm1", "mm2", "mm3", "mm4"), **settings), model)
    # assert: what one more packed layer adds to the file beyond its bit and scale bytes, net of the
    # float initializer's header it replaces (measured 90 bytes with float32 scales, 235 with uint8).
    # float32: a Reshape (~45 bytes with names like "b3/b.s") and a Mul (~80: its output keeps the
    # weight's name, which the dropped initializer held before), the scale initializer's header, its
    # Split output name; uint8 adds Cast, Pow and Mul (~35 bytes each) and the codes', ratio's and
    # unit's headers. The bounds leave ~20 bytes for longer indices. Nothing grows with the weight's
    # name, and there is no value_info. The version before (per-layer bit decoding, names under
    # "<w>/binary0/", value_info for every intermediate) added 2,619 (float32) and 3,632 (uint8)
    # bytes per layer here.
    assert len(report.details["layers"]) == 8
    per_layer = (_structure_bytes(all_8) - _structure_bytes(only_4)) / 4
    assert 0 < per_layer < bound
    assert not {v.name for v in all_8.graph.value_info} - {v.name for v in model.graph.value_info}


def test_unpacking_tensors_carry_no_value_info_and_inference_types_the_weights(rng: np.random.Generator) -> None:
    # execute
    packed, _ = apply_pass(BinaryWeights(min_weights=0, bits=2), _cnn(rng))
    # assert: the file holds no value_info, the full checker passes (apply_pass), and strict shape
    # inference gives each rebuilt weight its float dtype and shape
    assert len(packed.graph.value_info) == 0
    inferred = onnx.shape_inference.infer_shapes(packed, check_type=True, strict_mode=True, data_prop=True)
    types = {v.name: v.type.tensor_type for v in inferred.graph.value_info}
    for name, shape in {"w2": [15, 5, 3, 3], "w3": [15, 5, 1, 1], "w4": [240, 24]}.items():
        assert types[name].elem_type == TensorProto.FLOAT
        assert [d.dim_value for d in types[name].shape.dim] == shape


@pytest.mark.parametrize("opset", [11, 12, 13, 18, 21])
@pytest.mark.parametrize("bits", [1, 2])
def test_unpacking_across_opsets_is_exact_and_folded(rng: np.random.Generator, opset: int, bits: int) -> None:
    # setup: Split and ReduceSum take their sizes/axes as attributes before opset 13, as inputs after
    model = _cnn(rng)
    model.opset_import[0].version = opset
    x = {"x": _inputs(rng, 4)}
    # execute
    packed, report = apply_pass(BinaryWeights(min_weights=0, bits=bits), model)
    unpacked, _ = apply_pass(UnpackBinary(), packed)
    binarised, _ = apply_pass(BinaryWeights(min_weights=0, bits=bits, pack=False), model)
    # assert
    assert report.details["onnxruntime_unpack_nodes_left"] == 0
    got, want = _weights(unpacked), _weights(binarised)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_array_equal(run_model(packed, x)[0], run_model(unpacked, x)[0])


def _legacy_packed(weight: np.ndarray, alpha: np.ndarray) -> onnx.ModelProto:
    """``y = x @ W`` with ``W = alpha · sign`` unpacked the way versions before the shared bit stream
    wrote it: per layer BitShift/BitShift/Cast/Sub/Mul/Reshape/Mul under ``<w>/binary0/``."""
    p = "w/binary0"
    inits = {f"{p}/bits": pack_signs(np.where(weight >= 0, 1, -1)), "binary/shifts": np.arange(7, -1, -1, dtype=np.uint8),
             "binary/seven": np.array([7], np.uint8), "binary/half_float32": np.array(0.5, np.float32),
             "binary/two_float32": np.array(2, np.float32), f"{p}/shape": np.array(weight.shape, np.int64),
             f"{p}/alpha": alpha.reshape(1, -1).astype(np.float32)}
    nodes = [helper.make_node("BitShift", [f"{p}/bits", "binary/shifts"], [f"{p}/shl/out"], name=f"{p}/shl", direction="LEFT"),
             helper.make_node("BitShift", [f"{p}/shl/out", "binary/seven"], [f"{p}/shr/out"], name=f"{p}/shr", direction="RIGHT"),
             helper.make_node("Cast", [f"{p}/shr/out"], [f"{p}/cast/out"], name=f"{p}/cast", to=TensorProto.FLOAT),
             helper.make_node("Sub", [f"{p}/cast/out", "binary/half_float32"], [f"{p}/sub/out"], name=f"{p}/sub"),
             helper.make_node("Mul", [f"{p}/sub/out", "binary/two_float32"], [f"{p}/mul2/out"], name=f"{p}/mul2"),
             helper.make_node("Reshape", [f"{p}/mul2/out", f"{p}/shape"], [f"{p}/reshape/out"], name=f"{p}/reshape"),
             helper.make_node("Mul", [f"{p}/reshape/out", f"{p}/alpha"], ["w"], name=f"{p}/scale"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return _model(nodes, inits, ["N", weight.shape[0]], ["N", weight.shape[1]])


def test_unpack_reads_models_packed_by_earlier_versions(rng: np.random.Generator) -> None:
    # setup
    weight = rng.standard_normal((16, 8)).astype(np.float32)
    alpha = np.abs(weight).mean(axis=0).astype(np.float32)
    model = _legacy_packed(weight, alpha)
    x = {"x": rng.standard_normal((3, 16)).astype(np.float32)}
    # execute
    unpacked, report = apply_pass(UnpackBinary(), model)
    # assert: unpack goes by the ops (a constant subgraph with a BitShift), not by names
    assert report.details["unpacked"] == ["w"] and op_counts(unpacked) == {"MatMul": 1}
    np.testing.assert_array_equal(_weights(unpacked)["w"], alpha[None, :] * np.where(weight >= 0, 1, -1).astype(np.float32))
    np.testing.assert_array_equal(run_model(unpacked, x)[0], run_model(model, x)[0])


# -- uint8 scales ---------------------------------------------------------------------------------

@pytest.mark.parametrize("alphas", [
    np.exp(np.random.default_rng(3).uniform(np.log(1e-4), np.log(10.0), 200)),  # wide log range
    np.r_[0.0, 0.0, np.random.default_rng(4).uniform(0.01, 0.02, 30)],  # zero scales among narrow ones
    np.full(12, 0.0371),  # all equal
    np.zeros(5),  # all zero
])
def test_uint8_scales_decode_within_half_a_step_in_log_space(alphas: np.ndarray) -> None:
    # execute
    coded = encode_log(alphas)
    (decoded,) = decode_log([coded], np.dtype(np.float32))
    # assert: zero stays exactly zero; every other scale within step/2 in log space (+ float32
    # rounding); the smallest and largest nonzero scale take codes 1 and 255
    zero = alphas == 0
    assert coded.codes.dtype == np.uint8 and decoded.dtype == np.float32
    assert (coded.codes[zero] == 0).all() and (decoded[zero] == 0).all()
    if zero.all():
        return
    error = np.abs(np.log(decoded[~zero].astype(np.float64)) - np.log(alphas[~zero]))
    assert error.max() <= coded.step / 2 + 1e-6
    assert coded.codes[~zero].min() == 1
    if np.ptp(alphas[~zero]) > 0:
        assert coded.codes.max() == LEVELS
        assert coded.step == pytest.approx((np.log(alphas[~zero]).max() - np.log(alphas[~zero]).min()) / (LEVELS - 1), rel=1e-5)
    else:
        assert coded.ratio == 1 and (coded.codes[~zero] == 1).all()
    np.testing.assert_allclose(decoded, coded.unit * np.power(coded.ratio, coded.codes.astype(np.float64)) * ~zero, rtol=1e-6)


def test_uint8_storage_flips_the_signs_of_negative_scales() -> None:
    # setup: two planes, channel 1 of plane 0 with a negative scale
    alphas = np.array([[0.5, -0.25, 0.125], [0.1, 0.05, 0.02]])
    signs = np.random.default_rng(5).choice(np.array([-1, 1], np.int8), size=(2, 3, 7))
    # execute
    decoded, stored, codes = ScaleFormat.of("uint8", np.dtype(np.float32)).store(alphas, signs)
    # assert: positive stored scales, the same weights up to the scale quantization
    assert codes is not None and len(codes) == 2 and (decoded > 0).all()
    np.testing.assert_array_equal(stored[0, 1], -signs[0, 1])
    np.testing.assert_array_equal(np.delete(stored, 1, axis=1)[0], np.delete(signs, 1, axis=1)[0])
    np.testing.assert_allclose(decoded[:, :, None] * stored, alphas[:, :, None] * signs, rtol=max(c.step for c in codes))


@pytest.mark.parametrize("bits", [1, 2])
def test_uint8_zero_channel_is_rebuilt_exactly_and_folded(rng: np.random.Generator, bits: int) -> None:
    # setup: conv2's channel 0 is all zeros, so its scale is 0 (code 0)
    model = _with_zero_channel(_cnn(rng), "w2")
    x = {"x": _inputs(rng, 4)}
    # execute
    packed, report = apply_pass(BinaryWeights(min_weights=0, bits=bits, alpha_dtype="uint8"), model)
    unpacked, _ = apply_pass(UnpackBinary(), packed)
    # assert: the zero guard (Sign) only in the layer with a zero scale (both planes share it),
    # folded; the channel stays 0
    assert op_counts(packed)["Sign"] == 1
    assert report.details["onnxruntime_unpack_nodes_left"] == 0
    w2 = _weights(unpacked)["w2"]
    assert (w2[0] == 0).all() and (w2[1:] != 0).all()
    np.testing.assert_array_equal(run_model(packed, x)[0], run_model(unpacked, x)[0])


@pytest.mark.parametrize("alpha_dtype", ["float32", "uint8"])
def test_packed_layer_structure_and_defaults_keep_first_and_last_float(rng: np.random.Generator, alpha_dtype: str) -> None:
    # setup
    model = _cnn(rng)
    # execute
    out, report = apply_pass(BinaryWeights(min_weights=0, alpha_dtype=alpha_dtype), model)
    # assert: conv2, conv3, fc1 packed (3 unpacking subgraphs on one shared bit stream);
    # conv1 (first) and fc2 (last) stay float
    weights = _weights(out)
    assert {"w1", "w5"} <= weights.keys() and not {"w2", "w3", "w4"} & weights.keys()
    assert weights["w1"].dtype == weights["w5"].dtype == np.float32
    expected = dict(op_counts(model))
    for op, n in UNPACK_STREAM.items():
        expected[op] = expected.get(op, 0) + n
    for op, n in UNPACK_LAYER[alpha_dtype].items():
        expected[op] = expected.get(op, 0) + 3 * n
    assert op_counts(out) == expected
    # the stream holds the 675 + 75 + 5760 signs without gaps, padded to whole bytes at its end
    assert weights["binary/signs.bits"].size == -(-(675 + 75 + 5760) // 8)
    assert weights["binary/signs.n"].tolist() == [675, 75, 5760, 2]
    assert [row["unpack_prefix"] for row in report.details["layers"]] == ["b0/", "b1/", "b2/"]
    skipped = {s.target: s.reason for s in report.skipped}
    assert "first compute layer" in skipped["Conv 'conv1'"] and "last compute layer" in skipped["Gemm 'fc2'"]
    assert [o.name for o in out.graph.output] == ["y"]


def test_first_and_last_can_be_binarised_too(rng: np.random.Generator) -> None:
    # setup
    model = _cnn(rng)
    # execute
    out, report = apply_pass(BinaryWeights(min_weights=0, keep_first=False, keep_last=False), model)
    # assert
    assert len(report.details["layers"]) == 5
    assert op_counts(out)["BitShift"] == 2
    assert not {"w1", "w2", "w3", "w4", "w5"} & _weights(out).keys()


def test_two_bit_planes_structure_and_error(rng: np.random.Generator) -> None:
    # setup
    model = _cnn(rng)
    x = {"x": _inputs(rng, 16)}
    # execute
    one, _ = apply_pass(BinaryWeights(min_weights=0, pack=False), model)
    two, report = apply_pass(BinaryWeights(min_weights=0, bits=2, alpha_dtype="float32"), model)
    coded, coded_report = apply_pass(BinaryWeights(min_weights=0, bits=2, alpha_dtype="uint8"), model)
    # assert: the two planes stacked and summed per layer (each with its own scales), and a closer model
    counts = op_counts(two)
    assert counts["BitShift"] == 2 and counts["ReduceSum"] == 3 and op_counts(coded)["Pow"] == 3
    assert all(row["packed_bytes"] == -(-2 * row["channels"] * row["k"] // 8) + 2 * 4 * row["channels"]
               for row in report.details["layers"])
    assert all(row["packed_bytes"] == -(-2 * row["channels"] * row["k"] // 8) + 2 * (row["channels"] + 8)
               for row in coded_report.details["layers"])
    ref = run_model(model, x)[0]
    assert np.abs(run_model(two, x)[0] - ref).mean() < np.abs(run_model(one, x)[0] - ref).mean()


@pytest.mark.parametrize("setting", [{"exclude_nodes": ("conv2",)}, {"min_weights": 700}, {"op_types": ("Gemm",)},
                                     {"min_channel_weights": 46}])
def test_exclusions_are_skipped_with_reasons(rng: np.random.Generator, setting: dict[str, object]) -> None:
    # setup
    model = _cnn(rng)
    # execute
    out, report = apply_pass(BinaryWeights(**setting), model)
    # assert: conv2 (675 weights, 45 per output channel) stays float, with a reason when it was looked at
    assert "w2" in _weights(out)
    if "op_types" not in setting:
        assert "Conv 'conv2'" in {s.target for s in report.skipped}
    if "min_channel_weights" in setting:
        assert [row["node"] for row in report.details["layers"]] == ["fc1"]
        assert "45 weights per output channel" in {s.target: s.reason for s in report.skipped}["Conv 'conv2'"]


@pytest.mark.parametrize("alpha_dtype", ["float32", "uint8"])
def test_refit_lowers_every_layer_error_and_output_error(rng: np.random.Generator, alpha_dtype: str) -> None:
    # setup
    model = _cnn(rng)
    calib, held_out = _inputs(rng, 128), {"x": _inputs(rng, 64)}
    ctx = PassContext(calibration=open_data([{"x": calib}], model))
    # execute
    plain, _ = apply_pass(BinaryWeights(min_weights=0, alpha_dtype=alpha_dtype), model)
    refit, report = apply_pass(BinaryWeights(min_weights=0, alpha_dtype=alpha_dtype), model, ctx)
    # assert
    fits = report.details["refit_layers"]
    assert [f["layer"] for f in fits] == ["conv2", "conv3", "fc1"]
    assert all(f["error_after"] < f["error_before"] and not f["kept_plain"] for f in fits)
    ref = run_model(model, held_out)[0]
    assert np.square(run_model(refit, held_out)[0] - ref).mean() < np.square(run_model(plain, held_out)[0] - ref).mean()


@pytest.mark.parametrize("settings", [{"alpha_dtype": "float32"}, {"alpha_dtype": "float16"},
                                      {"alpha_dtype": "uint8"}, {"alpha_dtype": "uint8", "bits": 2}])
def test_onnxruntime_folds_the_unpacking(rng: np.random.Generator, settings: dict[str, object]) -> None:
    # execute
    _, report = apply_pass(BinaryWeights(min_weights=0, **settings), _cnn(rng))
    # assert
    assert report.details["onnxruntime_unpack_nodes_left"] == 0


def test_a_second_run_can_pack_what_the_first_excluded(rng: np.random.Generator) -> None:
    # setup
    model = _cnn(rng)
    once, _ = apply_pass(BinaryWeights(min_weights=0, exclude_nodes=("conv2",), pack=True), model)
    x = {"x": _inputs(rng, 4)}
    # execute
    twice, report = apply_pass(BinaryWeights(min_weights=0), once)
    all_at_once, _ = apply_pass(BinaryWeights(min_weights=0), model)
    # assert: the second run adds its own bit stream (and reuses the shared constants), and the
    # result computes the one-run result
    assert [row["node"] for row in report.details["layers"]] == ["conv2"]
    assert report.details["layers"][0]["unpack_prefix"] == "b2/"
    expected = dict(op_counts(all_at_once))
    for op, n in UNPACK_STREAM.items():
        expected[op] += n
    assert op_counts(twice) == expected
    assert {"binary/signs.bits", "binary/signs2.bits"} <= _weights(twice).keys()
    assert report.details["onnxruntime_unpack_nodes_left"] == 0
    np.testing.assert_array_equal(run_model(twice, x)[0], run_model(all_at_once, x)[0])


def test_unpacking_names_avoid_the_models_own(rng: np.random.Generator) -> None:
    # setup: the model already has a tensor under "b0/" and a node named "b1/w"
    model = _cnn(rng)
    for node in model.graph.node:
        node.input[:] = ["b0/r" if name == "r1" else name for name in node.input]
        node.output[:] = ["b0/r" if name == "r1" else name for name in node.output]
        if node.name == "conv3":
            node.name = "b1/w"
    x = {"x": _inputs(rng, 4)}
    # execute
    packed, report = apply_pass(BinaryWeights(min_weights=0), model)
    # assert: the layers take the next free prefixes, and the model still computes the same weights
    assert [row["unpack_prefix"] for row in report.details["layers"]] == ["b2/", "b3/", "b4/"]
    assert report.details["onnxruntime_unpack_nodes_left"] == 0
    unpacked, _ = apply_pass(UnpackBinary(), packed)
    np.testing.assert_array_equal(run_model(packed, x)[0], run_model(unpacked, x)[0])


def test_second_run_changes_nothing(rng: np.random.Generator) -> None:
    # setup
    once, _ = apply_pass(BinaryWeights(min_weights=0), _cnn(rng))
    # execute
    twice, report = apply_pass(BinaryWeights(min_weights=0), once)
    # assert
    assert not report.modified and op_counts(twice) == op_counts(once)
    assert any("not a constant initializer" in s.reason for s in report.skipped)


@pytest.mark.parametrize(("settings", "opset", "match"), [
    ({"bits": 3}, 17, "bits=3"), ({"op_types": ("Relu",)}, 17, "cannot binarise Relu"),
    ({"alpha_dtype": "int4"}, 17, "alpha_dtype='int4'"),
    ({"exclude_nodes": ("conv4",)}, 17, r"exclude_nodes: 'conv4' \(did you mean 'conv.'\?\) not found")])
def test_preconditions(rng: np.random.Generator, settings: dict[str, object], opset: int, match: str) -> None:
    # setup: the opset is only relabelled (BitShift's presence is what matters)
    model = _cnn(rng)
    model.opset_import[0].version = opset
    # execute / assert
    with pytest.raises(PreconditionError, match=match):
        apply_pass(BinaryWeights(**settings), model)


def test_old_opset_is_upgraded_for_packing(rng: np.random.Generator) -> None:
    # setup: BitShift needs opset 11; an opset-9 export is converted, not refused
    model = _cnn(rng)
    model.opset_import[0].version = 9  # relabelled: the CNN's ops read the same at opset 9
    # execute
    result = Pipeline([BinaryWeights(min_weights=0)]).run(model)
    # assert
    assert result.model.opset_import[0].version == 11 and result.reports[0].modified
    assert [r.pass_name for r in result.prelude] == ["opset-upgrade"]
    assert result.prelude[0].details == {"from": 9, "to": 11, "for": "binary"}


def test_unpack_leaves_a_float_model_alone(rng: np.random.Generator) -> None:
    # setup
    model = _cnn(rng)
    # execute
    out, report = apply_pass(UnpackBinary(), model)
    # assert
    assert not report.modified and op_counts(out) == op_counts(model)


# -- im2col ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs", [
    {"pads": [1, 0, 2, 1], "strides": [2, 1]},
    {"dilations": [2, 2], "pads": [2, 2, 2, 2], "group": 2},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2], "group": 4},
])
def test_conv_patches_reproduce_the_convolution(rng: np.random.Generator, attrs: dict[str, object]) -> None:
    # setup
    group = int(attrs.get("group", 1))
    w = rng.standard_normal((8, 4 // group, 3, 3)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="c", **attrs)], {"w": w}, [2, 4, 7, 6], [2, 8, "H", "W"])
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    y = run_model(model, {"x": x})[0]
    graph = import_graph(model)
    (layer,) = select_layers(graph, op_types=("Conv",), keep_first=False, keep_last=False, exclude_nodes=(),
                             min_weights=0, report=PassReport("t"))
    positions = layer.positions(x.shape)
    sample = np.repeat([0, 1], positions)
    position = np.tile(np.arange(positions), 2)
    # execute
    patches = layer.patch_rows(x, sample, position)
    # assert
    per = 8 // group
    got = np.concatenate([patches[:, g] @ layer.matrix()[g * per:(g + 1) * per].T for g in range(group)], axis=1)
    assert positions == y.shape[2] * y.shape[3]
    np.testing.assert_allclose(got, y.reshape(2, 8, -1).transpose(0, 2, 1).reshape(-1, 8), rtol=1e-4, atol=1e-5)


# -- HWGQ -----------------------------------------------------------------------------------------

def test_lloyd_step_minimises_half_gaussian_error() -> None:
    # setup
    x = np.linspace(0, 10, 400001)
    density = np.exp(-x * x / 2)

    def mse(step: float) -> float:
        q = np.minimum(np.round(x / step), 3) * step
        return float(np.sum((q - x) ** 2 * density) / density.sum())

    # execute
    step = lloyd_uniform_step(2)
    # assert
    assert step == pytest.approx(0.6508, abs=1e-3)
    assert mse(step) < mse(step - 0.01) and mse(step) < mse(step + 0.01)


def test_hwgq_quantizes_bn_relu_outputs(rng: np.random.Generator) -> None:
    # setup: Conv BN Relu Conv BN Relu Conv; only the middle conv is binarised
    c = 8
    bn = {f"{n}{i}": v for i in (1, 2) for n, v in (("s", rng.uniform(0.5, 1.5, c)), ("b", rng.normal(0, 0.5, c)),
                                                     ("mu", rng.normal(0, 0.1, c)), ("var", rng.uniform(0.5, 1.5, c)))}
    weights = {"w1": rng.standard_normal((c, 3, 3, 3)), "w2": rng.standard_normal((c, c, 3, 3)),
               "w3": rng.standard_normal((4, c, 1, 1)), **bn}
    weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s1", "b1", "mu1", "var1"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "s2", "b2", "mu2", "var2"], ["n2"]),
             helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3")]
    model = _model(nodes, weights, ["N", 3, 8, 8], ["N", 4, 8, 8])
    x = {"x": _inputs(rng, 4)}
    # execute
    out, report = apply_pass(BinaryWeights(hwgq=True), model)
    # assert: both Relus became Clip → QuantizeLinear → DequantizeLinear with levels 0, Δ, 2Δ, 3Δ
    counts = op_counts(out)
    assert "Relu" not in counts and counts["Clip"] == counts["QuantizeLinear"] == counts["DequantizeLinear"] == 2
    assert report.details["hwgq_quantized"] == 2
    step = np.float32(report.details["hwgq_step"])
    probe = onnx.ModelProto()
    probe.CopyFrom(out)
    probe.graph.output.append(onnx.ValueInfoProto(name="r1"))
    codes = np.unique(run_model(probe, x)[1]) / step
    assert step == pytest.approx(lloyd_uniform_step(2), abs=1e-6)
    assert set(np.round(codes).tolist()) <= {0, 1, 2, 3} and np.allclose(codes, np.round(codes), atol=1e-5)


# -- bundled models -------------------------------------------------------------------------------

@pytest.mark.skipif("vgg_digits" not in BUNDLED_MODELS, reason="bundled model vgg_digits not built yet")
def test_bundled_vgg_refit_lowers_errors_and_keeps_accuracy() -> None:
    # setup
    model, calib, evaluation = bundled("vgg_digits")
    with np.load(evaluation) as npz:
        x, labels = npz["input"], npz["label"]
    # execute
    plain, _ = apply_pass(BinaryWeights(), model)
    refit, report = apply_pass(BinaryWeights(), model, PassContext(calibration=open_data(calib, model)))
    # assert
    assert all(f["error_after"] < f["error_before"] for f in report.details["refit_layers"])
    accuracy = {name: float(np.mean(run_model(m, {"input": x})[0].argmax(1) == labels))
                for name, m in (("plain", plain), ("refit", refit))}
    assert accuracy["refit"] >= accuracy["plain"]


@pytest.mark.parametrize("alpha_dtype", ["float32", "uint8"])
def test_float16_weights_are_rebuilt_exactly_and_folded(alpha_dtype: str) -> None:
    # setup: float16 MatMul chain; the middle weight is packed, its scales float16 (the weight's
    # dtype) or uint8 codes decoded in float32
    rng = np.random.default_rng(2)
    weights = {f"w{i}": rng.standard_normal(shape).astype(np.float16) for i, shape in enumerate([(8, 64), (64, 48), (48, 4)])}
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
             helper.make_node("MatMul", ["h0", "w1"], ["h1"], name="mm1"),
             helper.make_node("MatMul", ["h1", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = {"x": rng.standard_normal((5, 8)).astype(np.float16)}
    # execute
    packed, report = apply_pass(BinaryWeights(min_weights=0, alpha_dtype=alpha_dtype), model)
    unpacked, _ = apply_pass(UnpackBinary(), packed)
    # assert
    w1 = weights["w1"].astype(np.float64)
    alpha = np.abs(w1).mean(axis=0)
    if alpha_dtype == "uint8":
        (stored,) = decode_log([encode_log(alpha)], np.dtype(np.float32))
    else:
        stored = alpha.astype(np.float16).astype(np.float32)
    expected = (stored[None, :] * np.where(w1 >= 0, 1, -1).astype(np.float32)).astype(np.float16)
    np.testing.assert_array_equal(_weights(unpacked)["w1"], expected)
    assert report.details["layers"][0]["packed_bytes"] == 64 * 48 // 8 + (48 * 2 if alpha_dtype == "float32" else 48 + 8)
    assert report.details["onnxruntime_unpack_nodes_left"] == 0
    # the packed model computes exactly the unpacked weight; onnxruntime's float16 MatMul is not
    # bit-reproducible between two models (it differs with identical inputs), so outputs are close only
    probe = onnx.ModelProto()
    probe.CopyFrom(packed)
    probe.graph.output.append(onnx.ValueInfoProto(name="w1"))
    out_packed, w1_packed = run_model(probe, x)
    np.testing.assert_array_equal(w1_packed, _weights(unpacked)["w1"])
    np.testing.assert_allclose(out_packed, run_model(unpacked, x)[0], rtol=1e-2, atol=1e-2)
