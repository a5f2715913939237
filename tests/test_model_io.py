"""Model loading and safe, atomic saving."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse, run_model

from onnxopt.errors import ModelLoadError, ModelSaveError
from onnxopt.model_io import load_model, save_model, save_text

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x) => (float[N, 4] y) {
    y = Relu(x)
}
"""


@pytest.fixture
def model() -> onnx.ModelProto:
    m = parse(TEXT)
    m.metadata_props.add(key="origin", value="test")
    return m


def test_save_then_load_round_trips(tmp_path: Path, model: onnx.ModelProto) -> None:
    dest = save_model(model, tmp_path / "m.onnx")
    loaded = load_model(dest)
    assert loaded.graph == model.graph
    assert {p.key: p.value for p in loaded.metadata_props} == {"origin": "test"}
    assert [f.name for f in tmp_path.iterdir()] == ["m.onnx"]  # no temp files left


def test_refuses_to_overwrite_input(tmp_path: Path, model: onnx.ModelProto) -> None:
    src = save_model(model, tmp_path / "m.onnx")
    before = src.read_bytes()
    with pytest.raises(ModelSaveError, match="overwrite the input"):
        save_model(model, tmp_path / "." / "m.onnx", input_path=src)
    assert src.read_bytes() == before


def test_refuses_a_destination_that_is_not_a_regular_file(tmp_path: Path, model: onnx.ModelProto) -> None:
    # setup: a named pipe stands in for /dev/null and other special files
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    # execute / assert
    with pytest.raises(ModelSaveError, match="not a regular file"):
        save_model(model, fifo)
    with pytest.raises(ModelSaveError, match="not a regular file"):
        save_text("{}", fifo)
    assert fifo.exists() and not fifo.is_file()


def test_report_never_replaces_a_model(tmp_path: Path, model: onnx.ModelProto) -> None:
    src = save_model(model, tmp_path / "m.onnx")
    before = src.read_bytes()
    with pytest.raises(ModelSaveError, match="over a model"):
        save_text("{}", tmp_path / "m.onnx", protected=[src])
    assert src.read_bytes() == before
    assert save_text("{}", tmp_path / "r.json", protected=[src]).read_text() == "{}"


def test_refuses_model_that_fails_checker(tmp_path: Path, model: onnx.ModelProto) -> None:
    model.graph.node[0].input[0] = "missing"
    with pytest.raises(ModelSaveError, match="onnx.checker"):
        save_model(model, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_refuses_model_onnxruntime_cannot_load(tmp_path: Path) -> None:
    # Valid for the checker (custom domain ops are not checked), unknown to onnxruntime.
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    agraph (float[2] x) => (float[2] y) { y = com.example.Frobnicate(x) }
    """)
    with pytest.raises(ModelSaveError, match="onnxruntime cannot load"):
        save_model(m, tmp_path / "custom.onnx")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_existing_output(tmp_path: Path, model: onnx.ModelProto) -> None:
    dest = save_model(model, tmp_path / "out.onnx")
    before = dest.read_bytes()
    model.graph.node[0].input[0] = "missing"
    with pytest.raises(ModelSaveError):
        save_model(model, dest)
    assert dest.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "invalid ONNX model|not an ONNX model"), (b"hello, this is not onnx\n", "not an ONNX model|cannot be read"),
     (None, "no such file")],
)
def test_load_errors(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "x.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match):
        load_model(path)


def test_load_truncated_model(tmp_path: Path, model: onnx.ModelProto) -> None:
    data = model.SerializeToString()
    path = tmp_path / "t.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_model(path)


def test_external_data_is_loaded(tmp_path: Path) -> None:
    weight = np.arange(4096, dtype=np.float32).reshape(64, 64)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.numpy_helper.from_array(weight, "w")])
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    loaded = load_model(path)
    x = np.ones((1, 64), np.float32)
    np.testing.assert_array_equal(run_model(loaded, {"x": x})[0], x @ weight)


def test_missing_external_data_is_a_clear_error(tmp_path: Path) -> None:
    weight = np.ones((64, 64), np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.numpy_helper.from_array(weight, "w")])
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    os.remove(tmp_path / "ext.data")
    with pytest.raises(ModelLoadError, match="ext"):
        load_model(path)


def test_tensor_bytes_counts_initializers_from_shape_and_type() -> None:
    from onnx import numpy_helper

    from onnxopt.model_io import tensor_bytes

    inits = [numpy_helper.from_array(np.zeros((1000, 1000), np.float32), "w"),
             numpy_helper.from_array(np.zeros(10, np.int64), "i"),
             numpy_helper.from_array(np.zeros((10, 10), np.float16), "h"),
             onnx.helper.make_tensor("s", onnx.TensorProto.STRING, [2], [b"ab", b"cde"])]
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], inits))
    assert tensor_bytes(model) == 4_000_000 + 80 + 200 + inits[3].ByteSize()
    # external data lives outside the proto: it does not count
    model.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    assert tensor_bytes(model) == 80 + 200 + inits[3].ByteSize()
