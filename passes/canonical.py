"""Canonicalisation: shape inference, constant folding, Identity/Dropout removal, BatchNorm folding,
dead-node cleanup.

These passes tidy a graph before (and after) the compressing passes. All but ``fold-batchnorm`` are
lossless; BatchNorm folding rounds the folded weights back to their dtype. Every pass walks If/Loop
bodies too, and every node it leaves alone gets a reason in the report.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.util.exception import OnnxGraphSurgeonException

from onnxopt.graph import constant_value, default_opset, import_graph, subgraphs
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
from onnxopt.runtime import make_session

logger = logging.getLogger(__name__)

# Constants above this size enter the shape-inference probe as typed graph inputs, so the probe
# stays far below protobuf's 2 GiB limit whatever the model's size.
_PROBE_CONSTANT_BYTES = 1 << 20
_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                         "Multinomial", "Bernoulli"})
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def _all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    return [graph, *subgraphs(graph)]


def _all_nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    for g in _all_graphs(graph):
        yield from g.nodes


def _node_label(node: gs.Node) -> str:
    return node.name or f"{node.op}->{node.outputs[0].name if node.outputs else '?'}"


def _rewire(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` (subgraph consumers included) read ``new`` instead."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def _owns(g: gs.Graph, node: gs.Node) -> bool:
    return any(n is node for n in g.nodes)


def _nbytes(tensor: gs.Tensor) -> int | None:
    """Size of ``tensor`` from its dtype and static shape, else ``None``."""
    if tensor.dtype is None or tensor.shape is None or not all(isinstance(d, int) for d in tensor.shape):
        return None
    try:
        itemsize = np.dtype(tensor.dtype).itemsize
    except TypeError:
        return None
    return math.prod(tensor.shape) * itemsize


# -- shape inference -------------------------------------------------------------------------------
_INFERENCE_FAILURES = (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError,
                       RuntimeError, TypeError, OnnxGraphSurgeonException)
_STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def _infer(graph: gs.Graph, notes: list[str]) -> dict[str, gs.Tensor]:
    """Tensors of ``graph`` as onnx shape inference (with data propagation) sees them, by name.

    Inference errors are reported in ``notes`` and inference reruns leniently, keeping what it can
    infer; failures to run at all raise one of ``_INFERENCE_FAILURES``.
    """
    probe = graph.copy()
    for tensor in list(probe.tensors().values()):
        if isinstance(tensor, gs.Constant) and (_nbytes(tensor) or 0) > _PROBE_CONSTANT_BYTES \
                and tensor not in probe.outputs:
            stand_in = gs.Variable(tensor.name, dtype=tensor.dtype, shape=list(tensor.shape))
            _rewire(tensor, stand_in)
            probe.inputs.append(stand_in)
    model = gs.export_onnx(probe, do_type_check=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        notes.append(f"shape inference found errors, kept what lenient inference infers: {_first_line(exc)}")
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    custom = sorted({n.domain for n in _all_nodes(graph) if (n.domain or "") not in _STANDARD_DOMAINS})
    if custom:
        notes.append(f"ops of custom domain(s) {', '.join(custom)} have no shape inference; "
                     "tensors computed from them may stay untyped")
    found: dict[str, gs.Tensor] = {}
    for g in _all_graphs(import_graph(inferred)):
        found.update(g.tensors())
    return found


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _merged_shape(old: list | None, new: list | None) -> tuple[list | None, bool]:
    """(shape to keep, whether ``new`` adds information). A dim is replaced when it was unknown
    (``None``) or when ``new`` has a concrete value for a symbolic one."""
    if new is None:
        return old, False
    if old is None:
        return list(new), True
    if len(old) != len(new):
        return old, False
    merged, gained = [], False
    for o, n in zip(old, new):
        if not isinstance(o, int) and isinstance(n, int):
            merged.append(n)
            gained = True
        elif o is None and n is not None:
            merged.append(n)
        else:
            merged.append(o)
    return merged, gained


def _apply_inferred(graph: gs.Graph, inferred: dict[str, gs.Tensor], report: PassReport) -> int:
    """Copy inferred dtypes/shapes onto the variables of ``graph``; return how many gained info."""
    gained = 0
    for g in _all_graphs(graph):
        for name, tensor in g.tensors().items():
            new = inferred.get(name)
            if not isinstance(tensor, gs.Variable) or not isinstance(new, gs.Variable) or not name:
                continue
            if tensor.shape is not None and new.shape is not None and len(tensor.shape) != len(new.shape):
                report.skip(name, f"inferred rank {len(new.shape)} conflicts with the declared shape "
                                  f"{tensor.shape}; kept the declared one")
                continue
            shape, shape_gained = _merged_shape(tensor.shape, new.shape)
            dtype_gained = tensor.dtype is None and new.dtype is not None
            if dtype_gained:
                tensor.dtype = new.dtype
            tensor.shape = shape
            gained += int(dtype_gained or shape_gained)
    return gained


@dataclass(kw_only=True)
class ShapeInference(Pass):
    name: ClassVar[str] = "shape-inference"
    summary: ClassVar[str] = ("Annotate tensors with the dtypes/shapes onnx shape inference (with data "
                              "propagation) finds; weights untouched.")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        try:
            inferred = _infer(graph, report.notes)
        except _INFERENCE_FAILURES as exc:
            report.notes.append(f"shape inference failed, graph left as it was: {_first_line(exc)}")
            logger.warning("shape inference failed: %s", _first_line(exc))
            return report
        report.changes = _apply_inferred(graph, inferred, report)
        report.details["tensors_annotated"] = report.changes
        return report


# -- constant folding ------------------------------------------------------------------------------
def _static_shape_value(node: gs.Node) -> np.ndarray | None:
    """The value of a ``Shape``/``Size`` node, or of ``Gather(Shape(x), const)``, from static dims."""
    if node.op in ("Shape", "Size") and isinstance(node.inputs[0], gs.Variable):
        dims = node.inputs[0].shape
        if dims is None:
            return None
        if node.op == "Shape":
            dims = dims[node.attrs.get("start", 0):node.attrs.get("end", len(dims))]
        if not all(isinstance(d, int) for d in dims):
            return None
        return np.array(dims, np.int64) if node.op == "Shape" else np.array(math.prod(dims), np.int64)
    if node.op != "Gather" or node.attrs.get("axis", 0) not in (0, -1):
        return None
    data, index_values = node.inputs[0], constant_value(node.inputs[1])
    if len(data.inputs) != 1 or data.inputs[0].op != "Shape" or index_values is None:
        return None
    shape_node = data.inputs[0]
    dims = shape_node.inputs[0].shape
    if dims is None:
        return None
    dims = dims[shape_node.attrs.get("start", 0):shape_node.attrs.get("end", len(dims))]
    idx = np.asarray(index_values).astype(np.int64)
    if np.any(idx >= len(dims)) or np.any(idx < -len(dims)):
        return None
    picked = np.array(dims, dtype=object)[idx]
    if not all(isinstance(d, int) for d in np.atleast_1d(picked)):
        return None
    return np.array(picked, dtype=np.int64).reshape(idx.shape)


def _fold_static_shapes(graph: gs.Graph) -> int:
    count = 0
    for g in _all_graphs(graph):
        for node in list(g.nodes):
            value = _static_shape_value(node)
            if value is not None and not isinstance(node.outputs[0], gs.Constant):
                out = node.outputs[0]
                out.to_constant(value)
                out.inputs.clear()
                count += 1
    return count


def _evaluate(nodes: list[gs.Node], constants: dict[str, np.ndarray], graph: gs.Graph) -> dict[str, np.ndarray]:
    """Every output of ``nodes`` (topologically sorted, inputs in ``constants`` or produced by earlier
    ones), computed in onnxruntime with optimizations off: the kernels the model itself runs with."""
    tensors: dict[str, gs.Tensor] = {name: gs.Constant(name, value) for name, value in constants.items()}

    def copy(t: gs.Tensor) -> gs.Tensor:
        return gs.Variable.empty() if t.is_empty() else tensors.setdefault(t.name, gs.Variable(t.name))

    copies = [gs.Node(n.op, n.name, dict(n.attrs), [copy(t) for t in n.inputs], [copy(t) for t in n.outputs],
                      domain=n.domain) for n in nodes]
    outputs = [tensors[t.name] for n in nodes for t in n.outputs if not t.is_empty()]
    probe = gs.Graph(nodes=copies, outputs=outputs, opset=graph.opset, import_domains=graph.import_domains)
    names = [t.name for t in outputs]
    results = make_session(gs.export_onnx(probe, do_type_check=False)).run(names, {})
    if not all(isinstance(r, np.ndarray) for r in results):
        raise TypeError("an output is not a tensor")
    return dict(zip(names, results))


@dataclass(kw_only=True)
class ConstantFolding(Pass):
    name: ClassVar[str] = "fold-constants"
    summary: ClassVar[str] = ("Evaluate nodes whose inputs are all constants (and Shape of static dims) "
                              "once, storing the results as initializers.")

    size_threshold_bytes: int = field(default=1 << 20, metadata={
        "help": "a folded tensor above this size stays computed when it would be larger than the inputs "
                "it is computed from (Expand/Tile/ConstantOfShape would bloat the model)"})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        try:
            _apply_inferred(graph, _infer(graph, report.notes), report)
        except _INFERENCE_FAILURES as exc:
            report.notes.append(f"shape inference failed ({_first_line(exc)}); Shape nodes of static shapes "
                                "are not folded")
        before = {id(n) for n in _all_nodes(graph)}
        report.details["shape_values_folded"] = _fold_static_shapes(graph)
        graph.toposort()
        for g in _all_graphs(graph):  # outer graphs first: their folded tensors are constants inside
            self._fold(g, graph, report)
        graph.cleanup(remove_unused_graph_inputs=False)
        report.changes = len(before - {id(n) for n in _all_nodes(graph)})
        report.details["nodes_folded"] = report.changes
        return report

    def _fold(self, g: gs.Graph, root: gs.Graph, report: PassReport) -> None:
        values, candidates = self._candidates(g, report)
        constants = {t.name: t.values for n in candidates for t in n.inputs if isinstance(t, gs.Constant)}
        try:
            values.update(_evaluate(candidates, constants, root))
            folded = {id(n) for n in candidates}
        except Exception:  # noqa: BLE001 - onnxruntime's exception types are not public; retry node by node
            folded = self._fold_one_by_one(candidates, values, root, report)
        folded.update(id(n) for n in g.nodes if n.op == "Constant" and n.outputs[0].name in values)
        for node in g.nodes:
            if id(node) not in folded:
                continue
            for out in node.outputs:
                if out.name in values and (out in g.outputs or any(id(c) not in folded for c in out.outputs)):
                    self._materialize(out, values, folded, report)

    def _candidates(self, g: gs.Graph, report: PassReport) -> tuple[dict[str, np.ndarray], list[gs.Node]]:
        """(values of lowered Constant nodes, nodes computable from constants alone in topological order)."""
        values: dict[str, np.ndarray] = {}
        available: set[str] = set()
        candidates = []
        for node in g.nodes:
            if not all(isinstance(t, gs.Constant) or t.name in available for t in node.inputs if not t.is_empty()):
                continue
            lowered = constant_value(node.outputs[0]) if node.op == "Constant" else None
            if lowered is not None:
                values[node.outputs[0].name] = np.asarray(lowered)
                available.add(node.outputs[0].name)
                continue
            reason = self._exclusion(node)
            if reason:
                report.skip(_node_label(node), reason)
                continue
            candidates.append(node)
            available.update(t.name for t in node.outputs if not t.is_empty())
        return values, candidates

    @staticmethod
    def _fold_one_by_one(candidates: list[gs.Node], values: dict[str, np.ndarray], root: gs.Graph,
                         report: PassReport) -> set[int]:
        folded: set[int] = set()
        for node in candidates:
            known = [t for t in node.inputs if not t.is_empty()]
            if not all(isinstance(t, gs.Constant) or t.name in values for t in known):
                continue  # an input's producer failed; the first failure was reported
            try:
                values.update(_evaluate([node], {t.name: _value(t, values) for t in known}, root))
            except Exception as exc:  # noqa: BLE001 - onnxruntime's exception types are not public
                report.skip(_node_label(node), f"onnxruntime could not evaluate it: {_first_line(exc)}")
            else:
                folded.add(id(node))
        return folded

    def _materialize(self, tensor: gs.Tensor, values: dict[str, np.ndarray], folded: set[int],
                     report: PassReport) -> None:
        """Turn a computed tensor into a constant, or keep its producer when that would bloat the model."""
        if isinstance(tensor, gs.Constant):
            return
        producer, value = tensor.inputs[0], values[tensor.name]
        source_bytes = sum(_value(t, values).nbytes for t in producer.inputs if not t.is_empty())
        if producer.op != "Constant" and value.nbytes > self.size_threshold_bytes and value.nbytes > source_bytes:
            folded.discard(id(producer))
            report.skip(_node_label(producer), f"folding would store {value.nbytes} bytes (> size_threshold_bytes="
                                                f"{self.size_threshold_bytes}, larger than its inputs)")
            for t in producer.inputs:
                if not t.is_empty():
                    self._materialize(t, values, folded, report)
            return
        tensor.to_constant(value)
        tensor.inputs.clear()

    def _exclusion(self, node: gs.Node) -> str | None:
        """Why a node whose inputs are all constant must not be folded, else ``None``."""
        if node.op in _RANDOM_OPS:
            return "non-deterministic op; folding would freeze one random draw"
        if node.op == "Dropout" and len(node.inputs) > 2 and not node.inputs[2].is_empty():
            return "Dropout with a training_mode input may be random"
        if node.op in _QDQ_OPS:
            return "Q/DQ nodes stay: they mark quantization for the runtime"
        if (node.domain or "") not in _STANDARD_DOMAINS:
            return f"op of custom domain '{node.domain}'"
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return f"{node.op} with a subgraph is not evaluated (its body is folded separately)"
        out_bytes = [_nbytes(t) for t in node.outputs if not t.is_empty()]
        in_bytes = [_nbytes(t) for t in node.inputs if not t.is_empty()]
        if None not in out_bytes and None not in in_bytes and sum(out_bytes) > self.size_threshold_bytes \
                and sum(out_bytes) > sum(in_bytes):
            return (f"folding would store {sum(out_bytes)} bytes (> size_threshold_bytes="
                    f"{self.size_threshold_bytes}, larger than its inputs)")
        return None


def _value(tensor: gs.Tensor, values: dict[str, np.ndarray]) -> np.ndarray:
    return tensor.values if isinstance(tensor, gs.Constant) else values[tensor.name]


# -- Identity / Dropout ----------------------------------------------------------------------------
def _identity_skip(node: gs.Node, g: gs.Graph, opset: int) -> str | None:
    """Why ``node`` (Identity/Dropout) cannot be removed from ``g``, else ``None``."""
    if node.op == "Dropout":
        if any(o.outputs or o in g.outputs for o in node.outputs[1:] if not o.is_empty()):
            return "its mask output is used"
        if opset < 7 and node.attrs.get("is_test", 0) == 0:
            return "Dropout before opset 7 without is_test=1 is in training mode"
        if len(node.inputs) > 2 and not node.inputs[2].is_empty():
            mode = constant_value(node.inputs[2])
            if mode is None or bool(np.asarray(mode).item()):
                return "training_mode is not a constant false"
    if not node.inputs or node.inputs[0].is_empty():
        return "it has no input"
    src, dst = node.inputs[0], node.outputs[0]
    if dst in g.outputs:
        if src in g.inputs or src in g.outputs:
            return "both its input and its output are graph inputs/outputs; removing it would merge them"
        if isinstance(src, gs.Constant) or len(src.inputs) != 1 or not _owns(g, src.inputs[0]):
            return "its input is not produced inside this graph, so nothing can write the graph output"
    return None


def _remove_identity(node: gs.Node, g: gs.Graph) -> None:
    src, dst = node.inputs[0], node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    if dst in g.outputs:
        # The producer writes the graph output directly; src's other consumers read it from there.
        producer = src.inputs[0]
        producer.outputs[producer.outputs.index(src)] = dst
        keep, new = src, dst
    else:
        keep, new = dst, src
    _rewire(keep, new)
    g.nodes.remove(node)


@dataclass(kw_only=True)
class EliminateIdentity(Pass):
    name: ClassVar[str] = "eliminate-identity"
    summary: ClassVar[str] = "Remove Identity and inference-mode Dropout, rewiring their consumers."

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        opset = default_opset(graph)
        for g in _all_graphs(graph):
            for node in [n for n in g.nodes if n.op in ("Identity", "Dropout")]:
                reason = _identity_skip(node, g, opset)
                if reason:
                    report.skip(_node_label(node), reason)
                    continue
                _remove_identity(node, g)
                report.changes += 1
        return report


# -- BatchNormalization folding --------------------------------------------------------------------
class _CannotFold(Exception):
    """Internal: a BatchNormalization that stays, with the reason as message."""


def _const(tensor: gs.Tensor, what: str) -> np.ndarray:
    value = constant_value(tensor)
    if value is None:
        raise _CannotFold(f"{what} '{tensor.name}' is not a constant")
    return np.asarray(value)


def _bn_affine(bn: gs.Node, opset: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) in float64 with BN(x) = a * x + b per channel."""
    if opset < 7:
        raise _CannotFold(f"BatchNormalization of opset {opset} (< 7) is not handled")
    if bn.attrs.get("training_mode", 0):
        raise _CannotFold("training_mode=1 uses batch statistics")
    if bn.attrs.get("spatial", 1) == 0:
        raise _CannotFold("spatial=0 (per-activation statistics) is not handled")
    if any(o.outputs for o in bn.outputs[1:]):
        raise _CannotFold("its running mean/variance outputs are used")
    scale, bias, mean, var = (_const(t, w).astype(np.float64) for t, w in
                              zip(bn.inputs[1:5], ("scale", "bias", "mean", "variance")))
    a = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return a, bias - a * mean


