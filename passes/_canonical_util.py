"""Graph walking and shape-inference helpers shared by the canonicalisation passes."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.util.exception import OnnxGraphSurgeonException

from onnxopt.graph import import_graph, subgraphs
from onnxopt.pass_base import PassReport

# Constants above this size enter the shape-inference probe as typed graph inputs, so the probe
# stays far below protobuf's 2 GiB limit whatever the model's size.
_PROBE_CONSTANT_BYTES = 1 << 20


def all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    return [graph, *subgraphs(graph)]


def all_nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    for g in all_graphs(graph):
        yield from g.nodes


def node_label(node: gs.Node) -> str:
    return node.name or f"{node.op}->{node.outputs[0].name if node.outputs else '?'}"


def rewire(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` (subgraph consumers included) read ``new`` instead."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def owns(g: gs.Graph, node: gs.Node) -> bool:
    return any(n is node for n in g.nodes)


def nbytes(tensor: gs.Tensor) -> int | None:
    """Size of ``tensor`` from its dtype and static shape, else ``None``."""
    if tensor.dtype is None or tensor.shape is None or not all(isinstance(d, int) for d in tensor.shape):
        return None
    try:
        itemsize = np.dtype(tensor.dtype).itemsize
    except TypeError:
        return None
    return math.prod(tensor.shape) * itemsize


INFERENCE_FAILURES = (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError,
                       RuntimeError, TypeError, OnnxGraphSurgeonException)
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def infer(graph: gs.Graph, notes: list[str]) -> dict[str, gs.Tensor]:
    """Tensors of ``graph`` as onnx shape inference (with data propagation) sees them, by name.

    Inference errors are reported in ``notes`` and inference reruns leniently, keeping what it can
    infer; failures to run at all raise one of ``INFERENCE_FAILURES``.
    """
    probe = graph.copy()
    for tensor in list(probe.tensors().values()):
        if isinstance(tensor, gs.Constant) and (nbytes(tensor) or 0) > _PROBE_CONSTANT_BYTES \
                and tensor not in probe.outputs:
            stand_in = gs.Variable(tensor.name, dtype=tensor.dtype, shape=list(tensor.shape))
            rewire(tensor, stand_in)
            probe.inputs.append(stand_in)
    model = gs.export_onnx(probe, do_type_check=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        notes.append(f"shape inference found errors, kept what lenient inference infers: {first_line(exc)}")
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    custom = sorted({n.domain for n in all_nodes(graph) if (n.domain or "") not in STANDARD_DOMAINS})
    if custom:
        notes.append(f"ops of custom domain(s) {', '.join(custom)} have no shape inference; "
                     "tensors computed from them may stay untyped")
    found: dict[str, gs.Tensor] = {}
    for g in all_graphs(import_graph(inferred)):
        found.update(g.tensors())
    return found


def first_line(exc: BaseException) -> str:
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


def apply_inferred(graph: gs.Graph, inferred: dict[str, gs.Tensor], report: PassReport) -> int:
    """Copy inferred dtypes/shapes onto the variables of ``graph``; return how many gained info."""
    gained = 0
    for g in all_graphs(graph):
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
