"""The working graph: onnx-graphsurgeon import/export that keeps what a model carries.

``gs.export_onnx`` drops model-level fields (metadata, doc string, model version, domain);
``export`` restores them from the original ``ModelProto`` so a pipeline keeps everything the
user's model had apart from what the passes changed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import SparseValues
from onnx_graphsurgeon.util.exception import OnnxGraphSurgeonException

logger = logging.getLogger(__name__)

#: the domain names of the default ONNX operator set (``None``: onnx-graphsurgeon's unset domain)
DEFAULT_DOMAINS = frozenset({None, "", "ai.onnx"})
#: domains whose ops onnxruntime implements (default ONNX, ONNX-ML, its own contrib ops)
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def is_default_domain(node: gs.Node) -> bool:
    """Whether ``node`` is an op of the default ONNX operator set."""
    return node.domain in DEFAULT_DOMAINS


def node_label(node: gs.Node) -> str:
    """How reports name a node: its name, else ``op->first output`` (exporters often leave names empty)."""
    output = next((t.name for t in node.outputs if t.name), "?")
    return node.name or f"{node.op}->{output}"


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """Return the onnx-graphsurgeon graph of ``model`` (tensors share no memory with it)."""
    return gs.import_onnx(model)


def export(graph: gs.Graph, template: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export ``graph`` to a ``ModelProto``, copying model-level fields from ``template``."""
    model = gs.export_onnx(graph, do_type_check=True)
    _hoist_shared_subgraph_initializers(model.graph)
    if template is not None:
        # IR < 4 requires every initializer to be a graph input, which onnx-graphsurgeon does not
        # keep; IR 4 is the smallest version the exported graph is valid under.
        model.ir_version = max(template.ir_version, _min_ir_version(model), 4)
        model.model_version = template.model_version
        model.doc_string = template.doc_string
        model.domain = template.domain
        if template.producer_name and not model.producer_name:
            model.producer_name = template.producer_name
            model.producer_version = template.producer_version
        del model.metadata_props[:]
        model.metadata_props.extend(template.metadata_props)
        existing = {f.name for f in model.functions}
        model.functions.extend(f for f in template.functions if f.name not in existing)
    return model


def copy_graph(graph: gs.Graph) -> gs.Graph:
    """A copy of ``graph`` whose nodes and tensors are new but whose weight arrays are shared.

    ``gs.Graph.copy`` drops a variable's ``type`` (a ``seq(tensor(float))`` comes back as a
    tensor), so it is copied here, subgraphs included.
    """
    copied = graph.copy()
    for old_graph, new_graph in zip([graph, *subgraphs(graph)], [copied, *subgraphs(copied)]):
        new_tensors = new_graph.tensors()
        for name, tensor in old_graph.tensors().items():
            twin = new_tensors.get(name)
            if isinstance(tensor, gs.Variable) and isinstance(twin, gs.Variable):
                twin.type = tensor.type
    return copied


def rewire(old: gs.Tensor, new: gs.Tensor, consumers: Iterable[gs.Node] | None = None) -> None:
    """Make every consumer of ``old`` (subgraph consumers included), or only ``consumers``, read
    ``new`` instead."""
    for consumer in list(old.outputs) if consumers is None else list(consumers):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def nbytes(tensor: gs.Tensor) -> int | None:
    """Size of ``tensor`` from its dtype and static shape (no lazy values loaded), else ``None``."""
    if tensor.dtype is None or tensor.shape is None or not all(isinstance(d, int) for d in tensor.shape):
        return None
    try:
        itemsize = np.dtype(tensor.dtype).itemsize
    except TypeError:
        return None
    return math.prod(tensor.shape) * itemsize


def constant_bytes(graph: gs.Graph) -> int:
    """Bytes held by the constants of ``graph`` (main graph), from their shapes and types where the
    type is a numpy one (no lazy values loaded)."""
    total = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            size = nbytes(tensor)
            total += size if size is not None else int(np.asarray(tensor.values).nbytes)
    return total


#: constants above this size enter a shape-inference probe as typed graph inputs, so inference
#: neither serializes the weights (slow on large models) nor meets protobuf's 2 GiB limit
PROBE_CONSTANT_BYTES = 4096


