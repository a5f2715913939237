"""Writing a quantization plan into a graph: Q/DQ pairs, int8 weights, int32 biases.

Names are short (``x_Q``/``x_DQ`` nodes, ``x_q``/``x_dq`` tensors, ``_s`` scales, ``_zp`` zero points)
and new tensors carry no value_info: on small models the graph itself is a visible part of the file.

Weights become int8 initializers read through a DequantizeLinear per consuming node (a weight shared
by several layers is quantized once and every layer gets it); a bias becomes int32 with scale
``s_x * s_w`` so onnxruntime can fold it into the integer kernel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.calibration import QParams, qparams_from_range, quantize_weight
from onnxopt.graph import FreshNames, constant_value, rewire
from passes.int8.plan import Plan

logger = logging.getLogger(__name__)

_INT32_MAX = 2**31 - 1
#: biases are kept within half the int32 range (room for the accumulator's sums)
_INT32_LIMIT = 2**30


@dataclass
class EmitResult:
    qdq_pairs: int = 0
    weights: int = 0
    biases: int = 0
    notes: list[str] = field(default_factory=list)


class Emitter:
    """Creates Q/DQ nodes and quantized initializers in ``graph`` with unique names."""

    def __init__(self, graph: gs.Graph, weight_bound: int = 127,
                 floors: Mapping[tuple[str, int | None], np.ndarray] | None = None) -> None:
        self.graph = graph
        self.weight_bound = weight_bound
        self.floors = floors or {}
        self._names = FreshNames.of(graph)
        self._weights: dict[tuple[str, int | None], tuple[gs.Constant, gs.Constant, gs.Constant, np.ndarray]] = {}

    def name(self, base: str) -> str:
        return self._names.fresh(base)

    def _param_constants(self, key: str, qp: QParams) -> tuple[gs.Constant, gs.Constant]:
        """A scale and a zero point of one Q/DQ pair. Pairs never share them, even when the values are
        equal: onnxruntime's int8-to-uint8 rewrite on x86 skips zero points that other pairs read."""
        return (gs.Constant(self.name(f"{key}_s"), np.array(qp.scale, np.float32)),
                gs.Constant(self.name(f"{key}_zp"), np.array(qp.zero_point, qp.dtype)))

    def qdq(self, tensor: gs.Variable, qp: QParams, key: str, out: gs.Variable | None = None) -> gs.Variable:
        """Append ``Q(tensor) -> DQ`` and return the DQ output (``out`` if given)."""
        scale, zero = self._param_constants(tensor.name, qp)
        quantized = gs.Variable(self.name(f"{tensor.name}_q"))
        if out is None:
            out = gs.Variable(self.name(f"{tensor.name}_dq"))
        self.graph.nodes.append(gs.Node("QuantizeLinear", self.name(f"{tensor.name}_Q"),
                                        inputs=[tensor, scale, zero], outputs=[quantized]))
        self.graph.nodes.append(gs.Node("DequantizeLinear", self.name(f"{tensor.name}_DQ"),
                                        inputs=[quantized, scale, zero], outputs=[out]))
        return out

    def _dequantize(self, base: str, values: gs.Constant, scale: gs.Constant, zero: gs.Constant | None,
                    axis: int | None) -> gs.Variable:
        """A DQ of a constant; without ``zero`` the zero point is 0 (int32 biases: saves 4 bytes per
        channel; weights keep theirs, onnxruntime's QGemm fusion wants it)."""
        out = gs.Variable(self.name(f"{base}_dq"))
        attrs = {} if axis is None else {"axis": axis}
        self.graph.nodes.append(gs.Node("DequantizeLinear", self.name(f"{base}_DQ"), attrs=attrs,
                                        inputs=[values, scale] + ([zero] if zero is not None else []),
                                        outputs=[out]))
        return out

    def weight(self, tensor: gs.Tensor, axis: int | None) -> tuple[gs.Variable, np.ndarray]:
        """A DQ of the int8 weight (quantized once per tensor and axis) and its float32 scales."""
        key = (tensor.name, axis)
        if key not in self._weights:
            q, scale = quantize_weight(constant_value(tensor), axis, self.weight_bound, self.floors.get(key))
            self._weights[key] = (gs.Constant(self.name(f"{tensor.name}_q"), q),
                                  gs.Constant(self.name(f"{tensor.name}_s"), scale),
                                  gs.Constant(self.name(f"{tensor.name}_zp"), np.zeros(scale.shape, np.int8)), scale)
        values, scale_c, zero, scales = self._weights[key]
        return self._dequantize(tensor.name, values, scale_c, zero, axis), scales

    def bias(self, node: gs.Node, tensor: gs.Tensor, input_scale: float, weight_scale: np.ndarray,
             notes: list[str]) -> gs.Variable:
        """An int32 bias with scale ``input_scale * weight_scale`` (per channel when the weight is)."""
        b = constant_value(tensor).astype(np.float64)
        scale = np.asarray(np.float32(input_scale) * weight_scale.astype(np.float32), np.float32)
        if scale.ndim == 1 and b.shape != scale.shape:
            b = np.broadcast_to(b.reshape(-1), scale.shape)
        q = np.rint(b / scale.astype(np.float64))
        if np.any(np.abs(q) > _INT32_MAX):
            notes.append(f"{node.name}: bias exceeds the int32 range at scale s_x*s_w and was clipped")
        q = np.asarray(np.clip(q, -_INT32_MAX, _INT32_MAX), np.int32)
        axis = 0 if scale.ndim == 1 else None
        values = gs.Constant(self.name(f"{node.name}_b_q"), q)
        scale_c = gs.Constant(self.name(f"{node.name}_b_s"), scale)
        return self._dequantize(f"{node.name}_b", values, scale_c, None, axis)

    def constant(self, node: gs.Node, tensor: gs.Tensor) -> gs.Variable:
        """A constant operand of Add/Mul/Concat as per-tensor uint8 (asymmetric) behind a DQ.

        uint8 even with int8 activations: onnxruntime's CPU provider turns int8 Q/DQ pairs into uint8
        before fusing, and an int8 constant would then no longer match the other operand's type.
        """
        value = constant_value(tensor).astype(np.float32)
        qp = qparams_from_range(float(value.min(initial=0.0)), float(value.max(initial=0.0)), "uint8", False)
        values = gs.Constant(self.name(f"{tensor.name}_q"), qp.quantize(value))
        scale, zero = self._param_constants(f"{tensor.name}_{node.name}", qp)
        return self._dequantize(tensor.name, values, scale, zero, None)


