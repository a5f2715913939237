"""Canonicalisation passes on tiny graphs: exact op counts after, outputs compared in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.pass_base import PassContext, PassReport
from passes.canonical import DeadNodeCleanup, EliminateIdentity, ShapeInference
from passes.canonical import FoldBatchNorm
from passes.canonical import ConstantFolding
from conftest import BUNDLED_MODELS, apply_pass, bundled, import_graph, op_counts, parse, run_model

BN_RTOL, BN_ATOL = 1e-4, 1e-5
OPSET = [helper.make_opsetid("", 17)]


def make_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
               initializers: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor(name: str, shape: list[int | str | None], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def bn_params(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    return {"gamma": rng.uniform(0.5, 2.0, channels).astype(np.float32),
            "beta": rng.normal(size=channels).astype(np.float32),
            "mean": rng.normal(size=channels).astype(np.float32),
            "var": rng.uniform(0.1, 3.0, channels).astype(np.float32)}


def bn_node(x: str, y: str, epsilon: float = 1e-3) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, "gamma", "beta", "mean", "var"], [y], epsilon=epsilon)


def assert_same(original: onnx.ModelProto, optimized: onnx.ModelProto, feeds: dict[str, np.ndarray],
                rtol: float = 0.0, atol: float = 0.0) -> None:
    assert [o.name for o in optimized.graph.output] == [o.name for o in original.graph.output]
    for want, got in zip(run_model(original, feeds), run_model(optimized, feeds)):
        if rtol == 0.0 and atol == 0.0:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def skip_reasons(report: PassReport) -> list[str]:
    return [s.reason for s in report.skipped]


# -- fold-batchnorm --------------------------------------------------------------------------------
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_batchnorm_folds(rng: np.random.Generator, group: int, with_bias: bool) -> None:
    inits = {"W": rng.normal(size=(8, 4 // group, 3, 3)).astype(np.float32), **bn_params(rng, 8)}
    conv_inputs = ["x", "W"]
    if with_bias:
        inits["B"] = rng.normal(size=8).astype(np.float32)
        conv_inputs.append("B")
    model = make_model([helper.make_node("Conv", conv_inputs, ["c"], group=group, pads=[1, 1, 1, 1]),
                        bn_node("c", "y")],
                       [tensor("x", ["N", 4, 6, 6])], [tensor("y", ["N", 8, 6, 6])], inits)

    optimized, report = apply_pass(FoldBatchNorm(), model)

    assert op_counts(optimized) == {"Conv": 1}
    assert report.changes == 1 and report.details["folded_into"] == {"Conv": 1}
    assert_same(model, optimized, {"x": rng.normal(size=(2, 4, 6, 6)).astype(np.float32)}, BN_RTOL, BN_ATOL)


@pytest.mark.parametrize("group", [1, 2])
def test_convtranspose_batchnorm_folds(rng: np.random.Generator, group: int) -> None:
    # ConvTranspose weight layout is [Cin, Cout/group, k, k]: 4 inputs, 6 outputs.
    inits = {"W": rng.normal(size=(4, 6 // group, 3, 3)).astype(np.float32),
             "B": rng.normal(size=6).astype(np.float32), **bn_params(rng, 6)}
    model = make_model([helper.make_node("ConvTranspose", ["x", "W", "B"], ["c"], group=group, strides=[2, 2]),
                        bn_node("c", "y")],
                       [tensor("x", ["N", 4, 5, 5])], [tensor("y", ["N", 6, 11, 11])], inits)

    optimized, report = apply_pass(FoldBatchNorm(), model)

    assert op_counts(optimized) == {"ConvTranspose": 1}
    assert report.changes == 1
    assert_same(model, optimized, {"x": rng.normal(size=(3, 4, 5, 5)).astype(np.float32)}, BN_RTOL, BN_ATOL)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_gemm_batchnorm_folds(rng: np.random.Generator, trans_b: int, with_c: bool) -> None:
    shape_b = (6, 5) if trans_b else (5, 6)
    inits = {"B": rng.normal(size=shape_b).astype(np.float32), **bn_params(rng, 6)}
    gemm_inputs = ["x", "B"]
    if with_c:
        inits["C"] = rng.normal(size=(1, 6)).astype(np.float32)
        gemm_inputs.append("C")
    model = make_model([helper.make_node("Gemm", gemm_inputs, ["g"], transB=trans_b, alpha=0.5, beta=2.0),
                        bn_node("g", "y")],
                       [tensor("x", ["N", 5])], [tensor("y", ["N", 6])], inits)

    optimized, report = apply_pass(FoldBatchNorm(), model)

    assert op_counts(optimized) == {"Gemm": 1}
    assert report.changes == 1
    assert_same(model, optimized, {"x": rng.normal(size=(4, 5)).astype(np.float32)}, BN_RTOL, BN_ATOL)


def test_fp16_conv_batchnorm_keeps_weight_dtype(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(size=(4, 2, 1, 1)).astype(np.float16),
             **{k: v.astype(np.float16) for k, v in bn_params(rng, 4).items()}}
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"]), bn_node("c", "y")],
                       [tensor("x", ["N", 2, 3, 3], TensorProto.FLOAT16)],
                       [tensor("y", ["N", 4, 3, 3], TensorProto.FLOAT16)], inits)

    optimized, _ = apply_pass(FoldBatchNorm(), model)

    assert {i.data_type for i in optimized.graph.initializer} == {TensorProto.FLOAT16}
    assert_same(model, optimized, {"x": rng.normal(size=(1, 2, 3, 3)).astype(np.float16)}, 1e-2, 1e-2)


@pytest.mark.parametrize("extra", ["second consumer", "graph output"])
def test_batchnorm_kept_when_conv_output_is_shared(rng: np.random.Generator, extra: str) -> None:
    inits = {"W": rng.normal(size=(4, 2, 1, 1)).astype(np.float32), **bn_params(rng, 4)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), bn_node("c", "y")]
    outputs = [tensor("y", ["N", 4, 3, 3])]
    if extra == "second consumer":
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        outputs.append(tensor("r", ["N", 4, 3, 3]))
    else:
        outputs.append(tensor("c", ["N", 4, 3, 3]))
    model = make_model(nodes, [tensor("x", ["N", 2, 3, 3])], outputs, inits)

    optimized, report = apply_pass(FoldBatchNorm(), model)

    assert op_counts(optimized)["BatchNormalization"] == 1
    assert report.changes == 0
    assert skip_reasons(report) == ["the Conv output 'c' has 2 consumers; folding would change the others"]
    assert_same(model, optimized, {"x": rng.normal(size=(2, 2, 3, 3)).astype(np.float32)})


def test_shared_conv_weight_gets_one_folded_copy_per_conv(rng: np.random.Generator) -> None:
    params = bn_params(rng, 4)
    inits = {"W": rng.normal(size=(4, 2, 1, 1)).astype(np.float32), **params,
             **{f"{k}2": v[::-1].copy() for k, v in params.items()}}
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c1"]), bn_node("c1", "y1"),
                        helper.make_node("Conv", ["x", "W"], ["c2"]),
                        helper.make_node("BatchNormalization", ["c2", "gamma2", "beta2", "mean2", "var2"],
                                         ["y2"])],
                       [tensor("x", ["N", 2, 3, 3])], [tensor("y1", ["N", 4, 3, 3]), tensor("y2", ["N", 4, 3, 3])],
                       inits)

    optimized, report = apply_pass(FoldBatchNorm(), model)

    assert op_counts(optimized) == {"Conv": 2}
    assert report.changes == 2
    assert len({n.input[1] for n in optimized.graph.node}) == 2
    assert_same(model, optimized, {"x": rng.normal(size=(2, 2, 3, 3)).astype(np.float32)}, BN_RTOL, BN_ATOL)


def test_batchnorm_after_relu_is_skipped_with_reason(rng: np.random.Generator) -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), bn_node("r", "y")],
                       [tensor("x", ["N", 3, 2, 2])], [tensor("y", ["N", 3, 2, 2])], bn_params(rng, 3))

    optimized, report = apply_pass(FoldBatchNorm(), model)

    assert op_counts(optimized) == {"Relu": 1, "BatchNormalization": 1}
    assert skip_reasons(report) == ["preceded by Relu, not Conv/ConvTranspose/Gemm"]


def test_batchnorm_with_non_constant_scale_is_skipped(rng: np.random.Generator) -> None:
    params = bn_params(rng, 3)
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"]), bn_node("c", "y")],
                       [tensor("x", ["N", 3, 2, 2]), tensor("gamma", [3])], [tensor("y", ["N", 3, 2, 2])],
                       {"W": rng.normal(size=(3, 3, 1, 1)).astype(np.float32),
                        **{k: v for k, v in params.items() if k != "gamma"}})

    optimized, report = apply_pass(FoldBatchNorm(), model)

    assert op_counts(optimized)["BatchNormalization"] == 1
    assert skip_reasons(report) == ["scale 'gamma' is not a constant"]


@pytest.mark.skipif("resnet_fmnist" not in BUNDLED_MODELS, reason="bundled model not built yet")
def test_fold_batchnorm_on_bundled_resnet() -> None:
    model, _, eval_npz = bundled("resnet_fmnist")
    with np.load(eval_npz) as npz:
        feeds = {"input": npz["input"][:64]}
    assert op_counts(model).get("BatchNormalization", 0) > 0

    optimized, report = apply_pass(FoldBatchNorm(), model)

    assert "BatchNormalization" not in op_counts(optimized)
    assert report.skipped == []
    assert_same(model, optimized, feeds, BN_RTOL, BN_ATOL)


# -- eliminate-identity ----------------------------------------------------------------------------
def test_identity_feeding_graph_output_keeps_the_output_name() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3] x) => (float[N, 3] y, float[N, 3] z) {
            r = Relu(x)
            y = Identity(r)
            z = Neg(r)
        }""")

    optimized, report = apply_pass(EliminateIdentity(), model)

    assert op_counts(optimized) == {"Relu": 1, "Neg": 1}
    assert report.changes == 1
    assert optimized.graph.node[0].output[0] == "y"
    assert_same(model, optimized, {"x": np.linspace(-2, 2, 12, dtype=np.float32).reshape(4, 3)})