@contextlib.contextmanager
def weights_detached(graph: gs.Graph) -> Iterator[dict[str, gs.Constant]]:
    """For the ``with`` block, every dense numeric constant of ``graph`` larger than
    ``PROBE_CONSTANT_BYTES`` (not a graph output, exported in its own numpy type) is replaced, in
    place, by a graph input of the same name, type and shape; yields those constants by name and puts
    them back afterwards, also after an error, with their consumers in the same order and the same
    ``graph.inputs`` list. The graph then exports without its weights, which is cheaper than copying
    it; small constants (shapes, axes, indices) stay in it."""
    outputs = {id(t) for t in graph.outputs}
    detached: list[tuple[gs.Constant, list[gs.Node], list[tuple[gs.Node, int]]]] = []
    inputs = list(graph.inputs)
    try:
        for tensor in list(graph.tensors().values()):
            if isinstance(tensor, gs.Constant) and (nbytes(tensor) or 0) > PROBE_CONSTANT_BYTES \
                    and np.dtype(tensor.dtype).kind in "biuf" and tensor.export_dtype == tensor.dtype \
                    and not _is_sparse(tensor) and id(tensor) not in outputs:
                stand_in = gs.Variable(tensor.name, dtype=tensor.dtype, shape=list(tensor.shape))
                order = list(tensor.outputs)  # a node reading the tensor twice is listed twice
                uses = [(node, i) for node in {id(n): n for n in order}.values()
                        for i, t in enumerate(node.inputs) if t is tensor]
                detached.append((tensor, order, uses))
                for node, i in uses:
                    node.inputs[i] = stand_in
                graph.inputs.append(stand_in)
        yield {tensor.name: tensor for tensor, _, _ in detached}
    finally:
        for tensor, order, uses in reversed(detached):
            for node, i in uses:
                node.inputs[i] = tensor
            # the consumers already read ``tensor`` again: set their order without syncing the nodes
            list.__setitem__(tensor.outputs, slice(None), order)
        graph.inputs[:] = inputs


def _is_sparse(constant: gs.Constant) -> bool:
    """Whether onnx-graphsurgeon holds ``constant`` as a sparse initializer (``.values`` would load a
    lazy dense one, so the held object is looked at)."""
    return isinstance(getattr(constant, "_values", None), SparseValues)


def inference_probe(graph: gs.Graph) -> onnx.ModelProto:
    """``graph`` exported for onnx shape inference without its weights (see ``weights_detached``):
    inference neither serializes the weights (slow on large models) nor meets protobuf's 2 GiB limit,
    and it only needs the values of small constants."""
    with weights_detached(graph):
        model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = max(model.ir_version, 4)  # IR 3 ignores initializers that are not inputs
    return model


#: what onnx shape inference raises on a graph it cannot type (custom ops, inconsistent types)
INFERENCE_FAILURES = (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError, RuntimeError,
                      TypeError, OnnxGraphSurgeonException)


@dataclass
class TypeInfo:
    """Element type and shape (``None`` for a symbolic or unknown dim) of the main graph's tensors."""

    dtypes: dict[str, np.dtype | None] = field(default_factory=dict)
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)


def infer_types(graph: gs.Graph, *, data_prop: bool = False) -> TypeInfo:
    """The element type and shape of every main-graph tensor that onnx shape inference can tell (with
    ``data_prop``: also shapes computed from Shape ops), from one lenient inference on the weightless
    probe (see ``inference_probe``); constants keep their own types. When inference fails, the
    declared types are used."""
    model = inference_probe(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=data_prop).graph
    except INFERENCE_FAILURES as exc:
        logger.info("shape inference failed (%s); using declared types only", exc)
        inferred = model.graph
    info = TypeInfo()
    for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        tensor_type = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        elem = tensor_type.elem_type if tensor_type is not None else 0
        info.dtypes[vi.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else None
        if tensor_type is not None and tensor_type.HasField("shape"):
            info.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                         for d in tensor_type.shape.dim)
    info.dtypes.update(constant_types(graph))
    return info


def infer_scopes(graph: gs.Graph, *, strict: bool = False, data_prop: bool = False) -> list[dict[str, onnx.ValueInfoProto]]:
    """What one onnx shape inference on the weightless probe finds, per graph of
    ``[graph, *subgraphs(graph)]`` (same order): every value that graph sees by name, its own over
    those of the graphs around it (two branches may each have a local tensor of one name and
    different types). Raises one of ``INFERENCE_FAILURES``; ``strict`` raises on the first error."""
    inferred = onnx.shape_inference.infer_shapes(inference_probe(graph), strict_mode=strict, data_prop=data_prop)
    return _scope_values(inferred.graph, {})


