"""Tests of the fp16 pass on tiny graphs (and on the bundled models when they exist)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import BUNDLED_MODELS, apply_pass, bundled, export, import_graph, op_counts, run_model
from onnx import TensorProto, numpy_helper

from onnxopt.data import open_data
from onnxopt.errors import OnnxoptError, PreconditionError
from onnxopt.pass_base import PassContext
from onnxopt.pipeline import Pipeline
from onnxopt.runtime import make_session
from passes.fp16.calib import materialise_float16
from passes.fp16.schema import apply_types, inferred_types
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
    assert not np.isfinite(make_session(plain, outputs=["held"]).run(["held"], feeds)[0]).all()
    assert np.isfinite(make_session(guarded, outputs=["held"]).run(["held"], feeds)[0]).all()
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


SCATTER_MODEL = """
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[4,3] data, int64[2,1] idx, float[2,3] upd) => (float[4,3] y, float[4,3] z) {
        s = Mul(data, two)
        y = ScatterND <reduction="%s"> (s, idx, upd)
        z = Relu(y)
    }"""


@pytest.mark.parametrize("reduction", ["add", "mul", "max"])
def test_scatternd_reduction_stays_float32_and_the_result_runs(reduction: str) -> None:
    # setup: onnxruntime's CPU ScatterND loads in float16 and fails on its first run with a reduction
    model = build(SCATTER_MODEL % reduction, two=np.full((1,), 2.0, np.float32))
    feeds = {"data": RNG.standard_normal((4, 3)).astype(np.float32), "idx": np.array([[1], [1]], np.int64),
             "upd": RNG.standard_normal((2, 3)).astype(np.float32)}
    # execute
    result, report = apply_pass(Fp16(), model)
    # assert: the ScatterND is kept (with the reason), the Mul and Relu are converted, and it runs
    assert [s.target for s in report.skipped] == ["ScatterND->y"]
    assert f"fails at run time with reduction={reduction}" in report.skipped[0].reason
    assert report.details["nodes_converted"] == 2
    assert_close(model, result, feeds)


def test_probe_runs_the_node_as_the_safety_net() -> None:
    # setup: the table does not list ScatterElements reduction=mul's float16 failure any more
    from passes.fp16 import probe

    model = build("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[4] data, int64[2] idx, float[2] upd) => (float[4] y) {
            y = ScatterElements <reduction="mul", axis=0> (data, idx, upd)
        }""")
    feeds = {"data": np.arange(4, dtype=np.float32), "idx": np.array([1, 1], np.int64),
             "upd": np.array([2.0, 3.0], np.float32)}
    saved = dict(probe.RUN_TIME_UNSUPPORTED)
    del probe.RUN_TIME_UNSUPPORTED[("CPUExecutionProvider", "ScatterElements")]
    try:
        # execute
        result, report = apply_pass(Fp16(), model)
    finally:
        probe.RUN_TIME_UNSUPPORTED.update(saved)
    # assert
    assert "loads but fails at run time" in report.skipped[0].reason
    assert report.details["kernel_probe"] == {"ScatterElements(float16, int64, float16 -> float16)": "missing"}
    assert_close(model, result, feeds, rtol=0, atol=0)


def test_mean_variance_normalization_is_not_a_postcondition_error() -> None:
    # setup: onnx's strict type inference fails on MVN's function body even in float32
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4,4] x) => (float[2,3,4,4] y) {
            m = Mul(x, x)
            y = MeanVarianceNormalization(m)
        }""")
    feeds = {"x": RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    # execute
    result = Pipeline([Fp16()]).run(model, PassContext())
    report = result.reports[0]
    # assert
    assert report.details["strict_types"] is False
    assert [s.target for s in report.skipped] == ["MeanVarianceNormalization->y"]
    assert report.details["nodes_converted"] == 1
    assert_close(model, result.model, feeds)


def test_an_input_model_that_fails_type_inference_already_is_not_a_postcondition_error() -> None:
    # setup: an opset-6 export whose int64 Constant onnx's type inference rejects (Constant-6 is float only)
    model = onnx.parser.parse_model("""
        <ir_version: 3, opset_import: ["" : 6]>
        g (float[1,2,3] x) => (float[2,2,6] y) {
            r = Constant <value = int64[3] {2, 1, 2}> ()
            y = Tile(x, r)
        }""")
    feeds = {"x": RNG.standard_normal((1, 2, 3)).astype(np.float32)}
    # execute
    result = Pipeline([Fp16()]).run(model, PassContext())
    report = result.reports[0]
    # assert: the Tile is converted; the complaint the input had is recorded, not raised
    assert "unsupported type tensor(int64)" in report.details["type_error_before"]
    assert report.details["nodes_converted"] == 1
    assert_close(model, result.model, feeds)


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


def op_counts_of(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def branches(model: onnx.ModelProto) -> dict[str, onnx.GraphProto]:
    """The bodies of the model's one If node, by attribute name."""
    node = next(n for n in model.graph.node if n.op_type == "If")
    return {a.name: a.g for a in node.attribute}


