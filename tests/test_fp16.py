"""Tests of the fp16 pass on tiny graphs (and on the bundled models when they exist)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import BUNDLED_MODELS, apply_pass, bundled, op_counts, run_model
from onnx import TensorProto, numpy_helper

from onnxopt.data import open_data
from onnxopt.errors import OnnxoptError
from onnxopt.pass_base import PassContext
from onnxopt.pipeline import Pipeline
from onnxopt.runtime import make_session, with_outputs
from passes.fp16 import Fp16

TOL = Fp16.tolerance
RNG = np.random.default_rng(0)


def build(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """A checked model from ONNX text whose initializers are given as numpy arrays."""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in initializers.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp() -> onnx.ModelProto:
    return build("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,3] y) {
            h = MatMul(x, w1)
            a = Add(h, b1)
            [relu_node] r = Relu(a)
            y = MatMul(r, w2)
        }""", w1=RNG.standard_normal((4, 5), np.float32), b1=RNG.standard_normal(5).astype(np.float32),
        w2=RNG.standard_normal((5, 3), np.float32))


def elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every typed tensor of ``graph`` and its subgraphs (values and initializers)."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                types.update(elem_types(attr.g))
    return types


def cast_chains(graph: onnx.GraphProto) -> int:
    """Number of Cast nodes that read the output of another Cast."""
    cast_outputs = {n.output[0] for n in graph.node if n.op_type == "Cast"}
    return sum(n.op_type == "Cast" and n.input[0] in cast_outputs for n in graph.node)


def assert_close(model: onnx.ModelProto, result: onnx.ModelProto, feeds: dict[str, np.ndarray],
                 rtol: float = TOL.rtol, atol: float = TOL.atol) -> None:
    for before, after in zip(run_model(model, feeds), run_model(result, feeds)):
        assert after.dtype == before.dtype
        np.testing.assert_allclose(after, before, rtol=rtol, atol=atol)


def x_feed(n: int = 8, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": (RNG.standard_normal((n, 4)) * scale).astype(np.float32)}


def test_converts_weights_and_compute_with_one_cast_per_boundary() -> None:
    # setup
    model = mlp()
    # execute
    result, report = apply_pass(Fp16(), model)
    # assert
    assert op_counts(result) == {"Cast": 2, "MatMul": 2, "Add": 1, "Relu": 1}
    types = elem_types(result.graph)
    assert {types[n] for n in ("w1", "b1", "w2", "h", "a", "r")} == {TensorProto.FLOAT16}
    assert types["x"] == types["y"] == TensorProto.FLOAT
    assert report.details["constants_converted"] == 3 and report.details["nodes_converted"] == 4
    assert not report.skipped
    assert_close(model, result, x_feed())


@pytest.mark.parametrize(("settings", "counts", "cast_to"), [
    ({}, {"Cast": 2, "Mul": 1}, {TensorProto.FLOAT16, TensorProto.FLOAT}),
    # the blocked Mul reads a Cast of the int64 input directly, not a Cast of the float16 Cast
    ({"op_block_list": ("Mul",)}, {"Cast": 1, "Mul": 1}, {TensorProto.FLOAT}),
])
def test_existing_cast_to_float(settings: dict, counts: dict[str, int], cast_to: set[int]) -> None:
    # setup
    model = build("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[N,4] k) => (float[N,4] y) {
            kf = Cast <to=1> (k)
            y = Mul(kf, w)
        }""", w=np.array([0.5, 2.0, -1.0, 4.0], np.float32))
    feeds = {"k": RNG.integers(-50, 50, (6, 4))}
    # execute
    result, _ = apply_pass(Fp16(**settings), model)
    # assert
    assert op_counts(result) == counts
    assert {n.attribute[0].i for n in result.graph.node if n.op_type == "Cast"} == cast_to
    assert cast_chains(result.graph) == 0
    assert_close(model, result, feeds, rtol=0, atol=0)  # small integers times powers of two: exact


def test_resize_scales_and_roi_stay_float32() -> None:
    # setup
    model = build("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,2,4,4] x) => (float[1,2,8,8] y) {
            r = Relu(x)
            y = Resize <mode="linear"> (r, roi, scales)
        }""", roi=np.zeros(0, np.float32), scales=np.array([1, 1, 2, 2], np.float32))
    # execute
    result, report = apply_pass(Fp16(), model)
    # assert
    types = elem_types(result.graph)
    assert types["roi"] == types["scales"] == TensorProto.FLOAT
    assert types["r"] == TensorProto.FLOAT16
    resize = next(n for n in result.graph.node if n.op_type == "Resize")
    assert resize.input[0] == "r" and types[resize.output[0]] == TensorProto.FLOAT16
    assert op_counts(result) == {"Cast": 2, "Relu": 1, "Resize": 1}
    assert_close(model, result, {"x": RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)})