def _producer(bn: gs.Node, g: gs.Graph) -> gs.Node:
    x = bn.inputs[0]
    if len(x.inputs) != 1 or not _owns(g, x.inputs[0]):
        raise _CannotFold("its input is not produced by a node of this graph")
    producer = x.inputs[0]
    if producer.op not in ("Conv", "ConvTranspose", "Gemm"):
        raise _CannotFold(f"preceded by {producer.op}, not Conv/ConvTranspose/Gemm")
    if len(x.outputs) != 1 or x in g.outputs:
        users = len(x.outputs) + (x in g.outputs)
        raise _CannotFold(
            f"the {producer.op} output '{x.name}' has {users} consumers; folding would change the others")
    return producer


def _fold_into(producer: gs.Node, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New (weight, bias) of ``producer`` with the affine ``a * y + b`` applied to its output."""
    weight = _const(producer.inputs[1], "weight")
    if not np.issubdtype(weight.dtype, np.floating):
        raise _CannotFold(f"weight dtype {weight.dtype} is not floating point")
    has_bias = len(producer.inputs) > 2 and not producer.inputs[2].is_empty()
    bias = _const(producer.inputs[2], "bias").astype(np.float64) if has_bias else np.zeros(1)
    w = weight.astype(np.float64)
    channels = len(a)
    if producer.op == "Conv":
        if w.shape[0] != channels:
            raise _CannotFold(f"Conv has {w.shape[0]} output channels, BatchNormalization {channels}")
        w = w * a.reshape(-1, *[1] * (w.ndim - 1))
        return w, bias * a + b
    if producer.op == "ConvTranspose":
        group = int(producer.attrs.get("group", 1))
        if w.shape[1] * group != channels or w.shape[0] % group:
            raise _CannotFold(
                f"ConvTranspose weight {list(w.shape)} (group {group}) does not give {channels} channels")
        kernel = w.shape[2:]
        grouped = w.reshape(group, w.shape[0] // group, w.shape[1], *kernel)
        w = (grouped * a.reshape(group, 1, w.shape[1], *[1] * len(kernel))).reshape(w.shape)
        return w, bias * a + b
    trans_b = int(producer.attrs.get("transB", 0))
    if w.shape[0 if trans_b else 1] != channels:
        raise _CannotFold(f"Gemm B {list(w.shape)} (transB={trans_b}) does not give {channels} channels")
    w = w * (a[:, None] if trans_b else a[None, :])
    beta = float(producer.attrs.get("beta", 1.0))
    return w, beta * bias * a + b


class _Names:
    """Fresh tensor names that collide with nothing in the graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self._taken = {name for g in _all_graphs(graph) for name in g.tensors()}

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name


def _fold_batchnorm(bn: gs.Node, g: gs.Graph, opset: int, names: _Names) -> None:
    a, b = _bn_affine(bn, opset)
    producer = _producer(bn, g)
    weight, bias = _fold_into(producer, a, b)
    dtype = _const(producer.inputs[1], "weight").dtype
    base = producer.name or producer.outputs[0].name
    new_w = gs.Constant(names.fresh(f"{base}_bnfold_W"), weight.astype(dtype))
    new_b = gs.Constant(names.fresh(f"{base}_bnfold_B"), bias.astype(dtype))
    producer.inputs[1] = new_w
    if len(producer.inputs) > 2:
        producer.inputs[2] = new_b
    else:
        producer.inputs.append(new_b)
    if producer.op == "Gemm":
        producer.attrs["beta"] = 1.0
    y = bn.outputs[0]
    bn.inputs.clear()
    bn.outputs.clear()
    producer.outputs[0] = y
    g.nodes.remove(bn)


@dataclass(kw_only=True)
class FoldBatchNorm(Pass):
    name: ClassVar[str] = "fold-batchnorm"
    summary: ClassVar[str] = "Fold inference BatchNormalization into the preceding Conv, ConvTranspose or Gemm."
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=1e-4, atol=1e-5)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        opset, names = default_opset(graph), _Names(graph)
        folded_into: dict[str, int] = {}
        for g in _all_graphs(graph):
            for bn in [n for n in g.nodes if n.op == "BatchNormalization"]:
                label = _node_label(bn)
                producer_op = bn.inputs[0].inputs[0].op if len(bn.inputs[0].inputs) == 1 else None
                try:
                    _fold_batchnorm(bn, g, opset, names)
                except _CannotFold as exc:
                    report.skip(label, str(exc))
                    continue
                folded_into[producer_op] = folded_into.get(producer_op, 0) + 1
                report.changes += 1
        report.details["folded_into"] = folded_into
        return report