# -- preconditions ------------------------------------------------------------------------------
QDQ_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] y) {
        q = QuantizeLinear(x, s, z)
        d = DequantizeLinear(q, s, z)
        y = MatMul(d, w)
    }"""
QLINEAR_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (uint8[N,4] q) => (uint8[N,4] y) {
        y = QLinearMatMul(q, s, z, wq, s, z, s, z)
    }"""
INTEGER_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (uint8[N,4] q) => (float[N,4] y) {
        acc = MatMulInteger(q, wq, z, z)
        y = Cast <to=1> (acc)
    }"""
QDQ_IN_BRANCH_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x, bool c) => (float[N,4] y) {
        y = If(c) <
            then_branch = t () => (float[N,4] yt) { yt = MatMul(x, w) },
            else_branch = e () => (float[N,4] ye) { ye = DequantizeLinear(wq, s, z) }>
    }"""
QUANT_PARAMS = {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8),
                "w": np.eye(4, dtype=np.float32), "wq": np.full((4, 4), 130, np.uint8)}


@pytest.mark.parametrize(("text", "found"), [
    (QDQ_MODEL, "DequantizeLinear x1, QuantizeLinear x1"),
    (QLINEAR_MODEL, "QLinearMatMul x1"),
    (INTEGER_MODEL, "MatMulInteger x1"),
    (QDQ_IN_BRANCH_MODEL, "DequantizeLinear x1"),
], ids=["qdq", "qlinear", "integer", "qdq-in-subgraph"])
def test_refuses_quantized_model(text: str, found: str) -> None:
    # setup
    model = build(text, **{k: v for k, v in QUANT_PARAMS.items() if k in text})
    # execute / assert
    with pytest.raises(PreconditionError, match=rf"already quantized \({found}\).*not after int8"):
        apply_pass(Fp16(), model)


@pytest.mark.parametrize(("settings", "message"), [
    ({"op_block_list": ("Relue", "MatMul")},
     r"op_block_list: 'Relue' \(did you mean 'Relu'\?\) not found among the op types of the model "
     r"\(Add, MatMul, Relu\)$"),
    ({"node_block_list": ("relu_nod",)}, r"node_block_list: 'relu_nod' \(did you mean 'relu_node'\?\) not found .* \(relu_node\)$"),
    ({"max_abs_activation": 0.0}, r"max_abs_activation must be in \(0, 65504\]"),
    ({"max_abs_activation": 70000.0}, r"max_abs_activation must be in \(0, 65504\].*got 70000"),
    ({"max_node_error": 0.0}, r"max_node_error must be > 0"),
    ({"max_node_error": float("nan")}, r"max_node_error must be > 0"),
], ids=["op-typo", "node-typo", "activation-zero", "activation-above-fp16", "error-zero", "error-nan"])
def test_invalid_settings_are_refused(settings: dict, message: str) -> None:
    # setup
    model = mlp()
    # execute / assert
    with pytest.raises(PreconditionError, match=message):
        apply_pass(Fp16(**settings), model)