IF_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x, bool c) => (float[N,4] y) {
        y = If(c) <
            then_branch = t () => (float[N,4] yt) { yt = MatMul(x, w) },
            else_branch = e () => (float[N,4] ye) { ye = Mul(x, v) }>
    }"""
LOOP_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x, int64 n) => (float[N,4] y) {
        cond = Constant <value = bool {1}> ()
        y = Loop(n, cond, x) <body = b (int64 i, bool ci, float[N,4] s) => (bool co, float[N,4] so) {
            co = Identity(ci)
            m = MatMul(s, w)
            so = Tanh(m)
        }>
    }"""


@pytest.mark.parametrize(("text", "feeds", "outer_casts", "inner_casts"), [
    (IF_MODEL, [{"c": np.array(True)}, {"c": np.array(False)}], 1, {"then_branch": 1, "else_branch": 1}),
    (LOOP_MODEL, [{"n": np.array(3)}], 0, {"body": 2}),
], ids=["if", "loop"])
def test_subgraph_converted_inside_float32_boundaries(text: str, feeds: list[dict], outer_casts: int,
                                                      inner_casts: dict[str, int]) -> None:
    # setup
    model = build(text, w=(RNG.standard_normal((4, 4)) / 2).astype(np.float32),
                  v=RNG.standard_normal(4).astype(np.float32))
    # execute
    result, report = apply_pass(Fp16(), model)
    # assert
    container = next(n for n in result.graph.node if n.op_type in ("If", "Loop"))
    assert op_counts(result).get("Cast", 0) == outer_casts
    for attr in container.attribute:
        body = attr.g
        assert sum(n.op_type == "Cast" for n in body.node) == inner_casts[attr.name]
        assert {o.type.tensor_type.elem_type for o in body.output if o.type.tensor_type.elem_type != TensorProto.BOOL} \
            == {TensorProto.FLOAT}
    assert elem_types(result.graph)["w"] == TensorProto.FLOAT16
    assert any("subgraph" in s.reason for s in report.skipped)
    for extra in feeds:
        assert_close(model, result, {**x_feed(), **extra})


def overflow_model() -> onnx.ModelProto:
    # Max has a float16 CPU kernel, so onnxruntime really holds its input in float16
    return build("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,4] y) {
            [up] big = Mul(x, k1000)
            [hold] held = Max(big, floor)
            [down] small = Mul(held, k0001)
            y = Add(small, b)
        }""", k1000=np.array(1000, np.float32), floor=np.array(-1e9, np.float32),
        k0001=np.array(0.001, np.float32), b=np.ones(4, np.float32))


def test_activation_beyond_float16_range_stays_float32_with_calibration() -> None:
    # setup
    model = overflow_model()
    feeds = x_feed(16, scale=100.0)  # x * 1000 reaches ~2e5 > 65504
    ctx = PassContext(calibration=open_data([x_feed(32, scale=100.0)], model))
    # execute
    plain, _ = apply_pass(Fp16(), model)
    guarded, report = apply_pass(Fp16(), model, ctx)
    # assert: onnxruntime's CPU provider computes the chain in float32, a float16 runtime does not
    assert not np.isfinite(make_session(with_outputs(plain, ["held"])).run(["held"], feeds)[0]).all()
    assert np.isfinite(make_session(with_outputs(guarded, ["held"])).run(["held"], feeds)[0]).all()
    assert {s.target for s in report.skipped} == {"up", "hold", "down"}
    assert all("max_abs_activation" in s.reason for s in report.skipped)
    assert set(report.details["calibration"]["overflow"]) == {"up", "hold", "down"}
    assert elem_types(guarded.graph)["held"] == TensorProto.FLOAT
    assert op_counts(guarded)["Cast"] == 2  # small down for the Add, y out
    assert_close(model, guarded, feeds)


def test_float16_error_keeps_cancelling_nodes_float32() -> None:
    # setup: (x + 2048) - 2048 loses x in float16 (spacing 2 at 2048)
    model = build("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,4] y) {
            [shift] u = Add(x, c)
            [unshift] y = Sub(u, c)
        }""", c=np.array(2048, np.float32))
    feeds = x_feed(16)
    ctx = PassContext(calibration=open_data([x_feed(32)], model))
    # execute
    _, unchecked = apply_pass(Fp16(max_node_error=None), model, ctx)
    checked, report = apply_pass(Fp16(), model, ctx)
    # assert
    assert not unchecked.skipped
    blocked = report.details["calibration"]["error_blocked"]
    assert set(blocked) == {"shift", "unshift"}
    assert "costs unshift" in blocked["shift"]  # the Sub is blocked first, then the Add that feeds it
    assert op_counts(checked) == {"Add": 1, "Sub": 1}
    assert_close(model, checked, feeds, rtol=1e-6, atol=1e-6)


