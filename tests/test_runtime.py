"""onnxruntime sessions: extra outputs and the external-data path leave the caller's model as it was."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

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
        monkeypatch.setattr(runtime, "EXTERNAL_DATA_THRESHOLD", 1024)
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
    monkeypatch.setattr(runtime, "EXTERNAL_DATA_THRESHOLD", 1024)
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


def test_serialized_with_outputs_gives_a_session_the_intermediate_tensors(rng: np.random.Generator) -> None:
    # setup
    model = _two_layer_model(rng)
    before = model.SerializeToString()
    x = rng.standard_normal((2, 64)).astype(np.float32)
    # execute: the bytes carry the extra outputs; the proto does not keep them
    image = runtime.serialized_with_outputs(model, ["h", "r"])
    h, r = make_session(image).run(["h", "r"], {"x": x})
    # assert
    assert isinstance(image, bytes) and model.SerializeToString() == before
    np.testing.assert_array_equal(r, np.maximum(h, 0))
