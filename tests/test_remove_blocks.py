"""remove-blocks: finding residual blocks, ranking them, removing them exactly where the branch is zero.

The models are two residual blocks of 1x1 convolutions on 2 channels with integer weights, so
outputs are exact in float32 and a removed zero branch must leave them identical.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import apply_pass, op_counts, parse, run_model
from export_shapes import byte_classifier
from onnx import numpy_helper

from onnxopt.data import open_data
from onnxopt.errors import PreconditionError
from onnxopt.pass_base import PassContext
from onnxopt.stats import model_stats
from passes.pruning import RemoveBlocks

# block 1: x -> w1a -> Relu -> w1b, y1 = x + f1; block 2 likewise on z1 with the weights given
TWO_BLOCKS = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[N, 2, 3, 3] input) => (float[N, 2, 3, 3] {out}) <
    float[2, 2, 1, 1] ws = {{1, -1, 1, 1}}, float[2, 2, 1, 1] w1a = {{1, 0, -1, 1}},
    float[2, 2, 1, 1] w1b = {{0, 1, 1, -1}}, float[2, 2, 1, 1] w2a = {w2a},
    float[2, 2, 1, 1] w2b = {w2b}, float[2] b2b = {b2b}
> {{
    s = Conv(input, ws)
    x = Relu(s)
    a1 = Conv(x, w1a)
    r1 = Relu(a1)
    f1 = Conv(r1, w1b)
    y1 = Add(x, f1)
    z1 = Relu(y1)
    a2 = Conv(z1, w2a)
    r2 = Relu(a2)
    f2 = Conv(r2, w2b, b2b)
    y2 = Add(z1, f2)
    {tail}
}}
"""


def two_blocks(w2a: str = "{1, 1, 0, -1}", w2b: str = "{0, 0, 0, 0}", b2b: str = "{0, 0}",
               output_is_add: bool = False, extra_output: str = "") -> onnx.ModelProto:
    out = "y2" if output_is_add else "out"
    outputs = out + (f", float[N, 2, 3, 3] {extra_output}" if extra_output else "")
    return parse(TWO_BLOCKS.format(w2a=w2a, w2b=w2b, b2b=b2b, out=outputs,
                                   tail="" if output_is_add else "out = Relu(y2)"))


def feeds(n: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).integers(-1, 2, (n, 2, 3, 3)).astype(np.float32)}


def calibration(model: onnx.ModelProto) -> PassContext:
    return PassContext(calibration=open_data([feeds(32, seed=7)], model))


def assert_identical(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    x = feeds()
    for a, b in zip(run_model(before, x), run_model(after, x)):
        np.testing.assert_array_equal(b, a)


def test_dead_block_is_removed_at_default_settings_with_identical_outputs() -> None:
    # setup: block 2's convolutions are all zero (sparsity 1, importance 0)
    model = two_blocks(w2a="{0, 0, 0, 0}")
    # execute
    out, report = apply_pass(RemoveBlocks(), model)
    # assert
    assert op_counts(out) == {"Conv": 3, "Relu": 4, "Add": 1}
    assert [(b["block"], b["importance"], b["removed"]) for b in report.details["blocks"]] == [
        ("y1", 1.0, False), ("y2", 0.0, True)]
    assert any("give --calib with real inputs" in note for note in report.notes)
    assert_identical(model, out)


@pytest.mark.parametrize("max_drop, removed", [(1.0, ["y2"]), (90.0, ["y2", "y1"])])
def test_default_with_data_removes_blocks_while_the_measured_drop_is_within_budget(max_drop: float,
                                                                                  removed: list[str]) -> None:
    # setup: block 2's branch is zero; removing block 1 too moves the feature map by far more than 1%
    model = two_blocks()
    # execute
    out, report = apply_pass(RemoveBlocks(max_drop=max_drop), model, calibration(model))
    # assert
    trials = report.details["budget"]["trials"]
    assert [t["block"] for t in trials if t["within"]] == removed
    assert [b["block"] for b in report.details["blocks"] if b["removed"]] == sorted(removed)
    assert (trials[0]["metric"], trials[0]["drop"], trials[0]["samples"]) == ("relative L2 error", 0.0, 19)
    assert report.details["decided_by"].startswith(f"budget: {len(removed)} block(s) by sensitivity")
    assert any("fewer than 100" in note for note in report.notes)  # 32 calibration samples: 19 held out
    if removed == ["y2"]:
        assert not trials[1]["within"] and trials[1]["drop"] > 1.0
        assert_identical(model, out)
    else:
        assert op_counts(out) == {"Conv": 1, "Relu": 3}


def test_sensitivity_ranks_the_zero_branch_least_important() -> None:
    # setup: block 2's last conv is zero, its first is not
    model = two_blocks()
    # execute
    out, report = apply_pass(RemoveBlocks(count=1, criterion="sensitivity"), model, calibration(model))
    # assert
    importance = {b["block"]: b["importance"] for b in report.details["blocks"]}
    assert importance["y2"] == 0.0 < importance["y1"]
    assert op_counts(out) == {"Conv": 3, "Relu": 4, "Add": 1}
    assert_identical(model, out)


@pytest.mark.parametrize("with_data", [False, True])
def test_constant_branch_output_is_kept_as_an_add(with_data: bool) -> None:
    # setup: block 2's branch outputs the constant bias (1, 2)
    model = two_blocks(b2b="{1, 2}")
    ctx = calibration(model) if with_data else PassContext()
    keep_block_1 = ("a1",)
    # execute
    settings = {"count": 1, "criterion": "sparsity", "exclude_nodes": keep_block_1}
    out, report = apply_pass(RemoveBlocks(**settings), model, ctx)
    plain, _ = apply_pass(RemoveBlocks(recover=False, **settings), model, ctx)
    # assert
    assert op_counts(out) == {"Conv": 3, "Relu": 4, "Add": 2}
    assert [(b["block"], b["removed"], b["compensated"]) for b in report.details["blocks"]] == [("y2", True, True)]
    assert [(s.target, s.reason) for s in report.skipped] == [("y1", "excluded by exclude_nodes")]
    assert_identical(model, out)
    assert not np.array_equal(run_model(plain, feeds())[0], run_model(model, feeds())[0])


def test_constant_branch_on_the_last_axis_of_a_sequence_is_kept_as_an_add() -> None:
    # setup: [N, L, C] blocks with L=24 > C=16 (issue #11: the constant walk read the length as the
    # channel count); block 1's second MatMul is zero, so its branch outputs the constant bias b1.b2
    model, calib, evaluation = byte_classifier()
    weight = next(t for t in model.graph.initializer if t.name == "b1.w2")
    weight.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(weight)), "b1.w2"))
    ctx = PassContext(calibration=open_data([calib], model))
    # execute
    out, report = apply_pass(RemoveBlocks(count=1, criterion="sensitivity"), model, ctx)
    # assert
    assert [(b["block"], b["removed"], b["compensated"]) for b in report.details["blocks"]] == [
        ("b0.res", False, False), ("b1.res", True, True)]
    assert op_counts(out)["MatMul"] == op_counts(model)["MatMul"] - 2
    offset = next(numpy_helper.to_array(t) for t in out.graph.initializer if t.name.startswith("b1.res_branch"))
    assert offset.shape == (1, 1, 16)
    np.testing.assert_allclose(run_model(out, evaluation)[0], run_model(model, evaluation)[0], rtol=1e-5, atol=1e-6)