def test_identity_chain_and_dropout_are_removed() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 3] x) => (float[N, 3] y) {
            a = Identity(x)
            b = Dropout(a)
            c = Identity(b)
            d = Add(c, b)
            y = Identity(d)
        }""")

    optimized, report = apply_pass(EliminateIdentity(), model)

    assert op_counts(optimized) == {"Add": 1}
    assert report.changes == 4
    assert_same(model, optimized, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})


@pytest.mark.parametrize("text,reason", [
    ("y = Identity(x)", "both its input and its output are graph inputs/outputs; removing it would merge them"),
    ("y, m = Dropout(x)\n z = Cast<to=1>(m)", "its mask output is used"),
])
def test_identity_kept_with_reason(text: str, reason: str) -> None:
    model = parse(f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z) {{
            {text if "z =" in text else text + chr(10) + "z = Neg(x)"}
        }}""")

    optimized, report = apply_pass(EliminateIdentity(), model)

    assert report.changes == 0
    assert skip_reasons(report) == [reason]
    assert op_counts(optimized) == op_counts(model)


def test_identity_inside_if_branches() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3] x, bool c) => (float[3] y) {
            t = Identity(x)
            y = If(c) <
                then_branch = g1 () => (float[3] a) { n = Neg(t)  a = Identity(n) },
                else_branch = g2 () => (float[3] b) { b = Identity(t) }>
        }""")
    x = np.array([1.0, -2.0, 3.0], np.float32)

    optimized, report = apply_pass(EliminateIdentity(), model)

    assert report.changes == 2
    assert skip_reasons(report) == [
        "its input is not produced inside this graph, so nothing can write the graph output"]
    branches = {a.name: [n.op_type for n in a.g.node] for a in optimized.graph.node[0].attribute}
    assert branches == {"then_branch": ["Neg"], "else_branch": ["Identity"]}
    for cond in (True, False):
        assert_same(model, optimized, {"x": x, "c": np.array(cond)})


# -- fold-constants --------------------------------------------------------------------------------
def test_static_shape_arithmetic_and_constant_add_fold() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[2, 12] y) {
            s = Shape(x)
            i0 = Constant<value = int64[1] {0}>()
            n = Gather(s, i0)
            m1 = Constant<value = int64[1] {-1}>()
            shape = Concat<axis = 0>(n, m1)
            r = Reshape(x, shape)
            a = Constant<value = float[1] {1.5}>()
            b = Constant<value = float[1] {0.25}>()
            ab = Add(a, b)
            y = Add(r, ab)
        }""")
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)

    optimized, report = apply_pass(ConstantFolding(), model)

    assert op_counts(optimized) == {"Reshape": 1, "Add": 1}
    assert report.changes == 8
    assert_same(model, optimized, {"x": x})


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the number of nodes of every onnxruntime evaluation constant folding makes."""
    import passes.canonical.fold_constants as fold_constants

    calls: list[int] = []
    evaluate = fold_constants._evaluate
    monkeypatch.setattr(fold_constants, "_evaluate",
                        lambda nodes, *rest: calls.append(len(nodes)) or evaluate(nodes, *rest))
    return calls


def test_constants_from_constant_nodes_fold_in_one_onnxruntime_session(evaluations: list[int]) -> None:
    # setup: a chain of foldable nodes fed by Constant nodes (exporters write weights that way)
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y) {
            a = Constant<value = float[3] {1.0, 2.0, 3.0}>()
            b = Constant<value = float[3] {0.5, 0.25, 0.125}>()
            ab = Mul(a, b)
            c = Sqrt(ab)
            y = Add(x, c)
        }""")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    # execute
    optimized, report = apply_pass(ConstantFolding(), model)
    # assert: both nodes evaluated together, not node by node after a failed batch (and no empty session)
    assert evaluations == [2]
    assert op_counts(optimized) == {"Add": 1}
    assert_same(model, optimized, {"x": x})


