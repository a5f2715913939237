"""Getting a graph ready for the int8 pass: detect earlier quantization (and strip QDQ pairs when
asked to requantize), give every node a unique name, read element types."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Iterator, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import PreconditionError
from onnxopt.graph import FreshNames, constant_value, inference_probe
from onnxopt.ops import INTEGER_OPS, QDQ_OPS

logger = logging.getLogger(__name__)

#: the opset that gives QuantizeLinear/DequantizeLinear their per-channel ``axis`` (``Int8.min_opset``)
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
    for consumer in list(replaced.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is replaced:
                consumer.inputs[i] = kept
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


def unique_names(graph: gs.Graph) -> list[str]:
    """The name of each node once unnamed and duplicate-named ones get unique names."""
    seen = FreshNames()
    return [seen.fresh(node.name or f"{node.op}_{i}") for i, node in enumerate(graph.nodes)]


def name_nodes(graph: gs.Graph) -> int:
    """Give unnamed and duplicate-named nodes unique names (the plan refers to nodes by name)."""
    renamed = 0
    for node, name in zip(graph.nodes, unique_names(graph)):
        if node.name != name:
            node.name = name
            renamed += 1
    return renamed


def infer_types(graph: gs.Graph) -> tuple[dict[str, np.dtype | None], dict[str, tuple[int | None, ...]]]:
    """Element type and shape (``None`` for a symbolic or unknown dim) of every tensor that onnx
    shape inference can tell, from one inference on the weightless probe (the weights are typed
    inputs there, not serialized)."""
    model = inference_probe(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        logger.info("shape inference failed (%s); using declared types only", exc)
        inferred = model.graph
    types: dict[str, np.dtype | None] = {}
    shapes: dict[str, tuple[int | None, ...]] = {}
    for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        tensor_type = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        elem = tensor_type.elem_type if tensor_type is not None else 0
        types[vi.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else None
        if tensor_type is not None and tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    types.update(constant_types(graph))
    return types, shapes


def constant_types(graph: gs.Graph) -> dict[str, np.dtype]:
    return {name: np.dtype(t.dtype) for name, t in graph.tensors().items()
            if isinstance(t, gs.Constant) and t.dtype is not None}


def matmul_add_to_gemm(graph: gs.Graph, shapes: Mapping[str, tuple[int | None, ...]]) -> int:
    """Turn ``MatMul(A, W) + b`` (A of rank 2, W and b constant) into ``Gemm(A, W, b)``.

    onnxruntime does the same rewrite before it fuses Q/DQ groups; done afterwards, it leaves a
    float Gemm. As a Gemm the bias becomes int32 inside QGemm, which also keeps the output in float.
    """
    count, names = 0, FreshNames.of(graph)
    for node in [n for n in graph.nodes if n.op == "MatMul"]:
        a, w = node.inputs
        out = node.outputs[0]
        weight = constant_value(w)
        if weight is None or weight.ndim != 2 or len(shapes.get(a.name, ())) != 2 or len(out.outputs) != 1:
            continue
        add = out.outputs[0]
        if add.op != "Add" or any(t is out for t in graph.outputs):
            continue
        bias_tensor = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        bias = constant_value(bias_tensor)
        if bias is None or bias.dtype != weight.dtype or bias.size != weight.shape[1] or bias.ndim > 2:
            continue
        gemm_bias = gs.Constant(names.fresh(f"{node.name}_gemm_bias"), np.ascontiguousarray(bias.reshape(-1)))
        graph.nodes.append(gs.Node("Gemm", node.name, inputs=[a, w, gemm_bias], outputs=list(add.outputs)))
        add.outputs.clear()
        node.outputs.clear()
        count += 1
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return count


def conv_mul_to_weight(graph: gs.Graph) -> int:
    """Fold ``Conv(x, W[, b]) * s`` with a constant per-output-channel (or scalar) ``s`` into the Conv's
    weight and bias, as onnxruntime does before fusing (Caffe2 exports write a SpatialBN's scale this
    way: Conv, BatchNormalization, Mul, Add). The Conv gets new constants; a shared weight stays."""
    found, names = list(_conv_then_constant(graph, "Mul")), FreshNames.of(graph)
    for node, mul, weight, scale in found:
        node.inputs[1] = gs.Constant(names.fresh(f"{node.name}_weight_scaled"),
                                     (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype))
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = constant_value(node.inputs[2])
            node.inputs[2] = gs.Constant(names.fresh(f"{node.name}_bias_scaled"), (bias * scale).astype(weight.dtype))
        _bypass(node, mul)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return len(found)


def conv_add_to_bias(graph: gs.Graph) -> int:
    """Fold ``Conv(x, W[, b]) + c`` with a constant per-output-channel (or scalar) ``c`` into the Conv's
    bias, as onnxruntime does before fusing (CNTK and Caffe2 exports write biases this way)."""
    found, names = list(_conv_then_constant(graph, "Add")), FreshNames.of(graph)
    for node, add, weight, value in found:
        has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
        old = constant_value(node.inputs[2]) if has_bias else np.zeros(len(value), weight.dtype)
        bias = gs.Constant(names.fresh(f"{node.name}_bias_folded"), (old + value).astype(weight.dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = bias
        else:
            node.inputs.append(bias)
        _bypass(node, add)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return len(found)


def _conv_then_constant(graph: gs.Graph, op: str) -> Iterator[tuple[gs.Node, gs.Node, np.ndarray, np.ndarray]]:
    """``(conv, follower, weight, per-channel value)`` for each Conv with constant weight (and bias)
    whose output only feeds an ``op`` whose other operand is a constant per output channel (shape
    [1, M, 1, 1], [M, 1, 1] or a scalar, in the weight's dtype)."""
    for node in [n for n in graph.nodes if n.op == "Conv"]:
        out = node.outputs[0]
        weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None or len(out.outputs) != 1 or any(t is out for t in graph.outputs):
            continue
        follower = out.outputs[0]
        if follower.op != op or len(follower.inputs) != 2:
            continue
        value = constant_value(follower.inputs[1] if follower.inputs[0] is out else follower.inputs[0])
        if value is None or value.dtype != weight.dtype or value.ndim > weight.ndim:
            continue
        channels = weight.shape[0]
        if value.size == 1:
            per_channel = np.full(channels, value.reshape(()), weight.dtype)
        elif (1,) * (weight.ndim - value.ndim) + value.shape == (1, channels) + (1,) * (weight.ndim - 2):
            per_channel = value.reshape(-1)
        else:
            continue
        if len(node.inputs) > 2 and node.inputs[2].name and constant_value(node.inputs[2]) is None:
            continue  # a bias computed at run time
        yield node, follower, weight, per_channel


def _bypass(node: gs.Node, follower: gs.Node) -> None:
    """``node`` now writes ``follower``'s output; ``follower`` is left unconnected."""
    node.outputs[0] = follower.outputs[0]
    follower.outputs.clear()


def sum_to_add(graph: gs.Graph) -> int:
    """Two-input ``Sum`` (Caffe2 residuals) becomes ``Add``, which has an integer kernel."""
    count = 0
    for node in graph.nodes:
        if node.op == "Sum" and len(node.inputs) == 2 and node.domain in (None, "", "ai.onnx"):
            node.op = "Add"
            count += 1
    return count

