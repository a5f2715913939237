"""fp32: float16 models back to float32 (weights exact), and the pipeline running it before passes
that need float32."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import apply_pass, op_counts, run_model
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import open_data
from onnxopt.pass_base import PassContext
from onnxopt.pipeline import Pipeline
from passes.fp16 import Fp32
from passes.int8 import Int8


def _float16_cnn(rng: np.random.Generator, *, io: int = TensorProto.FLOAT16) -> onnx.ModelProto:
    """Conv → Relu → Flatten → Gemm in float16 (``io`` float32: Casts at the boundaries)."""
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float16), "w")
    fc = numpy_helper.from_array(rng.standard_normal((3, 16)).astype(np.float16), "fc")
    nodes = [helper.make_node("Conv", ["xh", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["yh"], name="gemm", transB=1)]
    x_name, y_name = ("xh", "yh") if io == TensorProto.FLOAT16 else ("x", "y")
    if io != TensorProto.FLOAT16:
        nodes.insert(0, helper.make_node("Cast", ["x"], ["xh"], name="to_half", to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Cast", ["yh"], ["y"], name="to_float", to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info(x_name, io, ["N", 3, 2, 2])],
                              [helper.make_tensor_value_info(y_name, io, ["N", 3])], [w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_float16_io_model_becomes_float32_with_exact_weights(rng: np.random.Generator) -> None:
    # setup
    model = _float16_cnn(rng)
    x = rng.standard_normal((5, 3, 2, 2)).astype(np.float16)
    # execute
    out, report = apply_pass(Fp32(), model)
    # assert
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.FLOAT}
    assert [(i.name, i.type.tensor_type.elem_type) for i in [*out.graph.input, *out.graph.output]] == [
        ("xh", TensorProto.FLOAT), ("yh", TensorProto.FLOAT)]
    for before, after in zip(model.graph.initializer, out.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(after), numpy_helper.to_array(before).astype(np.float32))
    assert report.details == {"constants": 2, "tensors": 2, "type_attributes": 0, "casts_removed": 0}
    np.testing.assert_allclose(run_model(out, {"xh": x.astype(np.float32)})[0], run_model(model, {"xh": x})[0],
                               rtol=Fp32.tolerance.rtol, atol=Fp32.tolerance.atol)


def test_boundary_casts_become_no_ops_and_go(rng: np.random.Generator) -> None:
    # setup: float32 interface, float16 inside (what a keep-io-types float16 conversion writes)
    model = _float16_cnn(rng, io=TensorProto.FLOAT)
    x = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    # execute
    out, report = apply_pass(Fp32(), model)
    # assert: the input Cast is bypassed, the output Cast writes a graph output and stays (float → float)
    assert op_counts(out) == {"Conv": 1, "Relu": 1, "Flatten": 1, "Gemm": 1, "Cast": 1}
    assert report.details["casts_removed"] == 1 and report.details["type_attributes"] == 1
    np.testing.assert_allclose(run_model(out, {"x": x})[0], run_model(model, {"x": x})[0], rtol=2e-2, atol=2e-2)


def test_float32_model_is_left_alone(rng: np.random.Generator) -> None:
    # setup
    model = Pipeline([Fp32()]).run(_float16_cnn(rng)).model
    # execute
    out, report = apply_pass(Fp32(), model)
    # assert
    assert not report.modified and report.notes == ["no float16 tensors: nothing to convert"]
    assert op_counts(out) == op_counts(model)


def test_int8_on_a_float16_model_runs_fp32_first(rng: np.random.Generator) -> None:
    # setup: float16 calibration data, as a float16 model's users have
    model = _float16_cnn(rng)
    x = rng.standard_normal((16, 3, 2, 2)).astype(np.float16)
    ctx = PassContext(calibration=open_data({"xh": x}, model))
    # execute
    result = Pipeline([Int8()]).run(model, ctx)
    # assert: fp32 ran first and said why; int8 quantized both layers
    assert [r.pass_name for r in result.prelude] == ["fp32"]
    assert result.prelude[0].notes[0].startswith("the model holds float16 tensors and int8 work(s) on float32")
    assert op_counts(result.model)["DequantizeLinear"] >= 2 and result.reports[0].modified
    agree = run_model(result.model, {"xh": x.astype(np.float32)})[0].argmax(1) == run_model(model, {"xh": x})[0].argmax(1)
    assert agree.mean() >= 0.75


def test_conversions_are_undone_when_no_pass_changes_the_model(rng: np.random.Generator) -> None:
    # setup: a float16 opset-11 model whose only float layers are excluded from int8
    model = _float16_cnn(rng)
    model.opset_import[0].version = 11
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float16)
    ctx = PassContext(calibration=open_data({"xh": x}, model))
    # execute
    result = Pipeline([Int8(exclude_nodes=("conv", "gemm"))]).run(model, ctx)
    # assert: still float16 at opset 11, and both steps say they were undone
    assert {t.data_type for t in result.model.graph.initializer} == {TensorProto.FLOAT16}
    assert result.model.opset_import[0].version == 11
    assert [(r.pass_name, r.modified) for r in result.prelude] == [("opset-upgrade", False), ("fp32", False)]
    assert all(r.notes[-1] == "undone: no pass changed the model, so the original is kept" for r in result.prelude)