def _scope_values(g: onnx.GraphProto,
                  outer: dict[str, onnx.ValueInfoProto]) -> list[dict[str, onnx.ValueInfoProto]]:
    """The values ``g`` sees, then those of its nested graphs, depth-first in the order of
    ``subgraphs`` (the probe is exported from the same graph). Read from the ValueInfoProtos directly:
    importing the inferred graph again is slow."""
    seen = dict(outer)
    seen.update((vi.name, vi) for vi in (*g.input, *g.output, *g.value_info) if vi.type.ByteSize() > 0)
    found = [seen]
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found.extend(_scope_values(attr.g, seen))
    return found


def constant_types(graph: gs.Graph) -> dict[str, np.dtype]:
    """The element type of each constant of the main graph."""
    return {name: np.dtype(t.dtype) for name, t in graph.tensors().items()
            if isinstance(t, gs.Constant) and t.dtype is not None}


def subgraph_protos(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """Every subgraph below ``graph`` (If/Loop/Scan bodies, nested ones included)."""
    found = []
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                found.append(sub)
                found.extend(subgraph_protos(sub))
    return found


def _hoist_shared_subgraph_initializers(main: onnx.GraphProto) -> None:
    """Move a weight that onnx-graphsurgeon exported into several subgraphs back to the main graph.

    onnx-graphsurgeon writes an outer-scope constant into every subgraph that reads it, so a weight
    shared by both branches of an If would be stored twice. A name held by identical initializers
    in two or more subgraphs, and defined nowhere else, becomes one main-graph initializer (outer
    scope is visible from every subgraph)."""
    subs = subgraph_protos(main)
    if len(subs) < 2:
        return
    copies: dict[str, list[tuple[onnx.GraphProto, onnx.TensorProto]]] = {}
    defined_elsewhere: set[str] = {i.name for i in main.input} | {t.name for t in main.initializer}
    defined_elsewhere.update(o for n in main.node for o in n.output)
    for sub in subs:
        defined_elsewhere.update(i.name for i in sub.input)
        defined_elsewhere.update(o for n in sub.node for o in n.output)
        for tensor in sub.initializer:
            copies.setdefault(tensor.name, []).append((sub, tensor))
    for name, held in copies.items():
        if len(held) < 2 or name in defined_elsewhere:
            continue
        first = held[0][1].SerializeToString()
        if any(t.SerializeToString() != first for _, t in held[1:]):
            continue
        main.initializer.append(held[0][1])
        for sub, tensor in held:
            sub.initializer.remove(tensor)


def initializer_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that are also initializers (IR < 4 exports, or overridable defaults); the working
    graph treats them as constants."""
    names = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name in names]


def _min_ir_version(model: onnx.ModelProto) -> int:
    try:
        return onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except (TypeError, ValueError):
        return model.ir_version


def replace_contents(graph: gs.Graph, other: gs.Graph) -> None:
    """Make ``graph`` hold ``other``'s nodes and tensors (for passes that work on a ModelProto)."""
    graph.nodes = other.nodes
    graph.inputs = other.inputs
    graph.outputs = other.outputs
    graph.opset = other.opset
    graph.import_domains = other.import_domains
    graph.functions = other.functions


def default_opset(graph: gs.Graph) -> int:
    """The version of the default ("" / ai.onnx) opset the graph imports."""
    for imp in graph.import_domains or []:
        if imp.domain in DEFAULT_DOMAINS:
            return int(imp.version)
    return int(graph.opset)


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output, else ``None``."""
    if isinstance(tensor, gs.Constant):
        return tensor.values
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        node = tensor.inputs[0]
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return value.values
    return None


def subgraphs(graph: gs.Graph) -> list[gs.Graph]:
    """Graphs nested in node attributes (If/Loop/Scan bodies), recursively."""
    found: list[gs.Graph] = []
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                found.append(value)
                found.extend(subgraphs(value))
    return found


class FreshNames:
    """Names that collide with none taken so far: ``fresh(base)`` is ``base`` when free, else
    ``base_1``, ``base_2``, ..."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self._taken = set(taken)

    @classmethod
    def of(cls, graph: gs.Graph) -> FreshNames:
        """Everything named in ``graph`` and its subgraphs: tensors and nodes."""
        scopes = [graph, *subgraphs(graph)]
        return cls([*(name for g in scopes for name in g.tensors()), *(n.name for g in scopes for n in g.nodes)])

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name


def unique_node_names(graph: gs.Graph) -> list[str]:
    """The name of each main-graph node once unnamed and duplicate-named ones get unique names
    (``op_index`` for an unnamed one, ``name_1`` ... for a repeated one)."""
    seen = FreshNames()
    return [seen.fresh(node.name or f"{node.op}_{i}") for i, node in enumerate(graph.nodes)]
