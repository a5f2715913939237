"""Models over protobuf's 2 GB limit, end to end, on a stand-in: protobuf's limit (as onnx's checker
and serialiser read it) and onnxopt's external-data threshold are lowered to a few hundred KB, so a
300 KB model with external data takes the code path of a 2.4 GB one without allocating it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_model

import onnxopt.model_io as model_io
from onnxopt.cli import main
from onnxopt.errors import ModelRunError
from onnxopt.model_io import load_model, save_model

LAYERS, WIDTH = 4, 128  # 4 x 64 KB of float32 weights
LIMIT = 150_000


def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    names = ["x", *(f"h{i}" for i in range(1, LAYERS)), "y"]
    nodes = [onnx.helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]]) for i in range(LAYERS)]
    weights = [onnx.numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / WIDTH ** 0.5).astype(np.float32),
                                            f"w{i}") for i in range(LAYERS)]
    graph = onnx.helper.make_graph(
        nodes, "mlp", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", WIDTH])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", WIDTH])], weights)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


@pytest.fixture
def large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in written with external data, under lowered limits."""
    monkeypatch.setattr(onnx.checker, "MAXIMUM_PROTOBUF", LIMIT)
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 100_000)
    path = tmp_path / "large.onnx"
    onnx.save_model(_mlp(), str(path), save_as_external_data=True, location="large.onnx.data")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((16, WIDTH)).astype(np.float32))
    return path


def test_the_stand_in_fails_where_a_2gb_model_fails(large: Path) -> None:
    # the in-memory check that broke on 2.4 GB breaks on the stand-in too
    with pytest.raises(ValueError, match="too large"):
        onnx.checker.check_model(onnx.load(str(large)))


@pytest.mark.parametrize("command", [
    ["inspect", "{model}", "--json"],
    ["compare", "{model}", "{model}", "--data", "{calib}", "--latency-runs", "0", "--json"],
    ["optimize", "{model}", "-o", "{out}", "--pass", "fp16", "--no-eval", "--json"],
    ["optimize", "{model}", "-o", "{out}", "--pass", "int8", "--calib", "{calib}", "--no-eval", "--json"],
], ids=["inspect", "compare", "fp16", "int8"])
def test_commands_succeed_on_a_model_over_the_limit(large: Path, command: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # setup
    out = large.with_name("out.onnx")
    args = [a.format(model=large, calib=large.with_name("calib.npz"), out=out) for a in command]
    # execute
    code = main(args)
    # assert
    assert code == 0, capsys.readouterr().err
    json.loads(capsys.readouterr().out)
    if command[0] == "optimize":
        result = load_model(out)
        feed = {"x": np.random.default_rng(2).standard_normal((2, WIDTH)).astype(np.float32)}
        atol = 0.05 if "fp16" in command else 0.3  # four layers of int8 rounding on outputs of about +-2
        np.testing.assert_allclose(run_model(result, feed)[0], run_model(_mlp(), feed)[0], atol=atol)
    if "fp16" in command:  # 128 KB of float16 weights: still over the threshold, written beside the model
        assert out.with_name("out.onnx.data").is_file()
        assert out.stat().st_size < 10_000


def test_a_model_that_fails_its_first_run_is_not_written(tmp_path: Path) -> None:
    # setup: a float16 ScatterND with reduction=add loads and fails when it runs
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float16[4] data, int64[1,1] idx, float16[1] upd) => (float16[4] y) {
            y = ScatterND <reduction="add"> (data, idx, upd)
        }""")
    feed = {"data": np.ones(4, np.float16), "idx": np.zeros((1, 1), np.int64), "upd": np.ones(1, np.float16)}
    out = tmp_path / "out.onnx"
    # execute / assert
    with pytest.raises(ModelRunError, match="loads but fails at run time"):
        save_model(model, out, feed=feed)
    assert not out.exists()
    assert save_model(model, out) == out.resolve()
