"""The canonical rewrites written as rules (name-nodes, sum-to-add, fold-conv-mul, fold-conv-add,
matmul-add-to-gemm): exact op counts after, outputs compared in onnxruntime, a reason for every node
of the rule's ops left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import apply_pass, op_counts, run_model
from passes.canonical import FoldConvAdd, FoldConvMul, MatMulAddToGemm, NameNodes, SumToAdd

RTOL, ATOL = 1e-4, 1e-5


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x: list,
           outputs: dict[str, list]) -> onnx.ModelProto:
    """float32 initializers, except int64 ones (shapes)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        [numpy_helper.from_array(v if v.dtype == np.int64 else np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv_then(op: str, operand_shape: tuple[int, ...], rng: np.random.Generator, bias: bool) -> onnx.ModelProto:
    """conv(x, w[, b]) -> op(., k) -> Relu = y, and plain_conv(x, w) -> Relu = z (no follower to fold)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node(op, ["c", "k"], ["m"], name="follower"),
             helper.make_node("Relu", ["m"], ["y"], name="relu"),
             helper.make_node("Conv", ["x", "w"], ["plain"], name="plain_conv", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["plain"], ["z"], name="relu2")]
    inits = {"w": rng.standard_normal((3, 2, 1, 1)), "k": rng.uniform(0.5, 2.0, operand_shape)}
    if bias:
        inits["b"] = rng.standard_normal(3)
    return _model(nodes, inits, ["N", 2, 4, 4], {"y": ["N", 3, 4, 4], "z": ["N", 3, 4, 4]})


@pytest.mark.parametrize("rule", [FoldConvMul, FoldConvAdd])
@pytest.mark.parametrize("operand_shape", [(1, 3, 1, 1), (3, 1, 1), ()])
@pytest.mark.parametrize("bias", [True, False])
def test_per_channel_constant_after_conv_folds_into_it(rule: type, operand_shape: tuple[int, ...], bias: bool,
                                                      rng: np.random.Generator) -> None:
    # setup
    op = "Mul" if rule is FoldConvMul else "Add"
    model = _conv_then(op, operand_shape, rng, bias)
    feeds = {"x": rng.standard_normal((2, 2, 4, 4)).astype(np.float32)}
    # execute
    out, report = apply_pass(rule(), model)
    # assert: the follower is gone, the other Conv is left alone with its reason, outputs agree
    assert op_counts(out) == {"Conv": 2, "Relu": 2}
    assert report.changes == 1
    assert [(s.target, s.reason) for s in report.skipped] == [
        ("plain_conv", f"output feeds Relu with 1 input(s), not a two-input {op}")]
    for a, b in zip(run_model(model, feeds), run_model(out, feeds)):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("operand_shape", "reason"), [
    ((1, 3, 4, 4), "the Mul operand 'k' of shape [1, 3, 4, 4] is not one value per output channel"),
    ((1, 1, 1, 4), "the Mul operand 'k' of shape [1, 1, 1, 4] is not one value per output channel"),
])
def test_constant_that_is_not_per_channel_stays_with_its_reason(operand_shape: tuple[int, ...], reason: str,
                                                                rng: np.random.Generator) -> None:
    # setup
    model = _conv_then("Mul", operand_shape, rng, bias=True)
    # execute
    out, report = apply_pass(FoldConvMul(), model)
    # assert
    assert op_counts(out) == op_counts(model) and report.changes == 0
    assert ("conv", reason) in [(s.target, s.reason) for s in report.skipped]


def test_shared_weight_is_copied_for_the_folded_conv(rng: np.random.Generator) -> None:
    # setup: conv and plain_conv read the same w; only conv is followed by a Mul
    model = _conv_then("Mul", (1, 3, 1, 1), rng, bias=False)
    feeds = {"x": rng.standard_normal((2, 2, 4, 4)).astype(np.float32)}
    # execute
    out, _ = apply_pass(FoldConvMul(), model)
    # assert: plain_conv still reads the original w
    plain = next(n for n in out.graph.node if n.name == "plain_conv")
    conv = next(n for n in out.graph.node if n.name == "conv")
    assert plain.input[1] == "w" and conv.input[1] != "w"
    np.testing.assert_allclose(run_model(out, feeds)[1], run_model(model, feeds)[1], rtol=0, atol=0)


def test_two_input_sum_becomes_add_and_three_inputs_stay(rng: np.random.Generator) -> None:
    # setup
    nodes = [helper.make_node("Sum", ["x", "k"], ["s2"], name="sum2"),
             helper.make_node("Sum", ["x", "k", "s2"], ["y"], name="sum3")]
    model = _model(nodes, {"k": rng.standard_normal((1, 3))}, ["N", 3], {"y": ["N", 3]})
    feeds = {"x": rng.standard_normal((4, 3)).astype(np.float32)}
    # execute
    out, report = apply_pass(SumToAdd(), model)
    # assert: exact (same op on the same values)
    assert op_counts(out) == {"Add": 1, "Sum": 1} and report.changes == 1
    assert [(s.target, s.reason) for s in report.skipped] == [("sum3", "Sum of 3 inputs (Add takes two)")]
    np.testing.assert_array_equal(run_model(out, feeds)[0], run_model(model, feeds)[0])


def test_matmul_add_becomes_gemm_only_for_a_rank_2_input(rng: np.random.Generator) -> None:
    # setup: fc reads [N, 6]; fc3 reads [N, 2, 6] (Gemm needs rank 2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "b"], ["y"], name="fc_bias"),
             helper.make_node("Reshape", ["x", "shape"], ["x3"], name="reshape"),
             helper.make_node("MatMul", ["x3", "w"], ["m3"], name="fc3"),
             helper.make_node("Add", ["m3", "b"], ["z"], name="fc3_bias")]
    model = _model(nodes, {"w": rng.standard_normal((6, 5)), "b": rng.standard_normal(5),
                           "shape": np.array([-1, 1, 6], np.int64)}, ["N", 6], {"y": ["N", 5], "z": [None, 1, 5]})
    feeds = {"x": rng.standard_normal((4, 6)).astype(np.float32)}
    # execute
    out, report = apply_pass(MatMulAddToGemm(), model)
    # assert
    assert op_counts(out) == {"Gemm": 1, "Reshape": 1, "MatMul": 1, "Add": 1} and report.changes == 1
    assert [(s.target, s.reason) for s in report.skipped] == [("fc3", "first input has rank 3, Gemm needs 2")]
    for a, b in zip(run_model(model, feeds), run_model(out, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_unnamed_and_duplicate_nodes_get_unique_names() -> None:
    # setup: two unnamed nodes and two named "a"
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["n"], name="a"),
             helper.make_node("Abs", ["n"], ["b"], name="a"), helper.make_node("Relu", ["b"], ["y"])]
    model = _model(nodes, {}, ["N", 3], {"y": ["N", 3]})
    # execute
    out, report = apply_pass(NameNodes(), model)
    # assert
    assert [n.name for n in out.graph.node] == ["Relu_0", "a", "a_1", "Relu_3"] and report.changes == 3
    assert report.notes == ["gave 3 unnamed or duplicate-named node(s) unique names"]