FP16_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float16[N,4] x) => (float16[N,4] y) {
        y = Add(x, x)
    }"""
INT_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[N,4] x) => (int64[N,4] y) {
        s = Shape(x)
        one = Constant <value = int64[1] {1}> ()
        d = Gather(s, one)
        y = Add(d, x)
    }"""


@pytest.mark.parametrize("text", [FP16_MODEL, INT_MODEL], ids=["already-fp16", "integer-only"])
def test_nothing_to_convert_leaves_model_unchanged(text: str) -> None:
    # setup
    model = build(text)
    baseline = Pipeline([]).run(model).model
    # execute
    result, report = apply_pass(Fp16(), model)
    # assert
    assert onnx.printer.to_text(result.graph) == onnx.printer.to_text(baseline.graph)
    assert not report.modified
    assert any("nothing to convert" in n for n in report.notes)


@pytest.mark.parametrize("case", ["mlp", "blocked", "if", "loop", "calibrated"])
def test_idempotent(case: str) -> None:
    # setup
    weights = {"w": (RNG.standard_normal((4, 4)) / 2).astype(np.float32),
               "v": RNG.standard_normal(4).astype(np.float32)}
    model, pass_, ctx = {
        "mlp": lambda: (mlp(), Fp16(), None),
        "blocked": lambda: (mlp(), Fp16(op_block_list=("Relu",)), None),
        "if": lambda: (build(IF_MODEL, **weights), Fp16(), None),
        "loop": lambda: (build(LOOP_MODEL, **weights), Fp16(), None),
        "calibrated": lambda: (overflow_model(), Fp16(),
                               PassContext(calibration=open_data([x_feed(32, scale=100.0)], overflow_model()))),
    }[case]()
    once, _ = apply_pass(pass_, model, ctx)
    # execute
    twice, report = apply_pass(pass_, once, ctx)
    # assert
    assert onnx.printer.to_text(twice.graph) == onnx.printer.to_text(once.graph)
    assert not report.modified


@pytest.mark.parametrize("settings", [{"op_block_list": ("Relu",)}, {"node_block_list": ("relu_node",)}])
def test_block_lists_keep_node_float32(settings: dict) -> None:
    # setup
    model = mlp()
    # execute
    result, report = apply_pass(Fp16(**settings), model)
    # assert
    types = elem_types(result.graph)
    relu = next(n for n in result.graph.node if n.op_type == "Relu")
    assert types[relu.input[0]] == types["r"] == TensorProto.FLOAT
    assert op_counts(result)["Cast"] == 4  # x in, Relu in up, Relu out down, y out
    assert [s.target for s in report.skipped] == ["relu_node"]
    assert cast_chains(result.graph) == 0
    assert_close(model, result, x_feed())