def test_dynamic_dims_stay_and_static_dims_fold() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3, 4] x) => (float[N, 12] y) {
            s = Shape(x)
            i0 = Constant<value = int64[1] {0}>()
            n = Gather(s, i0)
            i12 = Constant<value = int64[2] {1, 2}>()
            hw = Gather(s, i12)
            k = ReduceProd<keepdims = 1>(hw)
            shape = Concat<axis = 0>(n, k)
            y = Reshape(x, shape)
        }""")

    optimized, report = apply_pass(ConstantFolding(), model)

    assert op_counts(optimized) == {"Shape": 1, "Gather": 1, "Concat": 1, "Reshape": 1}
    assert report.changes == 4
    for batch in (1, 5):
        assert_same(model, optimized, {"x": np.ones((batch, 3, 4), np.float32)})


def test_random_ops_are_not_folded() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
            r = RandomNormal<shape = [2]>()
            y = Add(x, r)
        }""")

    optimized, report = apply_pass(ConstantFolding(), model)

    assert op_counts(optimized) == {"RandomNormal": 1, "Add": 1}
    assert skip_reasons(report) == ["non-deterministic op; folding would freeze one random draw"]


def test_node_onnxruntime_cannot_evaluate_does_not_stop_the_rest() -> None:
    # "bad" reshapes 6 values to 4: onnxruntime rejects it (the original model fails to run too).
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) <float[2] a = {1.0, 2.0}, float[6] c = {1, 2, 3, 4, 5, 6},
                                         int64[1] four = {4}> {
            aa = Add(a, a)
            y = Mul(x, aa)
            bad = Reshape(c, four)
        }""")

    optimized, report = apply_pass(ConstantFolding(), model)

    assert op_counts(optimized) == {"Mul": 1}
    assert [s.target for s in report.skipped] == ["Reshape->bad"]
    assert report.skipped[0].reason.startswith("onnxruntime could not evaluate it:")
    np.testing.assert_array_equal(run_model(optimized, {"x": np.array([3.0, -1.0], np.float32)})[0], [6.0, -4.0])


def test_graph_output_computed_from_constants_becomes_an_initializer() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] z) <float[2] a = {1.0, 2.0}> {
            y = Neg(x)
            z = Mul(a, a)
        }""")

    optimized, report = apply_pass(ConstantFolding(), model)

    assert op_counts(optimized) == {"Neg": 1}
    assert [i.name for i in optimized.graph.initializer] == ["z"]
    assert_same(model, optimized, {"x": np.array([3.0, -1.0], np.float32)})