# -- cleanup ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DeadNodeCleanup(Pass):
    name: ClassVar[str] = "cleanup"
    summary: ClassVar[str] = ("Remove nodes whose outputs reach no graph output and the initializers only "
                              "they used; sort topologically.")

    merge_duplicate_constants: bool = field(default=False, metadata={
        "help": "also make consumers of byte-identical initializers share one (later per-tensor passes "
                "then see shared weights)"})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        merged = self._merge_duplicates(graph) if self.merge_duplicate_constants else 0
        nodes_before = sum(1 for _ in _all_nodes(graph))
        consts_before = _constant_names(graph)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        nodes_removed = nodes_before - sum(1 for _ in _all_nodes(graph))
        consts_removed = len(consts_before - _constant_names(graph))
        report.details.update(nodes_removed=nodes_removed, initializers_removed=consts_removed,
                              duplicate_initializers_merged=merged)
        report.changes = nodes_removed + consts_removed
        return report

    @staticmethod
    def _merge_duplicates(graph: gs.Graph) -> int:
        """Merge the main graph's duplicate initializers (a kept one is visible to every subgraph too)."""
        merged = 0
        first: dict[tuple[str, tuple[int, ...], str], gs.Constant] = {}
        for tensor in list(graph.tensors().values()):
            if not isinstance(tensor, gs.Constant) or tensor in graph.outputs:
                continue
            values = np.ascontiguousarray(tensor.values)
            key = (str(values.dtype), values.shape, hashlib.sha256(values.tobytes()).hexdigest())
            keep = first.setdefault(key, tensor)
            if keep is tensor or not np.array_equal(keep.values, values):
                continue
            _rewire(tensor, keep)
            merged += 1
        return merged


def _constant_names(graph: gs.Graph) -> set[str]:
    return {name for g in _all_graphs(graph) for name, t in g.tensors().items() if isinstance(t, gs.Constant)}