def test_keep_io_types_off_makes_interface_float16_without_casts() -> None:
    # setup
    model = mlp()
    feeds = x_feed()
    # execute
    result, _ = apply_pass(Fp16(keep_io_types=False), model)
    # assert
    assert "Cast" not in op_counts(result)
    assert elem_types(result.graph)["x"] == elem_types(result.graph)["y"] == TensorProto.FLOAT16
    after = run_model(result, {"x": feeds["x"].astype(np.float16)})[0]
    np.testing.assert_allclose(after.astype(np.float32), run_model(model, feeds)[0], rtol=TOL.rtol, atol=TOL.atol)


def test_initializer_range_guard_clamps_and_keeps_tiny_values_nonzero() -> None:
    # setup
    model = build("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,5] x) => (float[N,5] y) { y = Mul(x, w) }""",
        w=np.array([1e6, -1e6, 1e-10, -1e-10, 0.5], np.float32))
    # execute
    result, report = apply_pass(Fp16(), model)
    # assert
    w = numpy_helper.to_array(next(t for t in result.graph.initializer if t.name == "w"))
    np.testing.assert_array_equal(w, np.array([65504, -65504, 2.0 ** -24, -(2.0 ** -24), 0.5], np.float16))
    assert report.details["values_clamped_to_65504"] == 2
    assert report.details["tiny_values_raised_to_subnormal"] == 2


def test_one_cast_per_tensor_shared_by_all_consumers() -> None:
    # setup: three float32-only consumers of one float16 tensor
    model = build("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,4] y) {
            r = Relu(x)
            a = Neg(r)
            b = Abs(r)
            c = Sin(r)
            ab = Add(a, b)
            y = Add(ab, c)
        }""")
    # execute
    result, _ = apply_pass(Fp16(op_block_list=("Neg", "Abs", "Sin")), model)
    # assert
    casts_of_r = [n for n in result.graph.node if n.op_type == "Cast" and n.input[0] == "r"]
    assert len(casts_of_r) == 1
    assert op_counts(result)["Cast"] == 6  # x in, r up once, a/b/c down, y out
    assert cast_chains(result.graph) == 0
    assert_close(model, result, x_feed())


RANDOM_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] y) {
        r = RandomNormal <dtype=1, shape=[4], seed=1.0> ()
        z = Mul(r, zero)
        y = Add(x, z)
    }"""


def test_node_without_provider_float16_kernel_stays_float32() -> None:
    # setup: onnxruntime's CPU provider has no float16 RandomNormal
    model = build(RANDOM_MODEL, zero=np.zeros(4, np.float32))
    # execute
    result, report = apply_pass(Fp16(), model)
    unprobed, _ = apply_pass(Fp16(check_provider_kernels=False), model)
    # assert
    assert [s.target for s in report.skipped] == ["RandomNormal->r"]
    assert "CPUExecutionProvider has no float16 kernel" in report.skipped[0].reason
    assert report.details["kernel_probe"]["RandomNormal( -> float16)"] == "missing"
    assert_close(model, result, x_feed())
    with pytest.raises(OnnxoptError, match="RandomNormal"):
        run_model(unprobed, x_feed())


def test_unavailable_provider_is_reported_not_probed() -> None:
    # setup
    ctx = PassContext(providers=("NoSuchExecutionProvider",))
    # execute
    _, report = apply_pass(Fp16(), mlp(), ctx)
    # assert
    assert "kernel_probe" not in report.details
    assert any("NoSuchExecutionProvider is not available" in n for n in report.notes)


@pytest.mark.skipif(not BUNDLED_MODELS, reason="no bundled models")
@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_model_halves_and_agrees(name: str) -> None:
    # setup
    model, _, eval_path = bundled(name)
    with np.load(eval_path) as npz:
        feeds = {"input": npz["input"]}
    # execute
    result, _ = apply_pass(Fp16(), model)
    # assert
    assert result.ByteSize() <= 0.52 * model.ByteSize()
    before, after = run_model(model, feeds)[0], run_model(result, feeds)[0]
    assert float(np.mean(before.argmax(1) == after.argmax(1))) >= TOL.min_agreement
    np.testing.assert_allclose(after, before, rtol=TOL.rtol, atol=TOL.atol)
