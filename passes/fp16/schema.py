"""Types for the fp16 pass: which inputs and outputs of a node may hold float16, read from the op
schema's type constraints, and the element types of untyped tensors from onnx type inference.

``onnx.defs.get_schema(op, opset, domain)`` gives each formal input/output a type string: a type
variable (``T``, ``T1``, ...) whose allowed types are listed in the schema's type constraints, or a
fixed type such as ``tensor(float)`` (Resize ``scales``) or ``tensor(int64)`` (shapes, indices).
All tensors bound to one variable share one type, so a node's tensors are grouped into
:class:`Binding` s and converted group by group; a fixed ``tensor(float)`` is its own group whose
allowed types exclude float16, so such inputs are never converted.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from onnxopt.graph import inference_probe

FLOAT16 = "tensor(float16)"
FLOAT = "tensor(float)"


@dataclass(frozen=True)
class Binding:
    """The inputs and outputs of one node that the schema binds to one type (variable or fixed)."""

    type_str: str
    allowed: frozenset[str]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @property
    def float16_allowed(self) -> bool:
        return FLOAT16 in self.allowed


def find_schema(node: gs.Node, opsets: dict[str, int]) -> onnx.defs.OpSchema | None:
    """The schema of ``node`` at the opset the model imports for its domain, or ``None``."""
    domain = "" if node.domain in (None, "", "ai.onnx") else node.domain
    version = opsets.get(domain)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(node.op, version, domain)
    except onnx.defs.SchemaError:
        return None


def bindings(node: gs.Node, schema: onnx.defs.OpSchema) -> list[Binding]:
    """Group the node's (non-empty) inputs and outputs by the schema type they are bound to."""
    constraints = {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints}
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for side, formals, tensors in ((0, schema.inputs, node.inputs), (1, schema.outputs, node.outputs)):
        for index, tensor in enumerate(tensors):
            if not tensor.name:
                continue
            formal = _formal(formals, index)
            if formal is None:
                continue
            key = formal.type_str if formal.type_str in constraints else f"{formal.type_str}@{formal.name}"
            if not formal.is_homogeneous:  # heterogeneous variadics (Loop/Scan states): one type each
                key = f"{key}@{side}.{index}"
            groups.setdefault(key, ([], []))[side].append(index)
    out = []
    for key, (ins, outs) in groups.items():
        type_str = key.split("@", 1)[0]
        allowed = constraints.get(type_str, frozenset([type_str]))
        out.append(Binding(type_str, allowed, tuple(ins), tuple(outs)))
    return out


def _formal(formals: list[onnx.defs.OpSchema.FormalParameter], index: int) -> onnx.defs.OpSchema.FormalParameter | None:
    if index < len(formals):
        return formals[index]
    if formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return formals[-1]
    return None


def has_attribute(schema: onnx.defs.OpSchema, name: str) -> bool:
    return name in schema.attributes


#: where a graph sits: () for the main graph, then (node id, attribute name) per level of nesting
Scope = tuple[str, ...]
#: inferred tensor types by (scope, name): a name can repeat across subgraph scopes
Types = dict[tuple[Scope, str], onnx.TypeProto.Tensor]


def inferred_types(graph: gs.Graph) -> Types:
    """Tensor types (element type and shape) of ``graph`` and its subgraphs from onnx type inference;
    raises ``onnx.shape_inference.InferenceError`` (or ``ValueError``) when inference fails."""
    inferred = onnx.shape_inference.infer_shapes(inference_probe(graph), strict_mode=False)  # no weights copied
    types: Types = {}
    pending: list[tuple[Scope, onnx.GraphProto]] = [((), inferred.graph)]
    while pending:
        scope, g = pending.pop()
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[scope, vi.name] = vi.type.tensor_type
        for node in g.node:
            where = node_id(list(node.output), node.name)
            pending.extend(((*scope, where, a.name), a.g) for a in node.attribute if a.HasField("g"))
    return types


def apply_types(graph: gs.Graph, types: Types) -> None:
    """Give the untyped (or unshaped) tensors of ``graph`` and its subgraphs their inferred type."""
    for scope, g in _scoped_graphs(graph, ()):
        for t in g.tensors().values():
            if not isinstance(t, gs.Variable) or t.type != "tensor_type":
                continue
            found = _lookup(types, scope, t.name)
            if found is None:
                continue
            if t.dtype is None:
                t.dtype = onnx.helper.tensor_dtype_to_np_dtype(found.elem_type)
            if t.shape is None and found.HasField("shape"):
                t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in found.shape.dim]


def _scoped_graphs(graph: gs.Graph, scope: Scope) -> list[tuple[Scope, gs.Graph]]:
    found = [(scope, graph)]
    for node in graph.nodes:
        where = node_id([t.name for t in node.outputs], node.name)
        for name, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                found.extend(_scoped_graphs(value, (*scope, where, name)))
    return found


def _lookup(types: Types, scope: Scope, name: str) -> onnx.TypeProto.Tensor | None:
    """The type of ``name`` as seen from ``scope``: its own value, else the nearest enclosing one."""
    while True:
        if (scope, name) in types:
            return types[scope, name]
        if not scope:
            return None
        scope = scope[:-2]


def node_id(outputs: list[str], name: str) -> str:
    """A node's identity in its graph: its first output name (unique in SSA form), else its name."""
    return next((o for o in outputs if o), name)