def weight_floors(graph: gs.Graph, plan: Plan,
                  params: Mapping[str, QParams]) -> dict[tuple[str, int | None], np.ndarray]:
    """Least weight scale per (weight, axis) so that every bias fits int32 at scale ``s_x * s_w``: a
    channel whose weights are all but zero (a BatchNorm gamma near 0 folded in) but whose bias is not
    would otherwise overflow. Such channels' weights then quantize to 0, which they nearly are."""
    nodes = {n.name: n for n in graph.nodes}
    axes = {w.node: (w.index, w.axis) for w in plan.weights}
    floors: dict[tuple[str, int | None], np.ndarray] = {}
    for use in plan.biases:
        node = nodes[use.node]
        index, axis = axes[use.node]
        bias = np.abs(constant_value(node.inputs[use.index]).astype(np.float64)).reshape(-1)
        floor = bias / (params[plan.tensors[use.activation]].scale * _INT32_LIMIT)
        floor = floor if axis is not None else np.asarray(floor.max(initial=0.0))
        key = (node.inputs[index].name, axis)
        floors[key] = np.maximum(floors[key], floor) if key in floors else floor
    return floors


def apply_plan(graph: gs.Graph, plan: Plan, params: Mapping[str, QParams], dedicated: bool = False) -> EmitResult:
    """Insert the plan's Q/DQ pairs, weights, biases and constants into ``graph`` (toposort after).

    ``dedicated``: a Q/DQ pair per consumer of a tensor; onnxruntime's int8-to-uint8 conversion on x86
    only rewrites pairs with a single consumer, so shared int8 pairs would leave layers unfused."""
    emitter = Emitter(graph, plan.weight_bound, weight_floors(graph, plan, params))
    result = EmitResult()
    nodes = {n.name: n for n in graph.nodes}
    selected = set(plan.nodes)
    tensors = graph.tensors()
    outputs = {id(t) for t in graph.outputs}
    for name, source in plan.tensors.items():
        result.qdq_pairs += _quantize_activation(emitter, tensors[name], params[source], source, selected,
                                                 outputs, dedicated)
    weight_scales: dict[str, np.ndarray] = {}
    for use in plan.weights:
        node = nodes[use.node]
        node.inputs[use.index], weight_scales[use.node] = emitter.weight(node.inputs[use.index], use.axis)
        result.weights += 1
    for use in plan.biases:
        node = nodes[use.node]
        input_scale = params[plan.tensors[use.activation]].scale
        node.inputs[use.index] = emitter.bias(node, node.inputs[use.index], input_scale,
                                              weight_scales[use.node], result.notes)
        result.biases += 1
    for node_name, index in plan.constants:
        node = nodes[node_name]
        node.inputs[index] = emitter.constant(node, node.inputs[index])
    graph.toposort()
    return result


def _quantize_activation(emitter: Emitter, tensor: gs.Variable, qp: QParams, key: str, selected: set[str],
                         graph_outputs: set[int], dedicated: bool) -> int:
    """Q/DQ on ``tensor`` for its consumers; returns the number of pairs."""
    producer = tensor.inputs[0] if tensor.inputs else None
    produced_here = producer is not None and producer.name in selected
    if produced_here and id(tensor) in graph_outputs:
        # keep the graph output's name on the DQ output; the producer writes a renamed tensor
        renamed = gs.Variable(emitter.name(f"{tensor.name}_float"))
        producer.outputs[producer.outputs.index(tensor)] = renamed
        emitter.qdq(renamed, qp, key, out=tensor)
        return 1
    consumers = list({id(c): c for c in tensor.outputs if produced_here or c.name in selected}.values())
    groups = [[c] for c in consumers] if dedicated and len(consumers) > 1 else [consumers]
    for group in groups:
        rewire(tensor, emitter.qdq(tensor, qp, key), group)
    return len(groups)
