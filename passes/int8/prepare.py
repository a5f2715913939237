"""Getting a graph ready for the int8 pass: detect earlier quantization (and strip QDQ pairs when
asked to requantize), tell whether constant folding has work to do."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import PreconditionError
from onnxopt.graph import constant_value, rewire
from onnxopt.ops import INTEGER_OPS, QDQ_OPS

logger = logging.getLogger(__name__)

#: the opset that gives QuantizeLinear/DequantizeLinear their per-channel ``axis``
PER_CHANNEL_OPSET = 13
QDQ_OPSET = 10


def quantized_ops(graph: gs.Graph) -> Counter[str]:
    """Ops that show the model is quantized already."""
    return Counter(n.op for n in graph.nodes if n.op in QDQ_OPS | INTEGER_OPS)


def check_not_quantized(graph: gs.Graph, requantize: bool) -> None:
    found = quantized_ops(graph)
    if not found:
        return
    listing = ", ".join(f"{op} x{count}" for op, count in sorted(found.items()))
    integer = sorted(op for op in found if op in INTEGER_OPS)
    if integer:
        raise PreconditionError(
            f"the model is already quantized ({listing}); integer kernels ({', '.join(integer)}) cannot be "
            "requantized; start from the float model")
    if not requantize:
        raise PreconditionError(
            f"the model is already quantized ({listing}); start from the float model, or give "
            "requantize=true to strip its Q/DQ pairs and quantize again")


def strip_qdq(graph: gs.Graph) -> int:
    """Remove Q->DQ pairs and dequantize constant DQ inputs to float; returns pairs removed."""
    removed = 0
    for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        source = dq.inputs[0]
        producer = source.inputs[0] if source.inputs else None
        if producer is not None and producer.op == "QuantizeLinear":
            _merge(producer.inputs[0], dq.outputs[0], graph)
            removed += 1
        elif constant_value(source) is not None:
            value = _dequantize_constant(dq)
            _merge(gs.Constant(f"{dq.outputs[0].name}_float", value), dq.outputs[0], graph)
        dq.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False)
    left = quantized_ops(graph)
    if left:
        raise PreconditionError(
            f"requantize: {', '.join(f'{op} x{c}' for op, c in sorted(left.items()))} remain after removing "
            "Q/DQ pairs (integer model inputs or outputs?); start from the float model")
    return removed


def _dequantize_constant(dq: gs.Node) -> np.ndarray:
    q = constant_value(dq.inputs[0]).astype(np.float64)
    scale = constant_value(dq.inputs[1]).astype(np.float64)
    zero = (constant_value(dq.inputs[2]).astype(np.float64) if len(dq.inputs) > 2 and dq.inputs[2].name
            else np.zeros_like(scale))
    if scale.ndim == 1 and scale.size > 1:
        axis = int(dq.attrs.get("axis", 1)) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return np.asarray((q - zero) * scale, np.float32)


def _merge(kept: gs.Tensor, replaced: gs.Tensor, graph: gs.Graph) -> None:
    """Make every reader of ``replaced`` read ``kept`` (a graph output keeps its name via Identity)."""
    rewire(replaced, kept)
    if any(t is replaced for t in graph.outputs):
        replaced.inputs.clear()
        graph.nodes.append(gs.Node("Identity", f"{replaced.name}_Identity", inputs=[kept], outputs=[replaced]))


def has_foldable_nodes(graph: gs.Graph) -> bool:
    """Whether constant folding has anything to do (a node computed from constants alone, or Shape)."""
    for node in graph.nodes:
        if node.op == "Shape":
            return True
        inputs = [t for t in node.inputs if not t.is_empty()]
        if node.op != "Constant" and inputs and all(constant_value(t) is not None for t in inputs):
            return True
    return False
