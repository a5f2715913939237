"""The float16 rewrite itself: one walk over the graph (and its subgraphs) in topological order.

Each node that computes in float32 is either *converted* (the schema bindings that may hold float16
become float16, attributes such as Cast ``to`` follow) or *kept* float32 for a reason (block lists,
calibration, no schema, no float16 in the schema, no provider kernel, control flow). Every consumer
then gets its inputs in the type it needs:

- a variable of the wrong type goes through one Cast per (tensor, type), placed in the graph that
  defines the tensor and shared by every consumer; a tensor that is itself a Cast output is cast
  from that Cast's input instead, so no Cast→Cast chain and no cancelling pair is created;
- a constant (initializer or Constant node) is converted in place when every consumer wants
  float16, else it stays float32 and float16 consumers share one Cast of it;
- graph outputs keep float32 when ``keep_io_types`` (always for subgraphs): the producer writes a
  new float16 tensor and one Cast restores the output's name and type.

Inputs that follow the data (a schema type variable bound to inputs only, such as Resize ``roi``,
a comparison's operands, or BatchNormalization's scale/bias/mean/var from opset 15) become float16
only when a non-constant input already is float16; constant-only ones (roi, BN statistics) stay
float32, which costs little size and keeps them exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, NamedTuple, TypeVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.graph import FreshNames, is_default_domain, node_label, subgraphs
from passes.fp16.probe import KernelProbe
from passes.fp16.schema import bindings, find_schema, has_attribute, node_id

logger = logging.getLogger(__name__)

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
FP16_MAX = 65504.0
#: the smallest float16 subnormal; smaller non-zero magnitudes would round to zero
FP16_TINY = 2.0 ** -24
_CONTROL_FLOW_REASON = "has a subgraph: kept float32, its body is converted inside float32 boundaries"
V = TypeVar("V")


@dataclass(frozen=True)
class Options:
    keep_io_types: bool = True
    op_block_list: frozenset[str] = frozenset()
    node_block_list: frozenset[str] = frozenset()
    #: node key -> reason, decided from calibration data
    blocked: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one conversion did."""

    #: keys of the converted nodes (unique in one scope; calibration reads those of the main graph)
    converted: set[str] = field(default_factory=set)
    nodes_converted: int = 0
    #: (node label, reason) of every float32 node kept float32; labels may repeat across subgraphs
    kept: list[tuple[str, str]] = field(default_factory=list)
    tensors_converted: int = 0
    constants_converted: int = 0
    values_clamped: int = 0
    tiny_values_raised: int = 0
    casts_added: int = 0
    emulated_ops: set[str] = field(default_factory=set)


class _Demand(NamedTuple):
    node: gs.Node | None  # None: the constant is a graph output
    index: int
    want: np.dtype
    scope: gs.Graph


@dataclass
class _Decision:
    fp16_inputs: set[int] = field(default_factory=set)
    fp16_outputs: set[int] = field(default_factory=set)
    attrs: dict[str, Any] = field(default_factory=dict)
    #: (values clamped, tiny values raised) by a rewritten tensor attribute
    range_fixes: tuple[int, int] = (0, 0)
    reason: str | None = None  # set when a float32 node stays float32


def node_key(node: gs.Node) -> str:
    """A stable identity of a node across copies of a graph: its first output's name."""
    return node_id([t.name for t in node.outputs], node.name)