def test_unknown_block_list_entries_are_abbreviated() -> None:
    # setup: 20 named nodes
    lines = "\n".join(f"[n{i:02d}] h{i + 1} = Relu(h{i})" for i in range(20))
    model = build(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] h0) => (float[N,4] h20) {{ {lines} }}""")
    # execute / assert
    with pytest.raises(PreconditionError, match=r"'zz' not found .* \(n00, n01, .*, n11, \.\.\. \(20 in all\)\)$"):
        apply_pass(Fp16(node_block_list=("zz",)), model)


def test_node_block_list_reaches_nodes_inside_subgraphs() -> None:
    # setup: the then-branch node is named; blocking it keeps it float32, the else branch converts
    text = IF_MODEL.replace("yt = MatMul(x, w)", "[then_mm] yt = MatMul(x, w)")
    model = build(text, w=(RNG.standard_normal((4, 4)) / 2).astype(np.float32),
                  v=RNG.standard_normal(4).astype(np.float32))
    # execute
    result, report = apply_pass(Fp16(node_block_list=("then_mm",)), model)
    # assert
    bodies = branches(result)
    assert op_counts_of(bodies["then_branch"]) == {"MatMul": 1}
    assert op_counts_of(bodies["else_branch"]) == {"Mul": 1, "Cast": 1}
    assert ("then_mm", "node name is in node_block_list") in {(s.target, s.reason) for s in report.skipped}
    for c in (True, False):
        assert_close(model, result, {**x_feed(), "c": np.array(c)})




SCOPED_IF_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] y) {
        mx = ReduceMean <keepdims=0> (x)
        cond = Greater(mx, zero)
        [if] y = If(cond) <
            then_branch = t () => (float[N,4] yt) { [mmt] yt = MatMul(x, W) },
            else_branch = e () => (float[N,4] ye) { [mme] ye = MatMul(x, W) }>
    }"""


def scoped_if_model(local_weights: bool) -> onnx.ModelProto:
    """If whose branches read ``W``: each its own local initializer ``W`` (same name, other values),
    or one outer-scope ``W`` they share."""
    weights = [(RNG.standard_normal((4, 4)) / 2).astype(np.float32) for _ in range(2)]
    model = onnx.parser.parse_model(SCOPED_IF_MODEL)
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    if local_weights:
        for body, w in zip(branches(model).values(), weights):
            body.initializer.append(numpy_helper.from_array(w, "W"))
    else:
        model.graph.initializer.append(numpy_helper.from_array(weights[0], "W"))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("calibrated", [False, True], ids=["plain", "calibrated"])
@pytest.mark.parametrize("local_weights", [True, False], ids=["same-name-local-W", "outer-W"])
def test_if_branches_reading_weights_named_alike(local_weights: bool, calibrated: bool) -> None:
    # setup
    model = scoped_if_model(local_weights)
    feeds = [{"x": np.abs(RNG.standard_normal((8, 4))).astype(np.float32) * sign} for sign in (1, -1)]
    ctx = PassContext(calibration=open_data([x_feed(32)], model)) if calibrated else None
    # execute
    result, report = apply_pass(Fp16(), model, ctx)
    # assert: every W the branches read is float16, one Cast in (shared), one out per branch
    bodies = list(branches(result).values())
    weights = [t for g in [result.graph, *bodies] for t in g.initializer if t.name == "W"]
    assert weights and {t.data_type for t in weights} == {TensorProto.FLOAT16}
    assert op_counts(result) == {"Cast": 1, "ReduceMean": 1, "Greater": 1, "If": 1}
    assert [op_counts_of(g) for g in bodies] == [{"MatMul": 1, "Cast": 1}] * 2
    assert [s.target for s in report.skipped] == ["if"]
    for feed in feeds:  # both branches taken
        assert_close(model, result, feed)