@pytest.mark.parametrize("threshold,folded", [(1 << 20, False), (1 << 24, True)])
def test_size_threshold_keeps_expanding_ops(threshold: int, folded: bool) -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1024, 1024] x) => (float[1024, 1024] y) {
            s = Constant<value = int64[2] {1024, 1024}>()
            big = ConstantOfShape<value = float[1] {2.0}>(s)
            y = Mul(x, big)
        }""")

    optimized, report = apply_pass(ConstantFolding(size_threshold_bytes=threshold), model)

    assert op_counts(optimized) == ({"Mul": 1} if folded else {"ConstantOfShape": 1, "Mul": 1})
    assert skip_reasons(report) == ([] if folded else [
        f"folding would store 4194304 bytes (> size_threshold_bytes={threshold}, larger than its inputs)"])
    assert_same(model, optimized, {"x": np.ones((1024, 1024), np.float32)})


def test_constant_folding_inside_if_branch(evaluations: list[int]) -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y) {
            y = If(c) <
                then_branch = g1 () => (float[2] a) {
                    k = Constant<value = float[2] {1, 2}>()
                    k2 = Mul(k, k)
                    a = Add(x, k2) },
                else_branch = g2 () => (float[2] b) { b = Neg(x) }>
        }""")

    optimized, report = apply_pass(ConstantFolding(), model)

    then_ops = [n.op_type for a in optimized.graph.node[0].attribute if a.name == "then_branch" for n in a.g.node]
    assert then_ops == ["Add"]
    assert report.changes == 2
    assert evaluations == [1]  # one session for the then branch; none for graphs with nothing to fold
    for cond in (True, False):
        assert_same(model, optimized, {"x": np.array([1.0, -1.0], np.float32), "c": np.array(cond)})


