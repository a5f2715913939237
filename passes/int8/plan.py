"""The int8 pass's plan: which nodes are quantized, which tensors get Q/DQ and whose scale they use.

Compute layers (Conv, ConvTranspose, Gemm, MatMul) anchor the plan. Ops with integer kernels of
their own (Add, Mul, pooling, Concat), the shape ops between layers and Relu/Clip join it when they
feed a quantized node, so onnxruntime finds complete DQ -> op -> Q groups to fuse; ops that only
read quantized values stay in float (quantizing them would add error and fuse nothing useful).
Shape ops (and MaxPool/Resize, whose outputs stay inside the input range) reuse their input's
scale, which lets onnxruntime drop their Q/DQ pairs. In asymmetric mode a Relu (or a Clip with lower bound 0)
directly after an integer op is left in the graph with the Q/DQ after it: its zero point is then
``qmin``, the quantizer's clamp *is* the Relu, and onnxruntime removes the node only because that is
exact. In symmetric mode the Relu stays and reuses its input's scale (exact as well).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import constant_value, default_opset, is_default_domain
from onnxopt.pass_base import Skip
from passes.int8.op_table import (COMPUTE_OPS, OPS, QLINEAR_OPS, SHARED_SCALE_OPS, Role, bias_index, check,
                                  data_inputs, is_data_input, weight_axis, weight_index)

logger = logging.getLogger(__name__)

#: a Softmax at the end of the quantized region joins it only over this many rows per sample (a
#: detector's anchor scores): onnxruntime's float kernel is slow on many short rows, while a
#: classifier's one row per sample gains nothing and its uint8 probabilities can tie the top classes
SOFTMAX_MIN_ROWS = 64


@dataclass(frozen=True)
class PlanSettings:
    symmetric: bool
    per_channel: bool
    #: int8 weights use [-weight_bound, weight_bound]
    weight_bound: int = 127
    exclude_ops: frozenset[str] = frozenset()
    exclude_nodes: frozenset[str] = frozenset()
    keep_first_last: bool = False
    #: node name -> why it stays in float (set by the accuracy budget)
    keep_float: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightUse:
    node: str
    index: int
    axis: int | None


@dataclass(frozen=True)
class BiasUse:
    node: str
    index: int
    #: the input activation whose scale s_x gives the bias scale s_x * s_w
    activation: str


@dataclass
class Plan:
    #: int8 weights use [-weight_bound, weight_bound]
    weight_bound: int = 127
    #: selected nodes, in topological order
    nodes: list[str] = field(default_factory=list)
    #: selected compute layers (the unit of the accuracy budget)
    layers: list[str] = field(default_factory=list)
    #: quantized activation tensor -> the tensor whose calibrated parameters it uses
    tensors: dict[str, str] = field(default_factory=dict)
    weights: list[WeightUse] = field(default_factory=list)
    biases: list[BiasUse] = field(default_factory=list)
    #: constant inputs of Add/Mul/Concat, stored as uint8: (node, input index)
    constants: list[tuple[str, int]] = field(default_factory=list)
    #: outputs of integer Gemm/MatMul read only by float ops, left in float (QGemm/MatMulIntegerToFloat)
    float_outputs: list[str] = field(default_factory=list)
    #: outputs of integer ops left unquantized because the Relu/Clip after them is quantized instead
    folded: list[str] = field(default_factory=list)
    #: quantized tensors read only by float ops (or graph outputs): they keep their full range, since
    #: clipping there cuts the extreme values (confident logits) that the outputs are made of
    exits: list[str] = field(default_factory=list)
    #: op type of every selected node
    ops: dict[str, str] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def observed(self) -> list[str]:
        """Tensors that need a calibration observer of their own."""
        return [t for t, source in self.tensors.items() if t == source]

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.ops.values()).items()))


def candidate_tensors(graph: gs.Graph, dtypes: Mapping[str, np.dtype | None]) -> list[str]:
    """Every float activation a plan could quantize (inputs and outputs of covered nodes)."""
    names: dict[str, None] = {}
    for node in graph.nodes:
        if node.op not in OPS or check(node, dtypes) is not None:
            continue
        for tensor in [node.inputs[i] for i in data_inputs(node)] + node.outputs[:1]:
            if isinstance(tensor, gs.Variable) and constant_value(tensor) is None:
                names[tensor.name] = None
    return list(names)


def make_plan(graph: gs.Graph, settings: PlanSettings, dtypes: Mapping[str, np.dtype | None],
              shapes: Mapping[str, tuple[int | None, ...]] | None = None) -> Plan:
    """The plan for a toposorted graph with unique node names (``shapes``: inferred tensor shapes)."""
    plan = Plan(weight_bound=settings.weight_bound)
    candidates = _candidates(graph, settings, dtypes, plan)
    selected = _select(candidates, plan, shapes or {}, default_opset(graph), _batch_size(graph))
    order = [n for n in graph.nodes if n.name in selected]
    plan.nodes = [n.name for n in order]
    plan.ops = {n.name: n.op for n in order}
    plan.layers = [n.name for n in order if n.op in COMPUTE_OPS]
    outputs = {t.name for t in graph.outputs}
    for node in order:
        _plan_inputs(node, plan, settings)
        _plan_output(node, plan, selected, settings, outputs)
    return plan


# -- selection --------------------------------------------------------------------------------

def _candidates(graph: gs.Graph, settings: PlanSettings, dtypes: Mapping[str, np.dtype | None],
                plan: Plan) -> list[gs.Node]:
    uncovered: Counter[str] = Counter()
    eligible = []
    for node in graph.nodes:
        if node.op not in OPS or not is_default_domain(node):
            uncovered[node.op] += 1
            continue
        reason = check(node, dtypes)
        if reason is None and node.op in settings.exclude_ops:
            reason = "excluded by exclude_ops"
        if reason is None and node.name in settings.exclude_nodes:
            reason = "excluded by exclude_nodes"
        if reason is not None:
            plan.skipped.append(Skip(node.name, reason))
            continue
        eligible.append(node)
    for op, count in sorted(uncovered.items()):
        plan.skipped.append(Skip(f"{op} ({count} node{'s' * (count > 1)})",
                                 "no integer kernel for this op in onnxruntime; stays in float"))
    kept: dict[str, str] = dict(settings.keep_float)
    if settings.keep_first_last:
        layers = [n.name for n in eligible if n.op in COMPUTE_OPS]
        for name in dict.fromkeys(layers[:1] + layers[-1:]):
            kept[name] = "first/last compute layer kept in float (keep_first_last)"
    for node in [n for n in eligible if n.name in kept]:
        plan.skipped.append(Skip(node.name, kept[node.name]))
        eligible.remove(node)
    return eligible


def _select(candidates: list[gs.Node], plan: Plan, shapes: Mapping[str, tuple[int | None, ...]],
            opset: int, batch: int) -> set[str]:
    """Compute layers, plus covered ops that feed a selected node (to a fixed point), plus Relu/Clip and
    pooling after a selected node (the quantizer after a Relu acts as the activation; after a
    pooling, the dequantization runs on the smaller pooled tensor, as after a classifier's last
    Conv -> Relu -> GlobalAveragePool), plus a Softmax over many rows reached from quantized nodes
    through shape ops and Concats (see ``SOFTMAX_MIN_ROWS``)."""
    selected = {n.name for n in candidates if n.op in COMPUTE_OPS}
    joining = [n for n in candidates if n.op not in COMPUTE_OPS]
    changed = True
    while changed:
        changed = False
        for node in joining:
            if node.name not in selected and _feeds(node, selected):
                selected.add(node.name)
                changed = True
    changed = True
    while changed:  # forward: an activation, or a pooling whose Q/DQ then runs on the pooled tensor
        changed = False
        for node in joining:
            if node.name not in selected and _joins_after(node) and _fed_by(node, selected):
                selected.add(node.name)
                changed = True
    eligible = {n.name for n in joining}
    few_rows: dict[str, int] = {}
    for node in joining:
        if OPS[node.op].role is not Role.SOFTMAX or node.name in selected:
            continue
        rows = _softmax_rows(node, shapes, opset, batch)
        path = _path_from(node, selected, eligible)
        if path is not None and rows >= SOFTMAX_MIN_ROWS:
            selected.update(path | {node.name})
        elif path is not None:
            few_rows[node.name] = rows
    for node in joining:
        if node.name in few_rows:
            plan.skipped.append(Skip(node.name, f"Softmax over {few_rows[node.name] or 'unknown'} row(s) per sample "
                                                f"stays float (QLinearSoftmax pays off from {SOFTMAX_MIN_ROWS} rows)"))
        elif node.name not in selected:
            plan.skipped.append(Skip(node.name, "does not feed a quantized layer (nothing to fuse with)"))
    return selected


def _softmax_rows(node: gs.Node, shapes: Mapping[str, tuple[int | None, ...]], opset: int, batch: int) -> int:
    """Rows a Softmax normalises per sample: all rows of a run over the model's batch size ``batch``
    (a fixed-batch classifier has one per sample, not the batch's count); 0 when the input's shape
    or the normalised length is unknown. Symbolic dims other than that length count as 1."""
    shape = shapes.get(node.inputs[0].name)
    if not shape:
        return 0
    axis = int(node.attrs.get("axis", -1 if opset >= 13 else 1))
    axis += len(shape) if axis < 0 else 0
    if not 0 <= axis < len(shape):
        return 0
    dims = [d or 1 for d in shape]
    if opset >= 13:  # normalised along one axis
        if shape[axis] is None:
            return 0
        rows = math.prod(dims) // max(dims[axis], 1)
    else:  # before opset 13: the input is coerced to 2-D at ``axis``
        if any(d is None for d in shape[axis:]):
            return 0
        rows = math.prod(dims[:axis])
    return rows // max(batch, 1)


def _batch_size(graph: gs.Graph) -> int:
    """The model's batch size: the first graph input's leading dim when fixed, else 1."""
    for tensor in graph.inputs:
        if tensor.shape:
            first = tensor.shape[0]
            return first if isinstance(first, int) and first > 0 else 1
    return 1


def _path_from(node: gs.Node, selected: set[str], eligible: set[str]) -> set[str] | None:
    """The shape ops and Concats between ``node`` and quantized nodes, when every data input of
    ``node`` comes from quantized nodes that way (a detector's score head: Reshape, Concat, Flatten,
    Softmax); ``None`` otherwise. onnxruntime's float Softmax over thousands of short rows costs
    more than QLinearSoftmax (ultraface: 114 vs 33 us of 2.4 ms)."""
    path: set[str] = set()
    pending = [node.inputs[i] for i in data_inputs(node)]
    while pending:
        tensor = pending.pop()
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None or constant_value(tensor) is not None:
            return None
        if producer.name in selected or producer.name in path:
            continue
        if producer.name not in eligible or producer.op not in SHARED_SCALE_OPS | {"Concat"}:
            return None
        path.add(producer.name)
        pending.extend(producer.inputs[i] for i in data_inputs(producer))
    return path


def _feeds(node: gs.Node, selected: set[str]) -> bool:
    return any(consumer.name in selected and is_data_input(consumer, node.outputs[0])
               for consumer in node.outputs[0].outputs)


def _fed_by(node: gs.Node, selected: set[str]) -> bool:
    producers = node.inputs[0].inputs
    return bool(producers) and producers[0].name in selected


# -- tensors ----------------------------------------------------------------------------------

def _plan_inputs(node: gs.Node, plan: Plan, settings: PlanSettings) -> None:
    for i in data_inputs(node):
        tensor = node.inputs[i]
        if constant_value(tensor) is not None:
            plan.constants.append((node.name, i))
        elif tensor.name not in plan.tensors and tensor.name not in plan.folded:
            plan.tensors[tensor.name] = tensor.name
    if node.op not in COMPUTE_OPS:
        return
    weight = weight_index(node)
    if weight is not None:
        axis, note = weight_axis(node, constant_value(node.inputs[weight]), settings.per_channel)
        if note:
            plan.notes.append(f"{node.name}: {note}")
        plan.weights.append(WeightUse(node.name, weight, axis))
        bias = bias_index(node)
        if bias is not None:
            plan.biases.append(BiasUse(node.name, bias, node.inputs[0].name))


def _plan_output(node: gs.Node, plan: Plan, selected: set[str], settings: PlanSettings,
                 graph_outputs: set[str]) -> None:
    out = node.outputs[0]
    consumers = out.outputs
    is_output = out.name in graph_outputs
    quantized_consumers = [c for c in consumers if c.name in selected and is_data_input(c, out)]
    if (not settings.symmetric and not is_output and node.op in COMPUTE_OPS | QLINEAR_OPS
            and len(consumers) == 1 and quantized_consumers and _clamps_at_zero(consumers[0])):
        plan.folded.append(out.name)
        return  # the Relu/Clip after it is the quantizer's clamp: Q/DQ goes after the activation
    if OPS[node.op].float_output and not quantized_consumers:
        plan.float_outputs.append(out.name)
        return
    shares = node.op in SHARED_SCALE_OPS or (OPS[node.op].shares_scale_symmetric and settings.symmetric)
    source = plan.tensors.get(node.inputs[0].name) if shares else None
    plan.tensors[out.name] = source or out.name
    if not quantized_consumers and (source or out.name) not in plan.exits:
        plan.exits.append(source or out.name)  # a MaxPool at the end shares its input's range: keep it full


def _joins_after(node: gs.Node) -> bool:
    """An activation or a pooling: it joins the plan after a quantized node."""
    rule = OPS[node.op]
    return rule.role is Role.ACTIVATION or rule.pooling


def _clamps_at_zero(node: gs.Node) -> bool:
    clamps = OPS[node.op].clamps_at_zero
    return clamps is not None and clamps(node)