def to_float16(values: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``values`` as float16, finite values clamped to ±65504 and non-zero magnitudes below the
    smallest subnormal raised to it (keeps epsilons non-zero); returns (array, clamped, raised)."""
    finite = np.isfinite(values)
    big = finite & (np.abs(values) > FP16_MAX)
    tiny = (values != 0) & (np.abs(values) < FP16_TINY)
    out = np.where(big, np.sign(values) * FP16_MAX, values)
    out = np.where(tiny, np.sign(values) * FP16_TINY, out)
    return out.astype(np.float16), int(big.sum()), int(tiny.sum())


def opset_map(graph: gs.Graph) -> dict[str, int]:
    found = {("" if d.domain == "ai.onnx" else d.domain): int(d.version) for d in graph.import_domains or []}
    found.setdefault("", int(graph.opset))
    return found


def float32_tensors(graph: gs.Graph) -> list[gs.Tensor]:
    """Tensors of ``graph`` and its subgraphs whose type is float32."""
    seen = TensorMap[gs.Tensor]()
    for g in [graph, *subgraphs(graph)]:
        for t in g.tensors().values():
            if _dtype(t) == F32:
                seen[t] = t
    return list(seen.values())


class TensorMap(Generic[V]):
    """A mapping keyed by tensor *identity*. onnx-graphsurgeon tensors compare by name, and a name
    can repeat across subgraph scopes (two If branches may each hold a local ``W``), so a name is
    not a key. The map holds its tensors, so an id is never reused while it is a key."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[gs.Tensor, V]] = {}

    def __setitem__(self, tensor: gs.Tensor, value: V) -> None:
        self._items[id(tensor)] = (tensor, value)

    def get(self, tensor: gs.Tensor, default: V | None = None) -> V | None:
        item = self._items.get(id(tensor))
        return default if item is None else item[1]

    def setdefault(self, tensor: gs.Tensor, value: V) -> V:
        return self._items.setdefault(id(tensor), (tensor, value))[1]

    def values(self) -> Iterator[V]:
        return (value for _, value in self._items.values())

    def items(self) -> Iterator[tuple[gs.Tensor, V]]:
        return iter(self._items.values())


def _dtype(t: gs.Tensor) -> np.dtype | None:
    if isinstance(t, gs.Variable) and t.type != "tensor_type":
        return None
    try:
        return None if t.dtype is None else np.dtype(t.dtype)
    except TypeError:  # onnx-only types (bfloat16, float8...) have no numpy dtype
        return None


class Converter:
    """Converts ``graph`` in place; ``run`` returns the ``Outcome``. One object per conversion."""

    def __init__(self, graph: gs.Graph, options: Options, probe: KernelProbe | None) -> None:
        self.graph = graph
        self.options = options
        self.probe = probe
        self.opsets = opset_map(graph)
        # every map is keyed by tensor identity: names repeat across subgraph scopes
        self.orig = TensorMap[np.dtype | None]()
        self.owner = TensorMap[gs.Graph]()
        self.names = FreshNames.of(graph)
        self.graphs = [graph, *subgraphs(graph)]
        for g in self.graphs:
            for t in g.tensors().values():
                self.orig.setdefault(t, _dtype(t))
            for t in g.inputs:
                self.owner[t] = g
            for node in g.nodes:
                for t in node.outputs:
                    self.owner[t] = g
        #: source tensor -> (type name, id of the scope) -> its Cast output
        self.casts = TensorMap[dict[tuple[str, int], gs.Variable]]()
        self.demands = TensorMap[list[_Demand]]()
        self.outcome = Outcome()

    def run(self) -> Outcome:
        if not self.options.keep_io_types:
            for t in self.graph.inputs:
                if self.orig.get(t) == F32:
                    t.dtype = F16
                    self.outcome.tensors_converted += 1
        self._walk(self.graph, fixed_io=self.options.keep_io_types, forced=None)
        self._resolve_constants()
        return self.outcome

    # -- walking ----------------------------------------------------------------------------
    def _walk(self, scope: gs.Graph, *, fixed_io: bool, forced: str | None) -> None:
        for node in list(scope.nodes):
            if node.op == "Constant" and _constant_node_value(node) is not None:
                continue
            self._visit(node, scope, forced)
        if fixed_io:
            self._keep_outputs(scope)

    def _visit(self, node: gs.Node, scope: gs.Graph, forced: str | None) -> None:
        decision = self._decide(node, forced)
        if decision.reason:
            self.outcome.kept.append((node_label(node), decision.reason))
        for i, t in enumerate(node.inputs):
            if not t.name or self.orig.get(t) != F32:
                continue
            want = F16 if i in decision.fp16_inputs else F32
            if _is_constant(t):
                self.demands.setdefault(t, []).append(_Demand(node, i, want, scope))
            elif t.dtype != want:
                node.inputs[i] = self._cast(t, want, scope)
        for j in decision.fp16_outputs:
            node.outputs[j].dtype = F16
            self.outcome.tensors_converted += 1
        node.attrs.update(decision.attrs)
        self.outcome.values_clamped += decision.range_fixes[0]
        self.outcome.tiny_values_raised += decision.range_fixes[1]
        if decision.fp16_outputs or decision.fp16_inputs:
            self.outcome.converted.add(node_key(node))
            self.outcome.nodes_converted += 1
        # a body stays float32 where its node is blocked by the user or by calibration data
        block = forced or self._user_block(node) or self.options.blocked.get(node_key(node))
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                self._walk(value, fixed_io=True, forced=block and f"inside {node_label(node)}: {block}")

    def _user_block(self, node: gs.Node) -> str | None:
        if node.op in self.options.op_block_list:
            return f"op type {node.op} is in op_block_list"
        if node.name and node.name in self.options.node_block_list:
            return "node name is in node_block_list"
        return None

    def _decide(self, node: gs.Node, forced: str | None) -> _Decision:
        float_in = {i for i, t in enumerate(node.inputs) if t.name and self.orig.get(t) == F32}
        float_out = {j for j, t in enumerate(node.outputs) if t.name and self.orig.get(t) == F32}
        if not float_in and not float_out:
            return _Decision()
        reason = forced or self._user_block(node) or self.options.blocked.get(node_key(node))
        if reason is None and any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            reason = _CONTROL_FLOW_REASON
        schema = find_schema(node, self.opsets)
        if reason is None and schema is None:
            reason = f"no ONNX schema for {node.domain or 'ai.onnx'}::{node.op} at this opset (custom op)"
        if reason is not None:
            return _Decision(reason=reason)
        decision = _Decision()
        unrewritable = float_only = False
        for b in bindings(node, schema):
            members = [node.inputs[i] for i in b.inputs] + [node.outputs[j] for j in b.outputs]
            if {self.orig.get(t) for t in members} - {None} != {F32}:
                continue
            if not b.float16_allowed:
                float_only = True
                continue
            for t in members:  # one type per binding: an untyped member is float32 too
                self.orig[t] = F32
                if isinstance(t, gs.Variable) and t.dtype is None:
                    t.dtype = F32
            ins, outs = list(b.inputs), list(b.outputs)
            if not b.inputs:  # output type set by an attribute
                if not self._attribute_rewrite(node, schema, decision):
                    unrewritable = True
                    continue
            elif not b.outputs and not any(node.inputs[i].dtype == F16 for i in ins
                                           if not _is_constant(node.inputs[i])):
                continue  # inputs-only type: follows the data, which is float32 here
            decision.fp16_inputs.update(ins)
            decision.fp16_outputs.update(outs)
        if not decision.fp16_inputs and not decision.fp16_outputs:
            if unrewritable:
                return _Decision(reason="its output type is set by an attribute this pass does not rewrite")
            if float_only:
                return _Decision(reason=f"the {node.op} schema allows no float16 for its float32 tensors")
            return _Decision()
        return self._check_provider(node, decision, float_in, float_out)

    def _attribute_rewrite(self, node: gs.Node, schema: onnx.defs.OpSchema, decision: _Decision) -> bool:
        """Put the attribute changes that make the node's output float16 into ``decision``."""
        if node.op == "Cast":  # a Cast from float16 up to float32 is deliberate (or our boundary)
            if self.orig.get(node.inputs[0]) == F16:
                return False
            decision.attrs["to"] = onnx.TensorProto.FLOAT16
        elif node.op == "ConstantOfShape":
            value = node.attrs.get("value")
            values = value.values if isinstance(value, gs.Constant) else np.zeros(1, np.float32)
            half, clamped, raised = to_float16(np.asarray(values))
            decision.attrs["value"] = gs.Constant(node_key(node) + "_value", half)
            decision.range_fixes = (clamped, raised)
        elif has_attribute(schema, "dtype"):
            decision.attrs["dtype"] = onnx.TensorProto.FLOAT16
        else:
            return False
        return True

    def _check_provider(self, node: gs.Node, decision: _Decision, float_in: set[int],
                        float_out: set[int]) -> _Decision:
        if self.probe is None:
            return decision
        ins = [None if not t.name else F16 if i in decision.fp16_inputs else F32 if i in float_in else _dtype(t)
               for i, t in enumerate(node.inputs)]
        outs = [None if not t.name else F16 if j in decision.fp16_outputs else F32 if j in float_out else _dtype(t)
                for j, t in enumerate(node.outputs)]
        result = self.probe.check(node, ins, outs, {**node.attrs, **decision.attrs})
        if result.status == "missing":
            return _Decision(reason=f"{self.probe.provider} has no float16 kernel for {node.op} ({result.detail})")
        if result.status == "emulated":
            self.outcome.emulated_ops.add(node.op)
        return decision

    # -- casts ------------------------------------------------------------------------------
    def _cast(self, tensor: gs.Tensor, want: np.dtype, consumer_scope: gs.Graph) -> gs.Tensor:
        source = tensor
        producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None
        if producer is not None and producer.op == "Cast" and is_default_domain(producer):
            source = producer.inputs[0]  # cast from the Cast's input: no Cast->Cast chain
            if source.dtype == want:
                return source
        scope = consumer_scope if _is_constant(source) else self.owner.get(source, consumer_scope)
        made = self.casts.setdefault(source, {})
        key = (want.name, id(scope))
        if key not in made:
            out = gs.Variable(self.names.fresh(f"{source.name}_{want.name}"), dtype=want, shape=source.shape)
            scope.nodes.append(gs.Node("Cast", self.names.fresh(f"{out.name}_cast"),
                                       {"to": onnx.helper.np_dtype_to_tensor_dtype(want)}, [source], [out]))
            self.owner[out] = scope
            made[key] = out
            self.outcome.casts_added += 1
        return made[key]

    def _keep_outputs(self, scope: gs.Graph) -> None:
        for pos, out in enumerate(list(scope.outputs)):
            if self.orig.get(out) != F32:
                continue
            if _is_constant(out):
                self.demands.setdefault(out, []).append(_Demand(None, pos, F32, scope))
            elif out.dtype == F16 and (self.owner.get(out) is not scope or not out.inputs):
                scope.outputs[pos] = self._cast(out, F32, scope)
            elif out.dtype == F16:
                self._split_output(out, scope)

    def _split_output(self, out: gs.Variable, scope: gs.Graph) -> None:
        """``producer -> out(fp16)`` becomes ``producer -> half -> Cast -> out(fp32)``."""
        half = gs.Variable(self.names.fresh(f"{out.name}_float16"), dtype=F16, shape=out.shape)
        self.owner[half] = scope
        consumers = list(out.outputs)
        producer = out.inputs[0]
        producer.outputs[next(k for k, t in enumerate(producer.outputs) if t is out)] = half
        for node in consumers:
            _replace_input(node, out, half)
        earlier = self.casts.get(out, {}).pop((F32.name, id(scope)), None)
        if earlier is not None:  # float32 consumers now read the output itself
            for node in list(earlier.outputs):
                _replace_input(node, earlier, out)
            for g in self.graphs:  # a subgraph may return the float32 copy directly
                g.outputs = [out if t is earlier else t for t in g.outputs]
            cast = earlier.inputs[0]
            cast.inputs.clear()
            cast.outputs.clear()
            self.outcome.casts_added -= 1
        out.dtype = F32
        scope.nodes.append(gs.Node("Cast", self.names.fresh(f"{out.name}_cast"), {"to": onnx.TensorProto.FLOAT},
                                   [half], [out]))
        self.casts[half] = {(F32.name, id(scope)): out}
        self.outcome.casts_added += 1

    # -- constants --------------------------------------------------------------------------
    def _resolve_constants(self) -> None:
        for tensor, demands in self.demands.items():
            wants = {d.want for d in demands}
            if wants == {F16}:
                self._constant_to_half(tensor)
            elif F16 in wants:
                for d in demands:
                    if d.want == F16 and d.node is not None:
                        d.node.inputs[d.index] = self._cast(tensor, F16, d.scope)

    def _constant_to_half(self, tensor: gs.Tensor) -> None:
        self.outcome.constants_converted += 1
        if isinstance(tensor, gs.Constant):
            tensor.values = self._half(tensor.values)
            return
        node = tensor.inputs[0]
        value = gs.Constant(tensor.name + "_value", self._half(_constant_node_value(node)))
        node.attrs.clear()
        node.attrs["value"] = value
        tensor.dtype = F16

    def _half(self, values: np.ndarray) -> np.ndarray:
        half, clamped, raised = to_float16(np.asarray(values))
        self.outcome.values_clamped += clamped
        self.outcome.tiny_values_raised += raised
        return half



def _replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for k, t in enumerate(node.inputs):
        if t is old:
            node.inputs[k] = new


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    """The float32 value of a Constant node, or ``None`` when it holds something else."""
    value = node.attrs.get("value")
    if isinstance(value, gs.Constant):
        return value.values if value.dtype == F32 else None
    if "value_float" in node.attrs:
        return np.asarray(node.attrs["value_float"], np.float32)
    if "value_floats" in node.attrs:
        return np.asarray(node.attrs["value_floats"], np.float32)
    return None


def _is_constant(t: gs.Tensor) -> bool:
    """An initializer or the float32 output of a Constant node."""
    if isinstance(t, gs.Constant):
        return True
    return len(t.inputs) == 1 and t.inputs[0].op == "Constant" and _constant_node_value(t.inputs[0]) is not None
