"""Graph import/export: what a round trip keeps, weights shared by subgraphs stored once, and weights
detached for a weightless export."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import parse, run_model

from onnxopt.graph import export, import_graph, subgraph_protos, weights_detached
from onnxopt.runtime import make_session

# W is an outer-scope weight read by both branches of the If; K is local to the then branch
IF_SHARED = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 2] x, bool c) => (float[N, 2] y) <float[2, 2] W = {1.0, 2.0, 3.0, 4.0}> {
    y = If(c) <
        then_branch = g1 () => (float[N, 2] a) <float[2] K = {0.5, 0.25}> { h = MatMul(x, W)  a = Add(h, K) },
        else_branch = g2 () => (float[N, 2] b) { b = MatMul(x, W) }>
}
"""


def test_round_trip_keeps_model_fields_and_numbers() -> None:
    # setup
    model = parse(IF_SHARED)
    model.metadata_props.add(key="origin", value="test")
    model.doc_string = "doc"
    x = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
    # execute
    out = export(import_graph(model), model)
    # assert
    onnx.checker.check_model(out, full_check=True)
    assert (out.doc_string, {p.key: p.value for p in out.metadata_props}) == ("doc", {"origin": "test"})
    assert list(out.opset_import) == list(model.opset_import)
    for cond in (True, False):
        feeds = {"x": x, "c": np.array(cond)}
        np.testing.assert_array_equal(run_model(out, feeds)[0], run_model(model, feeds)[0])


def test_weight_shared_by_two_branches_is_stored_once_in_the_main_graph() -> None:
    # execute
    out = export(import_graph(parse(IF_SHARED)))
    # assert: onnx-graphsurgeon alone would write W into both branches
    then_branch, else_branch = subgraph_protos(out.graph)
    assert [t.name for t in out.graph.initializer] == ["W"]
    assert [t.name for t in then_branch.initializer] == ["K"]
    assert list(else_branch.initializer) == []


def test_same_name_with_different_values_in_two_branches_stays_local() -> None:
    # setup: two branch-local weights that happen to share a name
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2] x, bool c) => (float[2] y) {
            y = If(c) <
                then_branch = g1 () => (float[2] a) <float[2] K = {1.0, 2.0}> { a = Add(x, K) },
                else_branch = g2 () => (float[2] b) <float[2] K = {3.0, 4.0}> { b = Add(x, K) }>
        }""")
    # execute
    out = export(import_graph(model))
    # assert
    assert list(out.graph.initializer) == []
    assert [[t.name for t in g.initializer] for g in subgraph_protos(out.graph)] == [["K"], ["K"]]
    x = np.array([1.0, 1.0], np.float32)
    for cond in (True, False):
        feeds = {"x": x, "c": np.array(cond)}
        np.testing.assert_array_equal(run_model(out, feeds)[0], run_model(model, feeds)[0])


def test_fresh_names_avoid_every_name_in_the_graph_and_its_subgraphs() -> None:
    from onnxopt.graph import FreshNames

    names = FreshNames.of(import_graph(parse(IF_SHARED)))
    assert [names.fresh("W"), names.fresh("W"), names.fresh("h"), names.fresh("new")] == ["W_1", "W_2", "h_1", "new"]


def _outer_scope_weight_model() -> onnx.ModelProto:
    """W (32 KiB, over the detaching threshold) is read by a main-graph MatMul and, through outer
    scope, by the then branch of an If; B (8 bytes) is small."""
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "W")
    b = onnx.numpy_helper.from_array(np.array([1.0, -1.0], np.float32), "B")
    then_branch = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "W"], ["a"])], "then", [],
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["N", 128])])
    else_branch = onnx.helper.make_graph(
        [onnx.helper.make_node("Neg", ["h"], ["b"])], "else", [],
        [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, ["N", 128])])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
         onnx.helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch),
         onnx.helper.make_node("Add", ["y", "y"], ["z"], name="add"),
         onnx.helper.make_node("Reshape", ["z", "S"], ["r"], name="reshape"),
         onnx.helper.make_node("Mul", ["B", "B"], ["bb"], name="mul")],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64]),
              onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, None),
         onnx.helper.make_tensor_value_info("bb", onnx.TensorProto.FLOAT, [2])],
        [w, b, onnx.numpy_helper.from_array(np.array([-1, 256], np.int64), "S")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_weights_detached_puts_every_weight_back_also_after_an_error() -> None:
    # setup
    graph = import_graph(_outer_scope_weight_model())
    before = export(graph).SerializeToString()
    # execute: only W is detached; the block fails
    with pytest.raises(RuntimeError, match="inside"):
        with weights_detached(graph) as detached:
            assert list(detached) == ["W"]
            assert [t.name for t in graph.inputs] == ["x", "c", "W"]
            raise RuntimeError("inside")
    # assert: the graph exports byte for byte as before
    assert export(graph).SerializeToString() == before


def test_a_graph_session_serves_a_weight_read_through_outer_scope() -> None:
    # setup
    model = _outer_scope_weight_model()
    graph = import_graph(model)
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    # execute / assert: both branches give exactly the proto's results, with W passed from memory
    session = make_session(graph)
    assert len(session._onnxopt_weights) == 1
    for cond in (True, False):
        feeds = {"x": x, "c": np.array(cond)}
        for got, expected in zip(session.run(None, feeds), run_model(model, feeds)):
            np.testing.assert_array_equal(got, expected)


def test_weights_detached_restores_consumer_order_and_the_inputs_list() -> None:
    # setup: N reads W twice, M once in between: W.outputs is [N, M, N]
    w = gs.Constant("W", np.ones((64, 64), np.float32))
    x = gs.Variable("x", np.float32, [64, 64])
    a, b, c = (gs.Variable(name, np.float32) for name in "abc")
    n = gs.Node("Sum", "N", inputs=[w, x], outputs=[a])
    m = gs.Node("Mul", "M", inputs=[x, w], outputs=[b])
    n.inputs.append(w)
    graph = gs.Graph(nodes=[n, m, gs.Node("Add", "P", inputs=[a, b], outputs=[c])], inputs=[x], outputs=[c], opset=17)
    held = graph.inputs
    # execute
    with weights_detached(graph) as detached:
        assert list(detached) == ["W"] and held[-1].name == "W"
    # assert: the same consumers in the same order, and the caller's inputs list without the stand-in
    assert [node.name for node in w.outputs] == ["N", "M", "N"]
    assert [t is w for t in n.inputs] == [True, False, True] and m.inputs[1] is w
    assert graph.inputs is held and [t.name for t in held] == ["x"]


def test_a_sparse_weight_is_left_in_the_model_and_the_session_runs_it() -> None:
    # setup: a 64x64 (16 KiB dense) sparse initializer with three values
    values = onnx.numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "W")
    indices = onnx.numpy_helper.from_array(np.array([0, 65, 4095], np.int64), "W_idx")
    body = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])])
    body.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, [64, 64]))
    model = onnx.helper.make_model(body, opset_imports=[onnx.helper.make_opsetid("", 17)])
    graph = import_graph(model)
    feeds = {"x": np.arange(64, dtype=np.float32)[None]}
    # execute
    with weights_detached(graph) as detached:
        assert detached == {}
    got = make_session(graph).run(None, feeds)[0]
    # assert
    np.testing.assert_array_equal(got, run_model(model, feeds)[0])