def test_block_whose_output_is_a_graph_output_becomes_identity() -> None:
    model = two_blocks(w2a="{0, 0, 0, 0}", output_is_add=True)
    out, _ = apply_pass(RemoveBlocks(), model)
    assert op_counts(out) == {"Conv": 3, "Relu": 3, "Add": 1, "Identity": 1}
    assert [o.name for o in out.graph.output] == ["y2"]
    assert_identical(model, out)


def test_block_whose_branch_is_used_outside_is_refused() -> None:
    model = two_blocks(w2a="{0, 0, 0, 0}", extra_output="r2")
    out, report = apply_pass(RemoveBlocks(), model)
    assert report.changes == 0
    assert {s.target: s.reason for s in report.skipped} == {"y2": "branch tensor 'r2' is used outside the block"}
    assert op_counts(out) == op_counts(model)


def test_add_of_two_independent_paths_is_not_a_block() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[N, 2] x, float[N, 2] x2) => (float[N, 2] y) <float[2, 2] w = {1, 0, 0, 1}> {
            h = MatMul(x, w)
            h2 = MatMul(x2, w)
            a = Add(h, h2)
            y = Relu(a)
        }""")
    out, report = apply_pass(RemoveBlocks(count=3, criterion="sparsity"), model)
    assert report.changes == 0 and report.notes == ["no removable residual block"]
    assert op_counts(out) == op_counts(model)


@pytest.mark.parametrize("settings, message", [
    ({"criterion": "sensitivity"}, "criterion=sensitivity needs calibration data"),
    ({"count": -1}, "count must be >= 0, got -1"),
    ({"count": 1}, "count and threshold rank blocks by criterion=sparsity or sensitivity; give one"),
    ({"max_drop": -0.1}, "max_drop must be in [0, 100) and search_samples at least 4, got -0.1 and 200"),
    ({"exclude_nodes": ("a1", "nosuch")}, "exclude_nodes: 'nosuch' not found among the model's nodes "
                                         "(s, x, a1, r1, f1, y1, z1, a2, r2, f2, y2, out)"),
])
def test_bad_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(PreconditionError, match=re.escape(f"remove-blocks: {message}")):
        apply_pass(RemoveBlocks(**settings), two_blocks())


LIGHT_RESNET50 = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"


@pytest.mark.skipif(not LIGHT_RESNET50.exists(), reason="onnx ships no light_resnet50.onnx")
def test_light_resnet50_blocks_are_found_and_removed() -> None:
    # setup: ResNet-50 has 16 bottleneck blocks, 4 of which change the shape (projection shortcut)
    model = onnx.load(str(LIGHT_RESNET50))
    # execute
    out, report = apply_pass(RemoveBlocks(count=3, criterion="sparsity"), model)
    # assert
    assert len(report.details["blocks"]) == 12
    assert report.changes == 3
    assert op_counts(out)["Sum"] == op_counts(model)["Sum"] - 3
    assert op_counts(out)["Conv"] == op_counts(model)["Conv"] - 9
    assert model_stats(out).macs < model_stats(model).macs
    x = {model.graph.input[0].name: np.zeros((1, 3, 224, 224), np.float32)}
    assert run_model(out, x)[0].shape == (1, 1000)