def test_same_tensor_name_with_other_types_in_sibling_branches() -> None:
    # setup: ``s`` is int64 (Shape) in one branch and float32 (Relu) in the other; untyped in both
    model = build("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4] x, bool c) => (float[2] y) {
            y = If(c) <
                then_branch = t () => (float[2] yt) { s = Shape(x)  sf = Cast <to=1> (s)  yt = Mul(sf, k) },
                else_branch = e () => (float[2] ye) { r = ReduceSum <keepdims=0> (x, ax)  s = Relu(r)  ye = Mul(s, k) }>
        }""", k=np.array([0.5, 2.0], np.float32), ax=np.array([1], np.int64))
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    # execute
    result, report = apply_pass(Fp16(), model)
    # assert
    bodies = branches(result)
    then_types = elem_types(bodies["then_branch"])
    assert then_types["s"] == TensorProto.INT64 and then_types["sf"] == TensorProto.FLOAT16
    assert elem_types(bodies["else_branch"])["s"] == TensorProto.FLOAT16
    assert report.details["nodes_converted"] == 5  # Cast, both Muls, ReduceSum, Relu
    assert_close(model, result, {"x": x, "c": np.array(True)}, rtol=0, atol=0)  # small integers, powers of 2
    assert_close(model, result, {"x": x, "c": np.array(False)})


@pytest.mark.parametrize(("then_body", "scale", "limit"), [
    ("big = Mul(x, k1000)  yt = Mul(big, k1000)", 100.0, "max_abs_activation"),
    ("u = Add(x, k2048)  yt = Sub(u, k2048)", 1.0, "max_node_error"),
], ids=["overflow", "error"])
def test_calibration_keeps_a_blocked_if_float32_with_its_body(then_body: str, scale: float, limit: str) -> None:
    # setup: positive inputs take the then-branch, whose float16 overflows or loses x
    model = build(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,4] y) {{
            mx = ReduceMean <keepdims=0> (x)
            cond = Greater(mx, zero)
            [if] y = If(cond) <
                then_branch = t () => (float[N,4] yt) {{ {then_body} }},
                else_branch = e () => (float[N,4] ye) {{ ye = Neg(x) }}>
        }}""", zero=np.array(0, np.float32), k1000=np.array(1000, np.float32), k2048=np.array(2048, np.float32))

    def positive(n: int) -> dict[str, np.ndarray]:
        return {"x": np.abs(x_feed(n, scale)["x"])}

    ctx = PassContext(calibration=open_data([positive(32)], model))
    # execute
    plain, _ = apply_pass(Fp16(), model)
    guarded, report = apply_pass(Fp16(), model, ctx)
    # assert
    then_plain, then_guarded = (branches(m)["then_branch"] for m in (plain, guarded))
    assert TensorProto.FLOAT16 in elem_types(then_plain).values()
    assert TensorProto.FLOAT16 not in elem_types(then_guarded).values()
    assert "Cast" not in op_counts_of(then_guarded)
    assert any(s.target == "if" and limit in s.reason for s in report.skipped)
    assert any(s.reason.startswith("inside if: ") and limit in s.reason for s in report.skipped)
    assert_close(model, guarded, positive(16), rtol=1e-6, atol=1e-6)  # the branch taken is float32


@pytest.mark.parametrize("where", ["main", "subgraph"])
def test_measured_copy_rounds_every_float16_output(where: str) -> None:
    # setup: ((x * 3.1) + 2048 - 2048) * 0.37 in float16; onnxruntime's CPU provider computes the chain
    # in float32 unless each output is materialised
    chain = "a = Mul(x, k1)  b = Add(a, k2)  d = Sub(b, k2)  {out} = Mul(d, k3)"
    body = {"main": f"{chain.format(out='y')}",
            "subgraph": f"""y = If(c) <then_branch = t () => (float16[N,4] yt) {{ {chain.format(out='yt')} }},
                                      else_branch = e () => (float16[N,4] ye) {{ ye = Neg(x) }}>"""}[where]
    k = {"k1": np.array(3.1, np.float16), "k2": np.array(2048, np.float16), "k3": np.array(0.37, np.float16)}
    model = build(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float16[N,4] x, bool c) => (float16[N,4] y) {{ {body} }}""", **k)
    feeds = {"x": (RNG.random((3, 4)) * 2).astype(np.float16), "c": np.array(True)}
    a = feeds["x"] * k["k1"]  # numpy float16 rounds every step
    expected = (((a + k["k2"]) - k["k2"]) * k["k3"])
    graph = import_graph(model)
    apply_types(graph, inferred_types(graph))
    # execute
    materialise_float16(graph)
    measured = export(graph)
    # assert
    assert not np.array_equal(run_model(model, feeds)[0], expected)  # unrounded: x survives the +-2048
    np.testing.assert_array_equal(run_model(measured, feeds)[0], expected)


@pytest.mark.parametrize("fold", [True, False])
def test_batchnorm_is_folded_first_so_onnxruntime_keeps_conv_bn_fused(fold: bool) -> None:
    # setup: Conv -> BatchNormalization -> Relu (opset 15: BN statistics may stay float32 beside float16 data)
    channels = 3
    model = build("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[N,2,6,6] x) => (float[N,3,6,6] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            n = BatchNormalization (c, scale, bias, mean, var)
            y = Relu(n)
        }""", w=RNG.standard_normal((channels, 2, 3, 3), np.float32), b=RNG.standard_normal(channels, np.float32),
        scale=RNG.uniform(0.5, 2, channels).astype(np.float32), bias=RNG.standard_normal(channels, np.float32),
        mean=RNG.standard_normal(channels, np.float32), var=RNG.uniform(0.5, 2, channels).astype(np.float32))
    feeds = {"x": RNG.standard_normal((4, 2, 6, 6)).astype(np.float32)}
    # execute
    result, report = apply_pass(Fp16(fold_batchnorm=fold), model, None)
    # assert: folded (default), the float16 model has no BatchNormalization left; otherwise it keeps it
    assert ("BatchNormalization" in op_counts(result)) is not fold
    assert [(r.pass_name, r.changes) for r in report.prerequisites] == ([("fold-batchnorm", 1)] if fold else [])
    conv = next(n for n in result.graph.node if n.op_type == "Conv")
    assert elem_types(result.graph)[conv.input[1]] == TensorProto.FLOAT16
    assert_close(model, result, feeds)


