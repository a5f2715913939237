"""What the int8 pass knows about each op, in one table (as pruning's channel ``RULES``): its role in
a plan, which inputs carry activations, its weight (input 1, when constant) and output-channel axis,
its bias, the onnxruntime integer kernels it fuses into, the names onnxruntime gives it when it stays
in float, and why a node of it cannot be quantized. Adding an op is one ``OPS`` entry (plus its test).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import constant_value

Check = Callable[[gs.Node], "str | None"]
Axis = Callable[[gs.Node, np.ndarray], "tuple[int | None, str | None]"]


class Role(enum.Enum):
    #: a layer with a constant int8 weight: anchors the plan, the unit of the accuracy budget
    COMPUTE = "compute"
    #: an integer kernel with an output scale of its own; joins when it feeds a quantized node
    QLINEAR = "qlinear"
    #: the output reuses the input's scale (values moved, or a subset of the input's range)
    SHARED_SCALE = "shared_scale"
    #: Relu/Clip: joins after a quantized node; in asymmetric mode the quantizer's clamp replaces it
    ACTIVATION = "activation"
    #: joins at the end of the quantized region only over many rows (see ``plan.SOFTMAX_MIN_ROWS``)
    SOFTMAX = "softmax"


@dataclass(frozen=True)
class OpRule:
    role: Role
    #: the inputs that carry activations: the first, all of them (constant ones are stored as uint8
    #: behind a DQ), or those of the first two that are not constants (MatMul)
    data_inputs: Literal["first", "all", "variable"] = "first"
    #: why a node of this op cannot be quantized (after the checks every op gets), or ``None``
    check: Check | None = None
    #: compute ops: the weight's output-channel axis (``None``: per tensor, with a note when it is forced)
    weight_axis: Axis | None = None
    #: compute ops: the index of the bias input that becomes int32
    bias: int | None = None
    #: onnxruntime kernels the op (with its Q/DQ) fuses into
    kernels: frozenset[str] = frozenset()
    #: compute ops: what onnxruntime's optimized graph calls the op when it stays in float
    float_forms: frozenset[str] = frozenset()
    #: the integer kernel can write a float output (QGemm, MatMulIntegerToFloat): no Q/DQ after it
    float_output: bool = False
    #: a pooling: joins after a quantized node, so the dequantization runs on the pooled tensor
    pooling: bool = False
    #: activations: the node is exactly the quantizer's clamp at zero (asymmetric mode folds it)
    clamps_at_zero: Callable[[gs.Node], bool] | None = None
    #: in symmetric mode the output reuses the input's scale (Relu: exact)
    shares_scale_symmetric: bool = False


def clip_bounds(node: gs.Node) -> tuple[float | None, float | None]:
    """A Clip's (min, max) from attributes (opset < 11) or constant inputs; ``None`` where computed."""
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    bounds: list[float | None] = []
    for i in (1, 2):
        if len(node.inputs) > i and node.inputs[i].name:
            value = constant_value(node.inputs[i])
            bounds.append(None if value is None or value.size != 1 else float(value.reshape(())))
        else:
            bounds.append(-np.inf if i == 1 else np.inf)
    return bounds[0], bounds[1]


def has_bias(node: gs.Node) -> bool:
    rule = OPS.get(node.op)
    if rule is None or rule.bias is None:
        return False
    return len(node.inputs) > rule.bias and bool(node.inputs[rule.bias].name)


def _check_layer(node: gs.Node) -> str | None:
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return "weight is computed at run time (not a constant initializer)"
    if weight.dtype != np.float32:
        return f"weight is {weight.dtype}; only float32 is quantized"
    if has_bias(node) and constant_value(node.inputs[2]) is None:
        return "bias is computed at run time (not a constant initializer)"
    return None


def _check_gemm(node: gs.Node) -> str | None:
    reason = _check_layer(node)
    if reason is None and has_bias(node):
        bias = constant_value(node.inputs[2])
        if bias.ndim != 1 or float(node.attrs.get("beta", 1.0)) != 1.0:
            reason = "Gemm bias must be a 1-D constant with beta=1 to become an int32 bias"
    if reason is None and int(node.attrs.get("transA", 0)):
        reason = "Gemm with transA=1 is not fused by onnxruntime"
    return reason


