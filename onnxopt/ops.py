"""Op families that several passes and the evaluator must agree on."""

from __future__ import annotations

#: the QDQ format: quantization marked around float ops, fused into integer kernels by the runtime
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})

#: integer kernels of the QOperator format (and onnxruntime's contrib integer ops)
INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearConvTranspose",
    "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization",
    "MatMulNBits", "DequantizeLinearBlockwise"})


def is_quantized_op(op: str) -> bool:
    """Whether ``op`` marks or computes quantized values (QDQ, QOperator or contrib integer ops)."""
    return op in QDQ_OPS or op in INTEGER_OPS or op.startswith("QLinear")
