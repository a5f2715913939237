"""Graph walking and shape-inference helpers shared by the canonicalisation passes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_dtype, get_onnx_tensor_shape

from onnxopt.graph import STANDARD_DOMAINS, infer_scopes, subgraphs
from onnxopt.pass_base import PassReport


def all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    return [graph, *subgraphs(graph)]


def all_nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    for g in all_graphs(graph):
        yield from g.nodes


def owns(g: gs.Graph, node: gs.Node) -> bool:
    return any(n is node for n in g.nodes)




@dataclass(frozen=True)
class Inferred:
    """A tensor's type as shape inference found it, in onnx-graphsurgeon's terms (a numpy dtype, or
    the onnx type number for types numpy lacks; dims as ints, ``dim_param`` strings or ``None``)."""

    dtype: Any
    shape: list[int | str | None] | None


def infer(graph: gs.Graph, notes: list[str]) -> list[dict[str, Inferred]]:
    """The type of every tensor that onnx shape inference (with data propagation) can tell, per graph
    of ``all_graphs(graph)`` (``onnxopt.graph.infer_scopes``).

    Inference errors are reported in ``notes`` and inference reruns leniently, keeping what it can
    infer; failures to run at all raise one of ``onnxopt.graph.INFERENCE_FAILURES``.
    """
    try:
        scopes = infer_scopes(graph, strict=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        notes.append(f"shape inference found errors, kept what lenient inference infers: {first_line(exc)}")
        scopes = infer_scopes(graph, data_prop=True)
    custom = sorted({n.domain for n in all_nodes(graph) if (n.domain or "") not in STANDARD_DOMAINS})
    if custom:
        notes.append(f"ops of custom domain(s) {', '.join(custom)} have no shape inference; "
                     "tensors computed from them may stay untyped")
    return [{name: Inferred(get_onnx_tensor_dtype(vi), get_onnx_tensor_shape(vi)) for name, vi in scope.items()}
            for scope in scopes]


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


def apply_inferred(graph: gs.Graph, inferred: list[dict[str, Inferred]], report: PassReport) -> int:
    """Copy inferred dtypes/shapes (from ``infer``) onto the variables of ``graph``; return how many
    gained info."""
    gained = 0
    for g, scope in zip(all_graphs(graph), inferred, strict=True):
        for name, tensor in g.tensors().items():
            new = scope.get(name)
            if not isinstance(tensor, gs.Variable) or new is None or not name:
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