def _check_matmul(node: gs.Node) -> str | None:
    if constant_value(node.inputs[0]) is not None:
        return "constant first input of MatMul is not supported"
    weight = constant_value(node.inputs[1])
    if weight is not None and weight.dtype != np.float32:
        return f"weight is {weight.dtype}; only float32 is quantized"
    return None


def _check_not_all_constant(node: gs.Node) -> str | None:
    if all(constant_value(t) is not None for t in node.inputs):
        return "all inputs are constants (left for constant folding)"
    return None


def _check_maxpool(node: gs.Node) -> str | None:
    return "MaxPool indices output is used" if len(node.outputs) > 1 and node.outputs[1].outputs else None


def _check_average_pool(node: gs.Node) -> str | None:
    if any(int(d) != 1 for d in node.attrs.get("dilations", [])):
        return "AveragePool with dilations has no integer kernel (QLinearAveragePool lacks them)"
    if int(node.attrs.get("ceil_mode", 0)) and int(node.attrs.get("count_include_pad", 0)):
        return "AveragePool with ceil_mode and count_include_pad: onnxruntime's integer kernel averages differently"
    return None


def _check_resize(node: gs.Node) -> str | None:
    if node.attrs.get("mode", "nearest") not in ("nearest", "linear"):
        return f"Resize mode '{node.attrs.get('mode')}' can overshoot the input range"
    return None


def _check_clip(node: gs.Node) -> str | None:
    return "Clip bounds are computed at run time" if None in clip_bounds(node) else None


def _conv_axis(node: gs.Node, weight: np.ndarray) -> tuple[int | None, str | None]:
    return 0, None


def _conv_transpose_axis(node: gs.Node, weight: np.ndarray) -> tuple[int | None, str | None]:
    if int(node.attrs.get("group", 1)) != 1:
        return None, "grouped ConvTranspose: weight axis 1 is not the output channel; per-tensor"
    return 1, None


def _gemm_axis(node: gs.Node, weight: np.ndarray) -> tuple[int | None, str | None]:
    return (0 if int(node.attrs.get("transB", 0)) else 1), None


def _matmul_axis(node: gs.Node, weight: np.ndarray) -> tuple[int | None, str | None]:
    if weight.ndim == 2:  # [K, N]
        return 1, None
    return None, f"MatMul weight of rank {weight.ndim}: per-tensor"


_SHARED = OpRule(Role.SHARED_SCALE)

OPS: Mapping[str, OpRule] = {
    "Conv": OpRule(Role.COMPUTE, check=_check_layer, weight_axis=_conv_axis, bias=2,
                   kernels=frozenset({"QLinearConv", "ConvInteger"}), float_forms=frozenset({"FusedConv", "NhwcConv"})),
    "ConvTranspose": OpRule(Role.COMPUTE, check=_check_layer, weight_axis=_conv_transpose_axis, bias=2,
                            kernels=frozenset({"QLinearConvTranspose"})),
    "Gemm": OpRule(Role.COMPUTE, check=_check_gemm, weight_axis=_gemm_axis, bias=2, kernels=frozenset({"QGemm"}),
                   float_forms=frozenset({"FusedGemm"}), float_output=True),
    "MatMul": OpRule(Role.COMPUTE, data_inputs="variable", check=_check_matmul, weight_axis=_matmul_axis,
                     kernels=frozenset({"QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger",
                                        "DynamicQuantizeMatMul"}),
                     float_forms=frozenset({"FusedMatMul"}), float_output=True),
    "Add": OpRule(Role.QLINEAR, data_inputs="all", check=_check_not_all_constant, kernels=frozenset({"QLinearAdd"})),
    "Mul": OpRule(Role.QLINEAR, data_inputs="all", check=_check_not_all_constant, kernels=frozenset({"QLinearMul"})),
    "Concat": OpRule(Role.QLINEAR, data_inputs="all", kernels=frozenset({"QLinearConcat"})),
    "AveragePool": OpRule(Role.QLINEAR, check=_check_average_pool, pooling=True,
                          kernels=frozenset({"QLinearAveragePool"})),
    "GlobalAveragePool": OpRule(Role.QLINEAR, pooling=True, kernels=frozenset({"QLinearGlobalAveragePool"})),
    "MaxPool": OpRule(Role.SHARED_SCALE, check=_check_maxpool, pooling=True),
    "Resize": OpRule(Role.SHARED_SCALE, check=_check_resize),
    "Reshape": _SHARED, "Flatten": _SHARED, "Transpose": _SHARED, "Squeeze": _SHARED, "Unsqueeze": _SHARED,
    "Relu": OpRule(Role.ACTIVATION, clamps_at_zero=lambda node: True, shares_scale_symmetric=True),
    "Clip": OpRule(Role.ACTIVATION, check=_check_clip, clamps_at_zero=lambda node: clip_bounds(node)[0] == 0.0),
    "Softmax": OpRule(Role.SOFTMAX, kernels=frozenset({"QLinearSoftmax"})),
}


