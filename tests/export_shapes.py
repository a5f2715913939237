"""Small constructed models with the shapes of real third-party exports (numpy weights, seeded).

Each builder returns ``(model, calibration feeds, evaluation feeds)``. They stand in for exports
the bundled models do not cover:

- ``byte_classifier``: int32 bytes -> Gather embedding -> Conv1d -> residual blocks of
  MatMul/Add/Tanh/MatMul/Add with LayerNormalization, channels on the last axis ([N, L, C]);
- ``nhwc_prelu``: a Keras-converted net: NHWC input, Transpose to NCHW, Conv + PRelu, a residual
  block, Transpose back, Flatten -> Gemm -> Softmax;
- ``depthwise_residual``: a MobileNet-v2-like inverted residual (1x1 expand, depthwise 3x3, 1x1
  project, BatchNormalization, Clip/ReLU6) with a residual Add.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Feeds = dict[str, np.ndarray]
Built = tuple[onnx.ModelProto, Feeds, Feeds]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: object, dtype: type = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def randn(self, name: str, shape: tuple[int, ...], scale: float) -> str:
        return self.const(name, self.rng.standard_normal(shape) * scale)

    def op(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def bn(self, x: str, name: str, c: int) -> str:
        return self.op("BatchNormalization", [
            x, self.const(f"{name}.g", self.rng.uniform(0.5, 1.5, c)), self.randn(f"{name}.b", (c,), 0.1),
            self.randn(f"{name}.m", (c,), 0.1), self.const(f"{name}.v", self.rng.uniform(0.5, 1.5, c))], name)

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], output: str, out_shape: list[object],
              opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs,
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def byte_classifier(seed: int = 0, length: int = 24, dim: int = 16, hidden: int = 8, blocks: int = 2,
                    classes: int = 4) -> Built:
    """``length`` > ``dim``: the sequence axis is longer than the channel axis (issue #11's crash)."""
    b = _Builder(seed)
    emb = b.op("Gather", [b.randn("emb", (256, dim), 0.5), "bytes"], "embed", axis=0)
    conv = b.op("Conv", [b.op("Transpose", [emb], "to_ncl", perm=[0, 2, 1]), b.randn("conv.w", (dim, dim, 3), 0.2),
                         b.randn("conv.b", (dim,), 0.1)], "conv", pads=[1, 1])
    x = b.op("Transpose", [b.op("Relu", [conv], "conv.relu")], "to_nlc", perm=[0, 2, 1])
    for i in range(blocks):
        h = b.op("Add", [b.op("MatMul", [x, b.randn(f"b{i}.w1", (dim, hidden), 0.3)], f"b{i}.mm1"),
                         b.randn(f"b{i}.b1", (hidden,), 0.1)], f"b{i}.add1")
        h = b.op("MatMul", [b.op("Tanh", [h], f"b{i}.tanh"), b.randn(f"b{i}.w2", (hidden, dim), 0.3)], f"b{i}.mm2")
        h = b.op("Add", [h, b.randn(f"b{i}.b2", (dim,), 0.1)], f"b{i}.add2")
        x = b.op("LayerNormalization", [b.op("Add", [x, h], f"b{i}.res"), b.const(f"b{i}.ln.g", np.ones(dim)),
                                        b.const(f"b{i}.ln.b", np.zeros(dim))], f"b{i}.ln", axis=-1)
    pooled = b.op("ReduceMean", [x, b.const("axes", [1], np.int64)], "pool", keepdims=0)
    b.op("Gemm", [pooled, b.randn("fc.w", (classes, dim), 0.5), b.const("fc.b", np.zeros(classes))], "logits",
         transB=1)
    model = b.model("byte_classifier", [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["N", length])],
                    "logits", ["N", classes], opset=18)
    rng = np.random.default_rng(seed + 1)
    return model, *({"bytes": rng.integers(0, 256, (n, length)).astype(np.int32)} for n in (48, 32))


def nhwc_prelu(seed: int = 0, size: int = 8, channels: int = 8, classes: int = 4) -> Built:
    b = _Builder(seed)
    x = b.op("Transpose", ["input"], "to_nchw", perm=[0, 3, 1, 2])
    x = b.op("Conv", [x, b.randn("c1.w", (channels, 3, 3, 3), 0.4), b.randn("c1.b", (channels,), 0.1)], "c1",
             pads=[1, 1, 1, 1])
    x = b.op("PRelu", [x, b.const("c1.slope", b.rng.uniform(0.05, 0.3, (channels, 1, 1)))], "c1.prelu")
    h = b.op("Conv", [x, b.randn("c2.w", (channels, channels, 3, 3), 0.2), b.randn("c2.b", (channels,), 0.1)], "c2",
             pads=[1, 1, 1, 1])
    h = b.op("PRelu", [h, b.const("c2.slope", b.rng.uniform(0.05, 0.3, (channels, 1, 1)))], "c2.prelu")
    h = b.op("Conv", [h, b.randn("c3.w", (channels, channels, 1, 1), 0.2), b.randn("c3.b", (channels,), 0.1)], "c3")
    x = b.op("Add", [x, h], "res")
    x = b.op("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [b.op("Transpose", [x], "to_nhwc", perm=[0, 2, 3, 1])], "flatten", axis=1)
    features = channels * (size // 2) ** 2
    x = b.op("Gemm", [x, b.randn("fc.w", (features, classes), 0.2), b.const("fc.b", np.zeros(classes))], "fc")
    b.op("Softmax", [x], "prob", axis=1)
    model = b.model("nhwc_prelu", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size, 3])],
                    "prob", ["N", classes])
    rng = np.random.default_rng(seed + 1)
    return model, *({"input": rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)} for n in (48, 32))


def depthwise_residual(seed: int = 0, size: int = 8, channels: int = 8, expand: int = 3, classes: int = 4) -> Built:
    b = _Builder(seed)
    wide = channels * expand

    def relu6(x: str, name: str) -> str:
        return b.op("Clip", [x, b.const(f"{name}.lo", 0.0), b.const(f"{name}.hi", 6.0)], name)

    x = relu6(b.bn(b.op("Conv", ["input", b.randn("stem.w", (channels, 3, 3, 3), 0.4)], "stem", pads=[1, 1, 1, 1]),
                   "stem.bn", channels), "stem.relu6")
    h = relu6(b.bn(b.op("Conv", [x, b.randn("expand.w", (wide, channels, 1, 1), 0.3)], "expand"), "expand.bn", wide),
              "expand.relu6")
    h = relu6(b.bn(b.op("Conv", [h, b.randn("dw.w", (wide, 1, 3, 3), 0.4)], "dw", group=wide, pads=[1, 1, 1, 1]),
                   "dw.bn", wide), "dw.relu6")
    h = b.bn(b.op("Conv", [h, b.randn("project.w", (channels, wide, 1, 1), 0.3)], "project"), "project.bn", channels)
    x = b.op("Add", [x, h], "res")
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    b.op("Gemm", [x, b.randn("fc.w", (classes, channels), 0.5), b.const("fc.b", np.zeros(classes))], "logits",
         transB=1)
    model = b.model("depthwise_residual",
                    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                    "logits", ["N", classes])
    rng = np.random.default_rng(seed + 1)
    return model, *({"input": rng.uniform(0, 1, (n, 3, size, size)).astype(np.float32)} for n in (48, 32))


EXPORT_SHAPES: dict[str, Callable[[], Built]] = {
    "byte_classifier": byte_classifier, "nhwc_prelu": nhwc_prelu, "depthwise_residual": depthwise_residual,
}