def _conv_bn(gamma: float = 1.0, w_scale: float = 1.0) -> onnx.ModelProto:
    channels = 3
    return build("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[N,2,6,6] x) => (float[N,3,6,6] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            [bn] y = BatchNormalization (c, scale, bias, mean, var)
        }""", w=(RNG.standard_normal((channels, 2, 3, 3)) * w_scale).astype(np.float32),
        b=np.zeros(channels, np.float32), scale=np.full(channels, gamma, np.float32),
        bias=np.zeros(channels, np.float32), mean=np.zeros(channels, np.float32), var=np.full(channels, 1e-4, np.float32))


@pytest.mark.parametrize(("model", "settings", "reason"), [
    (lambda: _conv_bn(gamma=2000.0), {}, "above max_abs_weight=65504"),  # folded weights ~2e5: past float16
    (_conv_bn, {"node_block_list": ("bn",)}, "node_block_list"),
    (_conv_bn, {"op_block_list": ("BatchNormalization",)}, "op_block_list"),
])
def test_batchnorm_stays_when_folding_would_overflow_or_it_is_blocked(model, settings: dict, reason: str) -> None:
    # setup
    original = model()
    feeds = {"x": RNG.standard_normal((2, 2, 6, 6)).astype(np.float32)}
    # execute
    result, report = apply_pass(Fp16(**settings), original, None)
    # assert: the BatchNormalization is still there, with the reason in the report (fp16's own, or its
    # fold-batchnorm prerequisite's), and the outputs are close
    assert op_counts(result)["BatchNormalization"] == 1
    skipped = [*report.skipped, *(s for nested in report.prerequisites for s in nested.skipped)]
    assert any(s.target == "bn" and reason in s.reason for s in skipped)
    before, after = run_model(original, feeds)[0], run_model(result, feeds)[0]
    assert np.abs(after - before).max() <= 2e-2 * np.abs(before).max()


def test_float16_model_with_batchnorm_is_left_alone() -> None:
    # setup: float16 everywhere, inputs, outputs and statistics included
    half = {k: v.astype(np.float16) for k, v in {
        "w": RNG.standard_normal((3, 2, 3, 3)), "b": np.zeros(3), "scale": np.ones(3), "bias": np.zeros(3),
        "mean": np.zeros(3), "var": np.ones(3)}.items()}
    model = build("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float16[N,2,6,6] x) => (float16[N,3,6,6] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            [bn] y = BatchNormalization (c, scale, bias, mean, var)
        }""", **half)
    # execute
    result, report = apply_pass(Fp16(), model, None)
    # assert: nothing to convert, so nothing is folded either
    assert not report.modified and "BatchNormalization" in op_counts(result)
    assert any("nothing to convert" in n for n in report.notes)
