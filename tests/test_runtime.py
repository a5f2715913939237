"""onnxruntime sessions: extra outputs and the external-data path leave the caller's model as it was."""

from __future__ import annotations

import gc

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt.model_io as model_io
import onnxopt.runtime as runtime
from onnxopt.runtime import make_session


def _two_layer_model(rng: np.random.Generator) -> onnx.ModelProto:
    w1 = numpy_helper.from_array(rng.standard_normal((64, 256)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((256, 8)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("via_file", [False, True])
def test_extra_outputs_are_exposed_and_the_model_is_left_unchanged(
        via_file: bool, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    # setup: via_file sends the model through the external-data path taken above ~1.8 GB
    model = _two_layer_model(rng)
    if via_file:
        monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1024)
    before = model.SerializeToString()
    x = rng.standard_normal((3, 64)).astype(np.float32)
    # execute
    session = make_session(model, outputs=["h", "r", "y"])
    h, r, y = session.run(["h", "r", "y"], {"x": x})
    # assert: the intermediate values are the real ones, and the caller's proto is byte-identical
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(h, x @ w1, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(r, np.maximum(h, 0))
    assert y.shape == (3, 8)
    assert model.SerializeToString() == before


def test_extra_outputs_need_a_model_proto(tmp_path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_two_layer_model(rng), str(path))
    with pytest.raises(TypeError, match="ModelProto"):
        make_session(path, outputs=["h"])


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_failed_external_data_save_leaves_the_model_intact(monkeypatch: pytest.MonkeyPatch,
                                                              rng: np.random.Generator) -> None:
    import resource
    import signal

    # setup: the external-data path with a file-size limit below the weights' 72 KiB (a full disk)
    model = _two_layer_model(rng)
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1024)
    before = model.SerializeToString()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # execute
    resource.setrlimit(resource.RLIMIT_FSIZE, (70_000, hard))
    try:
        with pytest.raises(runtime.OnnxoptError, match="File too large"):
            make_session(model, outputs=["h"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    # assert: the weights written before the failure are back in the proto, which still runs
    assert model.SerializeToString() == before
    assert make_session(model).run(None, {"x": np.ones((1, 64), np.float32)})[0].shape == (1, 8)


def test_a_graph_session_gives_the_proto_results_and_outlives_the_graph(rng: np.random.Generator) -> None:
    # setup: w1 (64 KiB) and w2 (8 KiB) are over the detaching threshold (4 KiB)
    model = _two_layer_model(rng)
    graph = gs.import_onnx(model)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    expected = make_session(model, outputs=["h"]).run(["h", "y"], {"x": x})
    # execute: the graph's weights are handed over from memory, then the graph is dropped
    session = make_session(graph, outputs=["h"])
    del graph
    gc.collect()
    got = session.run(["h", "y"], {"x": x})
    # assert: exactly the proto's results; the two weights went over as external initializers
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert {i.name for i in session.get_inputs()} == {"x"}
    assert sorted(session._onnxopt_weights[i].numpy().shape for i in range(2)) == [(64, 256), (256, 8)]


def test_a_graph_session_keeps_small_constants_in_the_model(rng: np.random.Generator) -> None:
    # setup: a 16-byte shape constant must stay in the model (Reshape reads its value)
    graph = gs.import_onnx(_two_layer_model(rng))
    y = graph.outputs[0]
    flat = gs.Variable("flat", dtype=np.float32)
    graph.nodes.append(gs.Node("Reshape", "reshape", inputs=[y, gs.Constant("shape", np.array([-1, 4], np.int64))],
                               outputs=[flat]))
    graph.outputs = [flat]
    # execute
    session = make_session(graph)
    out = session.run(None, {"x": np.ones((2, 64), np.float32)})[0]
    # assert: only the two large weights went over as external initializers
    assert out.shape == (4, 4)
    assert len(session._onnxopt_weights) == 2