# -- cleanup ---------------------------------------------------------------------------------------
def test_dead_branch_and_its_initializer_are_removed() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) <float[2] w = {3.0, 4.0}> {
            y = Relu(x)
            d = Mul(x, w)
            e = Sigmoid(d)
        }""")

    optimized, report = apply_pass(DeadNodeCleanup(), model)

    assert op_counts(optimized) == {"Relu": 1}
    assert report.details == {"nodes_removed": 2, "initializers_removed": 1, "duplicate_initializers_merged": 0}
    assert len(optimized.graph.initializer) == 0
    assert_same(model, optimized, {"x": np.array([-1.0, 2.0], np.float32)})


def test_duplicate_initializers_are_merged_when_asked() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) <float[2] w1 = {3.0, 4.0}, float[2] w2 = {3.0, 4.0}> {
            a = Mul(x, w1)
            y = Add(a, w2)
        }""")

    optimized, report = apply_pass(DeadNodeCleanup(merge_duplicate_constants=True), model)

    assert [i.name for i in optimized.graph.initializer] == ["w1"]
    assert report.details["duplicate_initializers_merged"] == 1
    assert_same(model, optimized, {"x": np.array([-1.0, 2.0], np.float32)})


# -- shape-inference -------------------------------------------------------------------------------
def test_shape_inference_annotates_intermediates() -> None:
    # w is 16 MiB: it enters the inference probe as a typed input rather than as data.
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                        helper.make_node("ReduceSum", ["r"], ["y"], keepdims=0)],
                       [tensor("x", ["N", 4])], [tensor("y", [])], {"w": np.full((4, 1 << 20), 0.5, np.float32)})

    optimized, report = apply_pass(ShapeInference(), model)

    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in optimized.graph.value_info}
    assert shapes == {"h": ["N", 1 << 20], "r": ["N", 1 << 20]}
    assert report.changes == 2
    assert numpy_helper.to_array(optimized.graph.initializer[0]).tobytes() == \
        numpy_helper.to_array(model.graph.initializer[0]).tobytes()
    assert_same(model, optimized, {"x": np.ones((2, 4), np.float32)})


