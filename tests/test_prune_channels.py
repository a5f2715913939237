"""prune-channels: channel groups for every coupling kind, exact-zero pruning, MACs, thresholds, recovery.

Exactness tests use integer weights and inputs in {-1, 0, 1} (BatchNormalization with mean 0,
variance 1 and epsilon 0), so every intermediate value is exact in float32 whatever order the
runtime sums in: pruning channels that are exactly zero must then give identical outputs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from conftest import MODELS_DIR, apply_pass, bundled, op_counts, run_model
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import open_data
from onnxopt.errors import PreconditionError
from onnxopt.pass_base import PassContext
from onnxopt.registry import default_registry
from onnxopt.stats import model_stats
from passes.pruning.threshold import adaptive_threshold
from passes.pruning import PruneChannels


class Net:
    """A small float32 CNN built node by node, integer-valued unless ``real`` is set."""

    def __init__(self, shape: tuple[int, ...] = (1, 4, 4), seed: int = 0, real: bool = False) -> None:
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.real = real
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray | list, dtype: type = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def weights(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.real:
            return self.rng.standard_normal(shape) * 0.5
        return self.rng.integers(-1, 2, shape).astype(np.float64)

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 1, group: int = 1,
             zero: tuple[int, ...] = (), bias: list[float] | None = None) -> str:
        w = self.weights((cout, cin // group, k, k))
        w[list(zero)] = 0.0
        inputs = [x, self.const(f"{name}.w", w)] + ([self.const(f"{name}.b", bias)] if bias is not None else [])
        return self.op("Conv", inputs, name, pads=[k // 2] * 4, group=group)

    def bn(self, x: str, name: str, gamma: list[float], beta: list[float] | None = None) -> str:
        c = len(gamma)
        params = [gamma, beta if beta is not None else [0.0] * c, [0.0] * c, [1.0] * c]
        return self.op("BatchNormalization", [x] + [self.const(f"{name}.{p}", v) for p, v in zip("gbmv", params)],
                       name, epsilon=0.0)

    def gemm(self, x: str, name: str, k: int, n: int, trans_b: int = 1) -> str:
        b = self.weights((n, k) if trans_b else (k, n))
        return self.op("Gemm", [x, self.const(f"{name}.w", b), self.const(f"{name}.b", self.weights((n,)))],
                       name, transB=trans_b)

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *self.shape])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)  # types the outputs
        del model.graph.value_info[:]
        onnx.checker.check_model(model, full_check=True)
        return model


def prune(**settings: Any) -> PruneChannels:
    """The pass without rounding kept channels to multiples of 8: the test nets have 2-16 channels."""
    return PruneChannels(round_to=1, **settings)


def feeds(shape: tuple[int, ...], n: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).integers(-1, 2, (n, *shape)).astype(np.float32)}


def weight_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Node name -> shape of its input 1 (Conv/Gemm weight, BatchNormalization scale)."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if len(n.input) > 1 and n.input[1] in inits}


def weight_of(model: onnx.ModelProto, node_name: str, index: int = 1) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(t for t in model.graph.initializer if t.name == node.input[index])
    return numpy_helper.to_array(init)


def attribute(model: onnx.ModelProto, node_name: str, name: str) -> object:
    node = next(n for n in model.graph.node if n.name == node_name)
    return helper.get_attribute_value(next(a for a in node.attribute if a.name == name))


def assert_identical(before: onnx.ModelProto, after: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    x = feeds(shape)
    for a, b in zip(run_model(before, x), run_model(after, x)):
        np.testing.assert_array_equal(b, a)


# -- coupling kinds ----------------------------------------------------------------------------
def residual_net() -> onnx.ModelProto:
    net = Net()
    x = net.op("Relu", [net.bn(net.conv("input", "stem", 1, 4, k=3), "stem.bn", [1, 0, 1, 1])], "stem.relu")
    y = net.op("Relu", [net.bn(net.conv(x, "b.conv1", 4, 4, k=3), "b.bn1", [1, 1, 0, 1])], "b.relu1")
    y = net.bn(net.conv(y, "b.conv2", 4, 4, k=3), "b.bn2", [2, 0, 1, 1])
    y = net.op("Relu", [net.op("Add", [x, y], "b.add")], "b.relu2")
    flat = net.op("Flatten", [net.op("GlobalAveragePool", [y], "gap")], "flatten", axis=1)
    net.gemm(flat, "fc", 4, 3)
    return net.model("fc")


def test_residual_add_couples_its_inputs() -> None:
    # setup
    model = residual_net()
    # execute
    out, report = apply_pass(prune(), model)
    # assert: channel 1 leaves the stem, the block's second conv and the fc input together
    assert weight_shapes(out) == {"stem": [3, 1, 3, 3], "b.conv1": [3, 3, 3, 3], "b.conv2": [3, 3, 3, 3],
                                  "fc": [3, 3], "stem.bn": [3], "b.bn1": [3], "b.bn2": [3]}
    groups = {g["group"]: g["pruned"] for g in report.details["groups"]}
    assert groups == {"stem (+1 coupled)": 1, "b.conv1": 1}
    assert report.changes == 2
    assert_identical(model, out, (1, 4, 4))


def test_concat_maps_offsets() -> None:
    # setup: channels [a0 a1 | b0 b1 b2] feed one conv; a1 and b0 are zero filters
    net = Net()
    a = net.op("Relu", [net.conv("input", "a", 1, 2, zero=(1,))], "a.relu")
    b = net.op("Relu", [net.conv("input", "b", 1, 3, zero=(0,))], "b.relu")
    cat = net.op("Concat", [a, b], "cat", axis=1)
    net.conv(cat, "c", 5, 2)
    model = net.model("c")
    # execute
    out, report = apply_pass(prune(importance="l1", threshold="ratio", ratio=0.5), model)
    # assert
    assert weight_shapes(out) == {"a": [1, 1, 1, 1], "b": [2, 1, 1, 1], "c": [2, 3, 1, 1]}
    np.testing.assert_array_equal(weight_of(out, "c"), weight_of(model, "c")[:, [0, 3, 4]])
    assert any(s.target == "c" and "graph output 'c'" in s.reason for s in report.skipped)
    assert_identical(model, out, (1, 4, 4))


def test_depthwise_conv_couples_input_and_output_channels() -> None:
    # setup
    net = Net()
    x = net.op("Relu", [net.conv("input", "c1", 1, 4, zero=(2,))], "r1")
    x = net.op("Relu", [net.conv(x, "dw", 4, 4, k=3, group=4)], "r2")
    net.conv(x, "c2", 4, 2)
    model = net.model("c2")
    # execute
    out, report = apply_pass(prune(importance="l1", threshold="ratio", ratio=0.25), model)
    # assert
    assert weight_shapes(out) == {"c1": [3, 1, 1, 1], "dw": [3, 1, 3, 3], "c2": [2, 3, 1, 1]}
    assert attribute(out, "dw", "group") == 3
    assert report.changes == 1
    assert_identical(model, out, (1, 4, 4))


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("to_features", ["flatten", "reshape-1", "reshape-literal"])
def test_features_after_flatten_map_to_gemm_rows(to_features: str, trans_b: int) -> None:
    # setup: [N,3,2,2] -> [N,12] -> Gemm; channel 1 is a zero filter, i.e. features 4..7
    net = Net(shape=(1, 2, 2))
    x = net.op("Relu", [net.conv("input", "c", 1, 3, zero=(1,))], "relu")
    if to_features == "flatten":
        flat = net.op("Flatten", [x], "flat", axis=1)
    else:
        target = [0, -1] if to_features == "reshape-1" else [-1, 12]
        flat = net.op("Reshape", [x, net.const("flat.shape", target, np.int64)], "flat")
    net.gemm(flat, "fc", 12, 2, trans_b=trans_b)
    model = net.model("fc")
    # execute
    out, _ = apply_pass(prune(importance="l1", threshold="ratio", ratio=0.34), model)
    # assert
    kept = [0, 1, 2, 3, 8, 9, 10, 11]
    expected = weight_of(model, "fc")[:, kept] if trans_b else weight_of(model, "fc")[kept]
    np.testing.assert_array_equal(weight_of(out, "fc"), expected)
    assert weight_shapes(out)["c"] == [2, 1, 1, 1]
    assert_identical(model, out, (1, 2, 2))


def test_graph_output_channels_are_never_pruned() -> None:
    # setup: c1's channels are a graph output as well as c2's input
    net = Net()
    feat = net.op("Relu", [net.conv("input", "c1", 1, 4, zero=(0, 1))], "feat")
    net.conv(feat, "c2", 4, 2)
    model = net.model("feat", "c2")
    # execute
    out, report = apply_pass(prune(importance="l1", threshold="ratio", ratio=0.5), model)
    # assert
    assert report.changes == 0
    assert weight_shapes(out) == weight_shapes(model)
    assert {s.target: s.reason for s in report.skipped}["c1"] == "4 of 4 channels kept: reaches graph output 'feat'"


@pytest.mark.parametrize("blocker, reason", [
    ("LRN", "consumed by LRN 'mid', which the channel analysis does not understand"),
    ("grouped", "read by grouped convolution Conv 'mid' (group=2)"),
    ("Softmax", "Softmax 'mid' normalises over the channels"),
])
def test_ops_the_analysis_does_not_follow_block_the_group(blocker: str, reason: str) -> None:
    # setup
    net = Net()
    x = net.op("Relu", [net.conv("input", "c1", 1, 4, zero=(0,))], "r1")
    if blocker == "grouped":
        x = net.conv(x, "mid", 4, 4, group=2)
    else:
        x = net.op(blocker, [x], "mid", **({"size": 3} if blocker == "LRN" else {"axis": 1}))
    net.conv(x, "c2", 4, 2)
    model = net.model("c2")
    # execute
    out, report = apply_pass(prune(importance="l1", threshold="ratio", ratio=0.5), model)
    # assert
    assert weight_shapes(out)["c1"] == [4, 1, 1, 1]
    assert {s.target: s.reason for s in report.skipped}["c1"] == f"4 of 4 channels kept: {reason}"


# -- MACs and thresholds -----------------------------------------------------------------------
def random_net(channels: int = 16, seed: int = 0) -> onnx.ModelProto:
    net = Net(shape=(1, 8, 8), seed=seed, real=True)
    x = net.op("Relu", [net.conv("input", "c1", 1, channels, k=3, bias=[0.1] * channels)], "r1")
    x = net.op("Relu", [net.conv(x, "c2", channels, channels, k=3, bias=[0.1] * channels)], "r2")
    x = net.op("Add", [x, net.op("Relu", [net.conv(x, "c3", channels, channels, k=3)], "r3")], "add")
    flat = net.op("Flatten", [net.op("GlobalAveragePool", [x], "gap")], "flat", axis=1)
    net.gemm(flat, "fc", channels, 4)
    return net.model("fc")


@pytest.mark.parametrize("settings", [
    {"threshold": "ratio", "ratio": 0.5, "round_to": 1},
    {"threshold": "macs", "target_macs_reduction": 0.4, "round_to": 1},
    {"threshold": "ratio", "ratio": 0.6},
])
def test_reported_macs_match_model_stats(settings: dict) -> None:
    # setup
    model = random_net()
    # execute
    out, report = apply_pass(PruneChannels(importance="l2", **settings), model)
    # assert
    assert report.changes > 0
    assert report.details["macs"] == {"before": model_stats(model).macs, "after": model_stats(out).macs}


def test_macs_target_is_reached() -> None:
    model = random_net()
    out, _ = apply_pass(prune(threshold="macs", target_macs_reduction=0.4), model)
    assert 0.4 <= 1 - model_stats(out).macs / model_stats(model).macs < 0.6


@pytest.mark.parametrize("settings, kept", [
    ({"ratio": 0.5, "round_to": 1}, 8),
    ({"ratio": 0.3, "round_to": 8}, 16),
    ({"ratio": 0.6, "round_to": 8}, 8),
    ({"ratio": 0.6}, 8),  # the default rounds to a multiple of 8
    ({"ratio": 0.9, "min_channels": 4, "round_to": 1}, 4),
    ({"ratio": 0.0, "layer_ratios": ("c1=0.75",), "round_to": 1}, 4),
])
def test_ratio_limits_and_rounding(settings: dict, kept: int) -> None:
    # setup: c1 is a group of its own (16 channels)
    net = Net(shape=(1, 4, 4), real=True)
    net.conv(net.op("Relu", [net.conv("input", "c1", 1, 16)], "r1"), "c2", 16, 2)
    model = net.model("c2")
    # execute
    out, _ = apply_pass(PruneChannels(threshold="ratio", **settings), model)
    # assert
    assert weight_shapes(out) == {"c1": [kept, 1, 1, 1], "c2": [2, kept, 1, 1]}


def test_adaptive_threshold_prunes_below_the_first_valley() -> None:
    # setup: gammas 0.0-0.005 (6 channels), a gap, then 0.4-0.9 (10 channels)
    net = Net(shape=(1, 4, 4), real=True)
    gamma = [0.0, 0.001, 0.002, 0.003, 0.004, 0.005] + list(np.linspace(0.4, 0.9, 10))
    x = net.op("Relu", [net.bn(net.conv("input", "c1", 1, 16), "bn", gamma)], "r1")
    net.conv(x, "c2", 16, 2)
    model = net.model("c2")
    # execute
    out, report = apply_pass(prune(), model)
    # assert
    assert weight_shapes(out)["c1"] == [10, 1, 1, 1]
    assert report.details["groups"][0]["rule"] == "adaptive: score < 0.01"
    assert report.details["decided_by"] == "adaptive: histogram valley in 1 of 1 groups"


@pytest.mark.parametrize("scores, expected", [
    ([0.0] * 6 + [0.5, 0.6, 0.7, 0.8] * 3, 0.01),  # polarised: valley right after the zero mode
    ([0.001, 0.004, 0.012, 0.015, 0.013] + [0.5, 0.6, 0.7] * 4, 0.02),  # low mode spans two bins
    (list(np.linspace(0.40, 0.60, 40)) + [0.63, 0.66, 0.9], None),  # one mode: the dips are its tail
    ([0.3] * 10, None),  # a single bin has no valley
])
def test_adaptive_threshold_takes_the_first_valley_after_a_low_mode(scores: list[float],
                                                                    expected: float | None) -> None:
    found = adaptive_threshold(np.array(scores))
    assert found == pytest.approx(expected) if expected is not None else found is None


def test_excluded_layers_keep_their_channels() -> None:
    model = residual_net()
    out, report = apply_pass(prune(exclude_nodes=("b.conv2",)), model)
    assert weight_shapes(out)["stem"] == [4, 1, 3, 3]
    assert {s.target: s.reason for s in report.skipped}["stem (+1 coupled)"] == "excluded by exclude_nodes"


# -- importance and recovery -------------------------------------------------------------------
def constant_channel_net() -> onnx.ModelProto:
    # channel 1 has gamma 0 and beta 3: after ReLU it is the constant 3
    net = Net()
    x = net.op("Relu", [net.bn(net.conv("input", "c1", 1, 4, k=3), "bn", [1, 0, 1, 1], [0, 3, 0, 0])], "r1")
    net.conv(x, "c2", 4, 2)
    return net.model("c2")


def test_constant_channel_is_folded_into_the_next_bias() -> None:
    # setup
    model = constant_channel_net()
    # execute
    folded, report = apply_pass(prune(recover=True), model)
    plain, _ = apply_pass(prune(recover=False), model)
    # assert
    assert report.details["recovery"]["constant_channels_folded"] == 1
    np.testing.assert_array_equal(weight_of(folded, "c2", 2), 3 * weight_of(model, "c2")[:, 1, 0, 0])
    assert_identical(model, folded, (1, 4, 4))
    x = feeds((1, 4, 4))
    assert not np.array_equal(run_model(plain, x)[0], run_model(model, x)[0])


def mlp() -> onnx.ModelProto:
    net = Net(shape=(1, 8, 8), real=True)
    x = net.op("Flatten", ["input"], "flat", axis=1)
    for i, (k, n) in enumerate([(64, 32), (32, 16)]):
        h = net.op("MatMul", [x, net.const(f"fc{i}.w", net.weights((k, n)))], f"fc{i}")
        x = net.op("Relu", [net.op("Add", [h, net.const(f"fc{i}.b", net.weights((n,)))], f"fc{i}.add")], f"r{i}")
    net.gemm(x, "out", 16, 4)
    return net.model("out")


@pytest.mark.parametrize("make, refit, factor", [(random_net, ["c2", "c3", "fc"], 0.5), (mlp, ["fc1", "out"], 0.8)])
def test_least_squares_recovery_reduces_the_output_error(make: Callable[[], onnx.ModelProto], refit: list[str],
                                                         factor: float) -> None:
    # setup
    model = make()
    rng = np.random.default_rng(3)
    calib = open_data([{"input": rng.standard_normal((256, 1, 8, 8)).astype(np.float32)}], model)
    x = {"input": rng.standard_normal((64, 1, 8, 8)).astype(np.float32)}
    reference = run_model(model, x)[0]
    # execute
    settings = {"importance": "l1", "threshold": "ratio", "ratio": 0.5}
    plain, _ = apply_pass(prune(recover=False, **settings), model, PassContext(calibration=calib))
    fitted, report = apply_pass(prune(**settings), model, PassContext(calibration=calib))
    # assert
    fits = report.details["recovery"]["least_squares"]
    assert [f["layer"] for f in fits] == refit
    assert all(f["error_after"] <= f["error_before"] for f in fits)
    assert op_counts(fitted) == op_counts(model)
    error = {name: float(np.mean((run_model(m, x)[0] - reference) ** 2)) for name, m in
             (("plain", plain), ("fitted", fitted))}
    assert error["fitted"] < factor * error["plain"]


# -- the default budget: no histogram valley, so the largest MACs reduction within max_drop ---------
SEARCH_X = np.random.default_rng(3).standard_normal((200, 1, 8, 8)).astype(np.float32)
HELD_OUT = {"input": SEARCH_X[80:]}  # the search fits on the first 40% of its 200 samples


def budget_search(model: onnx.ModelProto, labels: np.ndarray | None = None,
                  **settings: Any) -> tuple[onnx.ModelProto, dict, Any]:
    data = {"input": SEARCH_X} if labels is None else {"input": SEARCH_X, "label": labels}
    ctx = PassContext(calibration=open_data([data], model))
    out, report = apply_pass(prune(search_steps=4, **settings), model, ctx)
    chosen = max((t for t in report.details.get("budget", {}).get("trials", []) if t["within"]),
                 key=lambda t: t["setting"], default=None)
    return out, chosen, report


def test_budget_search_keeps_the_largest_reduction_whose_measured_disagreement_is_within_budget() -> None:
    # setup: mlp has no BatchNormalization and unpolarised L1 scores: no histogram valley
    model = mlp()
    # execute
    out, chosen, report = budget_search(model, max_drop=15.0)
    # assert
    trials = report.details["budget"]["trials"]
    assert [t["setting"] for t in trials] == [0.4, 0.2, 0.1, 0.15]
    assert all(t["within"] == (t["drop"] <= 15.0) for t in trials)
    assert all(not t["within"] for t in trials if t["setting"] > chosen["setting"])
    assert report.details["decided_by"].startswith(f"budget: largest MACs target within max_drop 15 "
                                                   f"({chosen['setting']:.1%}): top-1 disagreement drop")
    assert report.details["macs"]["after"] == chosen["macs"] == model_stats(out).macs < model_stats(model).macs
    before, after = run_model(model, HELD_OUT)[0].argmax(1), run_model(out, HELD_OUT)[0].argmax(1)
    assert (chosen["metric"], chosen["samples"]) == ("top-1 disagreement", 120)
    assert chosen["drop"] == pytest.approx(100 * (1 - np.mean(before == after)), abs=100 / 120)


def test_budget_search_measures_accuracy_when_the_data_has_labels() -> None:
    model = mlp()
    labels = run_model(model, {"input": SEARCH_X})[0].argmax(1)
    labels[::4] = (labels[::4] + 1) % 4  # the original is right on 75% of the samples
    _, chosen, report = budget_search(model, labels, max_drop=15.0)
    assert chosen["metric"] == "accuracy"
    assert "accuracy drop" in report.details["decided_by"]


def test_budget_search_measures_relative_l2_error_on_feature_map_outputs() -> None:
    # setup: the output is a feature map, not class scores
    net = Net(shape=(1, 8, 8), real=True)
    x = net.op("Relu", [net.conv("input", "c1", 1, 16, k=3, bias=[0.1] * 16)], "r1")
    x = net.op("Relu", [net.conv(x, "c2", 16, 16, k=3, bias=[0.1] * 16)], "r2")
    model = net.model(net.conv(x, "c3", 16, 2, k=3))
    # execute
    out, chosen, _ = budget_search(model, max_drop=50.0)
    # assert
    a, b = run_model(model, HELD_OUT)[0].astype(np.float64), run_model(out, HELD_OUT)[0].astype(np.float64)
    assert chosen["metric"] == "relative L2 error"
    assert chosen["drop"] == pytest.approx(100 * np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-3)
    assert model_stats(out).macs < model_stats(model).macs


def test_groups_with_a_valley_keep_the_adaptive_rule_and_the_others_get_the_budget() -> None:
    # setup: c1's gammas are polarised (6 near 0), c2 has no BatchNormalization (L1 scores, no valley)
    net = Net(shape=(1, 8, 8), real=True)
    gamma = [0.0, 0.001, 0.002, 0.003, 0.004, 0.005] + list(np.linspace(0.4, 0.9, 10))
    x = net.op("Relu", [net.bn(net.conv("input", "c1", 1, 16, k=3), "bn", gamma)], "r1")
    x = net.op("Relu", [net.conv(x, "c2", 16, 16, k=3, bias=[0.1] * 16)], "r2")
    net.gemm(net.op("Flatten", [net.op("GlobalAveragePool", [x], "gap")], "flat", axis=1), "fc", 16, 4)
    model = net.model("fc")
    # execute
    out, chosen, report = budget_search(model, max_drop=50.0)
    # assert
    rules = {g["group"]: g["rule"] for g in report.details["groups"]}
    assert rules["c1"] == "adaptive: score < 0.01" and weight_shapes(out)["c1"][0] == 10
    assert rules["c2"].startswith("global MACs target") and weight_shapes(out)["c2"][0] < 16
    assert report.details["decided_by"].startswith("adaptive: histogram valley in 1 of 2 groups; budget for the "
                                                   f"others: largest MACs target within max_drop 50 "
                                                   f"({chosen['setting']:.1%})")


def test_budget_search_prunes_nothing_when_no_candidate_is_within_budget() -> None:
    model = mlp()
    out, chosen, report = budget_search(model)
    assert chosen is None and report.changes == 0
    assert report.details["decided_by"] == "budget: no MACs reduction tried stays within max_drop 1"
    assert weight_shapes(out) == weight_shapes(model)


def test_default_without_valley_or_data_prunes_nothing_and_says_what_data_would_help() -> None:
    model = mlp()
    out, report = apply_pass(prune(), model)
    assert report.changes == 0 and weight_shapes(out) == weight_shapes(model)
    assert report.details["decided_by"] == "adaptive: no histogram valley"
    assert any("give --calib with real inputs" in note for note in report.notes)


def test_budget_settings_come_from_a_pass_spec() -> None:
    p = default_registry().create("prune-channels:max_drop=2:search_samples=64:search_steps=3")
    assert (p.threshold, p.max_drop, p.search_samples, p.search_steps) == ("auto", 2.0, 64, 3)


def test_activation_importance_prunes_dead_channels() -> None:
    # setup: channel 3's bias keeps it below zero, so after ReLU it is always 0
    net = Net()
    x = net.op("Relu", [net.conv("input", "c1", 1, 4, k=3, bias=[0, 0, 0, -100])], "r1")
    net.conv(x, "c2", 4, 2)
    model = net.model("c2")
    calib = open_data([feeds((1, 4, 4), n=16, seed=5)], model)
    # execute
    out, _ = apply_pass(prune(importance="activation", threshold="ratio", ratio=0.25),
                        model, PassContext(calibration=calib))
    # assert
    np.testing.assert_array_equal(weight_of(out, "c1"), weight_of(model, "c1")[:3])
    assert_identical(model, out, (1, 4, 4))


@pytest.mark.parametrize("settings, ctx, message", [
    ({"importance": "activation"}, PassContext(), "importance=activation needs calibration data"),
    ({"ratio": 1.5}, PassContext(), "ratio must be in [0, 1)"),
    ({"layer_ratios": ("c1",)}, PassContext(), "layer_ratios entry 'c1' is not NAME=R"),
    ({"threshold": "macs", "target_macs_reduction": 0.0}, PassContext(), "target_macs_reduction must be in (0, 1)"),
    ({"min_channels": 0}, PassContext(), "min_channels and round_to must be at least 1"),
    ({"round_to": 0}, PassContext(), "min_channels and round_to must be at least 1"),
    ({"max_drop": 100.0}, PassContext(), "max_drop must be in [0, 100) percentage points, got 100.0"),
    ({"search_samples": 2}, PassContext(), "search_samples must be at least 4 and search_steps at least 1"),
    ({"exclude_nodes": ("b.conv2", "nosuch")}, PassContext(),
     "exclude_nodes: 'nosuch' not found among the model's Conv/ConvTranspose/Gemm/MatMul layers "
     "(stem, b.conv1, b.conv2, fc)"),
    ({"exclude_nodes": ("b.bn2",)}, PassContext(), "exclude_nodes: 'b.bn2' (did you mean 'b.conv2'?) not found"),
    ({"threshold": "ratio", "layer_ratios": ("b.comv1=0.5",)}, PassContext(),
     "layer_ratios: 'b.comv1' (did you mean 'b.conv1'?) not found"),
])
def test_bad_settings_are_refused(settings: dict, ctx: PassContext, message: str) -> None:
    with pytest.raises(PreconditionError, match=re.escape(f"prune-channels: {message}")):
        apply_pass(PruneChannels(**{"round_to": 1, **settings}), residual_net(), ctx)


# -- real topologies ---------------------------------------------------------------------------
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize("name, prunable", [
    ("light_resnet50", True), ("light_densenet121", True), ("light_squeezenet", True),
    ("light_shufflenet", False),  # grouped convolutions and channel shuffles block every group
])
def test_real_topologies_prune_to_smaller_models_that_run(name: str, prunable: bool) -> None:
    # setup: real topologies with placeholder (ConstantOfShape) weights, shipped with onnx
    if not (LIGHT / f"{name}.onnx").exists():
        pytest.skip(f"onnx ships no {name}.onnx")
    model = onnx.load(str(LIGHT / f"{name}.onnx"))
    # execute
    out, report = apply_pass(PruneChannels(threshold="ratio", ratio=0.25), model)
    # assert
    before, after = model_stats(model), model_stats(out)
    assert report.details["macs"] == {"before": before.macs, "after": after.macs}
    assert (after.macs < 0.8 * before.macs) if prunable else (report.changes == 0 and report.skipped)
    constants = ("ConstantOfShape", "Unsqueeze")  # reshaped placeholders become plain ConstantOfShape
    assert {k: v for k, v in op_counts(out).items() if k not in constants} == \
        {k: v for k, v in op_counts(model).items() if k not in constants}
    assert after.parameters <= 1.2 * before.parameters  # placeholders stay ConstantOfShape
    x = {stats_input[0]: np.zeros((1, 3, 224, 224), np.float32) for stats_input in before.inputs}
    assert run_model(out, x)[0].shape[:2] == (1, 1000)


@pytest.mark.skipif(not (MODELS_DIR / "resnet_fmnist.onnx").exists(), reason="bundled resnet_fmnist not built")
def test_bundled_resnet_default_settings_keep_agreement() -> None:
    # setup
    model, calib, evaluation = bundled("resnet_fmnist")
    with np.load(evaluation) as npz:
        x = {"input": npz["input"][:300]}
    # execute
    out, report = apply_pass(PruneChannels(), model, PassContext(calibration=open_data(calib, model)))
    # assert
    agreement = np.mean(run_model(model, x)[0].argmax(1) == run_model(out, x)[0].argmax(1))
    assert report.changes > 0
    assert model_stats(out).macs < model_stats(model).macs
    assert agreement >= PruneChannels.tolerance.min_agreement


@pytest.mark.skipif(not (MODELS_DIR / "resnet_fmnist.onnx").exists(), reason="bundled resnet_fmnist not built")
def test_bundled_resnet_loses_under_two_points_at_30_percent_fewer_macs_with_recovery() -> None:
    # setup: the target (the latency half of it is measured by bench/bench_pruning.py)
    model, calib, evaluation = bundled("resnet_fmnist")
    with np.load(evaluation) as npz:
        x, labels = {"input": npz["input"]}, npz["label"]
    # execute
    out, report = apply_pass(PruneChannels(threshold="macs", target_macs_reduction=0.3), model,
                             PassContext(calibration=open_data(calib, model)))
    # assert
    accuracy = {name: 100 * np.mean(run_model(m, x)[0].argmax(1) == labels) for name, m in
                (("original", model), ("pruned", out))}
    assert model_stats(out).macs <= 0.7 * model_stats(model).macs
    assert report.details["recovery"]["least_squares"]
    assert accuracy["original"] - accuracy["pruned"] <= 2.0