def ops_of(role: Role) -> frozenset[str]:
    return frozenset(op for op, rule in OPS.items() if rule.role is role)


COVERED_OPS = frozenset(OPS)
COMPUTE_OPS = ops_of(Role.COMPUTE)
QLINEAR_OPS = ops_of(Role.QLINEAR)
SHARED_SCALE_OPS = ops_of(Role.SHARED_SCALE)
#: compute ops as they can appear in onnxruntime's optimized graph when they stay in float
FLOAT_COMPUTE_OPS = COMPUTE_OPS | frozenset(f for op in COMPUTE_OPS for f in OPS[op].float_forms)
#: integer kernels that replace one compute layer each
INTEGER_LAYER_OPS = frozenset(k for op in COMPUTE_OPS for k in OPS[op].kernels)


def data_inputs(node: gs.Node) -> list[int]:
    """Indices of the inputs that carry activations (or constants quantized like activations)."""
    rule = OPS[node.op]
    if rule.data_inputs == "all":
        return list(range(len(node.inputs)))
    if rule.data_inputs == "variable":
        return [i for i in (0, 1) if constant_value(node.inputs[i]) is None]
    return [0] if node.inputs else []


def is_data_input(node: gs.Node, tensor: gs.Tensor) -> bool:
    return node.op in OPS and any(node.inputs[i] is tensor for i in data_inputs(node))


def weight_index(node: gs.Node) -> int | None:
    """The weight input of a compute op when it is a constant, else ``None``."""
    return 1 if len(node.inputs) > 1 and constant_value(node.inputs[1]) is not None else None


def bias_index(node: gs.Node) -> int | None:
    return OPS[node.op].bias if has_bias(node) else None


def weight_axis(node: gs.Node, weight: np.ndarray, per_channel: bool) -> tuple[int | None, str | None]:
    """The output-channel axis of a compute op's weight, or ``None`` for per-tensor (with a note
    when per-channel was asked for)."""
    axis = OPS[node.op].weight_axis
    if not per_channel or axis is None:
        return None, None
    return axis(node, weight)


def check(node: gs.Node, dtypes: Mapping[str, np.dtype | None]) -> str | None:
    """Why ``node`` (of a covered op) cannot be quantized, or ``None``."""
    rule = OPS[node.op]
    for i in data_inputs(node):
        tensor = node.inputs[i]
        value = constant_value(tensor)
        if value is not None and rule.data_inputs != "all":
            return f"input '{tensor.name}' is a constant"
        dtype = value.dtype if value is not None else dtypes.get(tensor.name)
        if dtype is None:
            return f"element type of input '{tensor.name}' is unknown (shape inference could not tell)"
        if np.dtype(dtype) != np.float32:
            return f"input '{tensor.name}' is {np.dtype(dtype).name}; only float32 is quantized"
    if not node.outputs:
        return "node has no outputs"
    return rule.check(node) if rule.check is not None else None