def test_shape_inference_types_same_named_tensors_of_two_branches_each_their_own_way() -> None:
    # setup: each branch has a local 'tmp', int64 in one and float32 in the other (valid ONNX)
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x, bool c) => (float[2, 3] y) {
            y = If(c) <
                then_branch = g1 () => (float[2, 3] a) { tmp = Cast<to = 7>(x)  a = Cast<to = 1>(tmp) },
                else_branch = g2 () => (float[2, 3] b) { tmp = Relu(x)  b = Identity(tmp) }>
        }""")
    # execute
    optimized, _ = apply_pass(ShapeInference(), model)
    # assert: each branch's tmp has its own type, and the model still runs both ways
    then_branch, else_branch = (attr.g for attr in optimized.graph.node[0].attribute)
    types = [{v.name: v.type.tensor_type.elem_type for v in b.value_info}["tmp"] for b in (then_branch, else_branch)]
    assert types == [TensorProto.INT64, TensorProto.FLOAT]
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    for cond in (True, False):
        assert_same(model, optimized, {"x": x, "c": np.array(cond)})


@pytest.mark.parametrize("text,note", [
    ("float[2, 3] x) => (float[3, 2] y) { y = Add(x, x) }",
     "shape inference found errors, kept what lenient inference infers: [ShapeInferenceError] Inference error(s): "
     "(op_type:Add): [ShapeInferenceError] Inferred shape and existing shape differ in dimension 0: (2) vs (3)"),
    ("float[2, 3] x) => (float[2, 3] y) { t = my.Foo(x)  y = Add(t, x) }",
     "ops of custom domain(s) my have no shape inference; tensors computed from them may stay untyped"),
])
def test_shape_inference_problems_are_notes_not_errors(text: str, note: str) -> None:
    graph = import_graph(onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17, "my" : 1]> g (' + text))

    report = ShapeInference().run(graph, PassContext())

    assert report.changes == 0
    assert report.notes == [note]


# -- every pass ------------------------------------------------------------------------------------
MIXED = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, 4, 4] x) => (float[N, 4] y) {
        zero = Constant<value = int64[1] {0}>()
        one = Constant<value = int64[1] {1}>()
        m1 = Constant<value = int64[1] {-1}>()
        i = Identity(x)
        c = Conv<pads = [1, 1, 1, 1]>(i, W)
        b = BatchNormalization(c, gamma, beta, mean, var)
        s = Shape(b)
        n = Slice(s, zero, one)
        shape = Concat<axis = 0>(n, m1)
        p = ReduceMean<axes = [2, 3], keepdims = 1>(b)
        y = Reshape(p, shape)
        dead = Sigmoid(b)
    }"""


@pytest.mark.parametrize("pass_cls", [ShapeInference, ConstantFolding, EliminateIdentity, FoldBatchNorm,
                                      DeadNodeCleanup])
def test_every_pass_is_idempotent_and_keeps_outputs(pass_cls: type, rng: np.random.Generator) -> None:
    model = onnx.parser.parse_model(MIXED)
    values = {"W": rng.normal(size=(4, 2, 3, 3)), **bn_params(rng, 4)}
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items())
    onnx.checker.check_model(model, full_check=True)
    feeds = {"x": rng.normal(size=(3, 2, 4, 4)).astype(np.float32)}
    tol = pass_cls.tolerance

    once, first = apply_pass(pass_cls(), model)
    twice, second = apply_pass(pass_cls(), once)

    assert first.modified and second.changes == 0
    assert op_counts(twice) == op_counts(once)
    assert_same(model, once, feeds, tol.rtol, tol.atol)


@pytest.mark.parametrize(("settings", "reason"), [({"max_abs_weight": 1e-3}, "above max_abs_weight=0.001"),
                                                  ({"exclude_nodes": ("bn",)}, "excluded by exclude_nodes")])
def test_batchnorm_left_unfolded_by_a_limit_or_by_name(settings: dict, reason: str, rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(size=(8, 4, 3, 3)).astype(np.float32), **bn_params(rng, 8)}
    bn = bn_node("c", "y")
    bn.name = "bn"
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), bn],
                       [tensor("x", ["N", 4, 6, 6])], [tensor("y", ["N", 8, 6, 6])], inits)

    optimized, report = apply_pass(FoldBatchNorm(**settings), model)

    assert op_counts(optimized) == {"Conv": 1, "BatchNormalization": 1} and report.changes == 0
    assert any(s.target == "bn" and reason in s.reason for s in report.skipped)


def test_batchnorm_exclusion_of_an_unknown_node_is_refused(rng: np.random.Generator) -> None:
    from onnxopt.errors import PreconditionError

    inits = {"W": rng.normal(size=(8, 4, 3, 3)).astype(np.float32), **bn_params(rng, 8)}
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), bn_node("c", "y")],
                       [tensor("x", ["N", 4, 6, 6])], [tensor("y", ["N", 8, 6, 6])], inits)
    with pytest.raises(PreconditionError, match="exclude_nodes"):
        apply_pass(FoldBatchNorm(exclude_nodes=("no_such_bn",)), model)
