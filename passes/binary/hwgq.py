"""The 2-bit uniform half-wave Gaussian quantizer (HWGQ) as QuantizeLinear/DequantizeLinear fake-quant.

After BatchNormalization a ReLU's input is taken to be close to N(0, 1) (SEEDS.md §2), so one
quantizer serves every layer: ``Q(x) = 0`` for ``x <= 0``, else the nearest of the levels
``Δ, 2Δ, 3Δ`` (clipped at ``3Δ``). ``Δ`` minimises ``E[(Q(x) − x)²]`` over the half Gaussian and is
found with Lloyd's algorithm restricted to uniform levels (``lloyd_uniform_step``: 0.6508 for 2
bits). Uniform levels with a level at 0 are exactly what a uint8 QDQ pair with zero point 0 and
scale ``Δ`` represents, so each ``BatchNormalization → Relu`` becomes
``BatchNormalization → Clip(0, 3Δ) → QuantizeLinear → DequantizeLinear`` (the Relu's output tensor
keeps its name).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassReport

MIN_OPSET = 11  # Clip with min/max inputs


def lloyd_uniform_step(bits: int = 2, iterations: int = 200) -> float:
    """The step ``Δ`` of the MSE-optimal uniform quantizer of the unit half Gaussian (levels 0..2^bits-1)."""
    top = 2 ** bits - 1

    def pdf(x: float) -> float:
        return 0.0 if math.isinf(x) else math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    def cdf(x: float) -> float:
        return 1.0 if math.isinf(x) else 0.5 * (1 + math.erf(x / math.sqrt(2)))

    step = 1.0
    for _ in range(iterations):
        # assignment: nearest level; update: least-squares step for the fixed cells
        num = den = 0.0
        for i in range(1, top + 1):
            lo, hi = (i - 0.5) * step, ((i + 0.5) * step if i < top else math.inf)
            num += i * (pdf(lo) - pdf(hi))  # i · E[x; cell]
            den += i * i * (cdf(hi) - cdf(lo))
        step = num / den
    return step


def insert_hwgq(graph: gs.Graph, report: PassReport) -> int:
    """Quantize every BatchNormalization → Relu output; return how many were quantized."""
    step = lloyd_uniform_step(2)
    count = 0
    for node in list(graph.nodes):
        if node.op != "Relu":
            continue
        source = node.inputs[0]
        producer = source.inputs[0] if source.inputs else None
        if producer is None or producer.op != "BatchNormalization":
            report.skip(f"Relu '{node.name}'", "input is not a BatchNormalization output (HWGQ needs BN statistics)")
            continue
        dtype = np.dtype(source.dtype) if source.dtype is not None else np.dtype(np.float32)
        if dtype != np.float32:
            report.skip(f"Relu '{node.name}'", f"activation dtype {dtype} is not float32")
            continue
        _fake_quant(graph, node, np.float32(step))
        count += 1
    return count


def _fake_quant(graph: gs.Graph, relu: gs.Node, step: np.float32) -> None:
    out = relu.outputs[0]
    prefix = relu.name or out.name
    clipped = gs.Variable(f"{prefix}/hwgq/clip", dtype=np.float32, shape=out.shape)
    codes = gs.Variable(f"{prefix}/hwgq/codes", dtype=np.uint8, shape=out.shape)
    scale = gs.Constant(f"{prefix}/hwgq/scale", np.array(step, np.float32))
    zero = gs.Constant(f"{prefix}/hwgq/zero_point", np.array(0, np.uint8))
    relu.op = "Clip"
    relu.outputs[0] = clipped
    relu.inputs.extend([gs.Constant(f"{prefix}/hwgq/min", np.array(0, np.float32)),
                        gs.Constant(f"{prefix}/hwgq/max", np.array(3 * step, np.float32))])
    graph.nodes.append(gs.Node("QuantizeLinear", f"{prefix}/hwgq/quantize", inputs=[clipped, scale, zero], outputs=[codes]))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{prefix}/hwgq/dequantize", inputs=[codes, scale, zero], outputs=[out]))
