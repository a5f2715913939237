"""Constant operands of the nodes the pruning passes edit: read them, and replace them sliced.

Weights reach a node as initializers, ``Constant`` outputs, or (in exported placeholder models)
``ConstantOfShape`` outputs, sometimes through ``Unsqueeze``/``Reshape``/``Cast``. ``read`` returns
the value of all of these; ``replace_sliced`` gives the node a smaller operand. A sliced
``ConstantOfShape`` (even reshaped) stays a ``ConstantOfShape`` with a smaller shape, so a
placeholder model does not grow into megabytes of initializers when it is pruned.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.graph import constant_value

def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that computes ``tensor`` (``None`` for initializers and graph inputs)."""
    return tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None


def read(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of ``tensor`` if it is a constant (see the module doc), else ``None``."""
    value = constant_value(tensor)
    if value is not None:
        return np.asarray(value)
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "ConstantOfShape":
        shape = _fill_shape(node)
        return None if shape is None else np.full(shape, _fill_value(node))
    rule = _DERIVED.get(node.op)
    if rule is None or not node.inputs:
        return None
    source = read(node.inputs[0])
    return None if source is None else rule(node, source)


def require(tensor: gs.Tensor) -> np.ndarray:
    """The value of a tensor the analysis already found constant (``ValueError`` if it is not)."""
    value = read(tensor)
    if value is None:
        raise ValueError(f"'{tensor.name}' is not a constant")
    return value


def shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of a constant ``tensor`` without materialising a ``ConstantOfShape``."""
    node = producer(tensor)
    if node is not None and node.op == "ConstantOfShape":
        return _fill_shape(node)
    value = read(tensor)
    return None if value is None else tuple(value.shape)


def uniform(tensor: gs.Tensor) -> np.generic | None:
    """The fill value when ``tensor`` is a ``ConstantOfShape`` (maybe reshaped), else ``None``."""
    root = _fill_root(tensor)
    return None if root is None else _fill_value(root)


def _fill_root(tensor: gs.Tensor) -> gs.Node | None:
    node = producer(tensor)
    while node is not None and node.op in ("Unsqueeze", "Squeeze", "Reshape", "Identity") and node.inputs:
        node = producer(node.inputs[0])
    return node if node is not None and node.op == "ConstantOfShape" and _fill_shape(node) is not None else None


def _fill_shape(node: gs.Node) -> tuple[int, ...] | None:
    if not node.inputs:
        return None
    dims = constant_value(node.inputs[0])
    return None if dims is None else tuple(int(d) for d in np.asarray(dims).reshape(-1))


def _fill_value(node: gs.Node) -> np.ndarray:
    value = node.attrs.get("value")
    if isinstance(value, gs.Constant):
        return np.asarray(value.values).reshape(-1)[0]
    return np.float32(0.0)


def _axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1:
        axes = constant_value(node.inputs[1])
        return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    return None


def _unsqueeze(node: gs.Node, x: np.ndarray) -> np.ndarray | None:
    axes = _axes(node)
    if axes is None:
        return None
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


def _squeeze(node: gs.Node, x: np.ndarray) -> np.ndarray | None:
    axes = _axes(node)
    return np.squeeze(x) if axes is None else np.squeeze(x, tuple(a % x.ndim for a in axes))


def _reshape(node: gs.Node, x: np.ndarray) -> np.ndarray | None:
    target = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None:
        return None
    dims = [x.shape[i] if d == 0 else int(d) for i, d in enumerate(np.asarray(target).reshape(-1))]
    return x.reshape(dims)


def _cast(node: gs.Node, x: np.ndarray) -> np.ndarray | None:
    return x.astype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))


# Shape-only ops a constant may pass through on its way to the node that uses it.
_DERIVED: dict[str, Callable[[gs.Node, np.ndarray], np.ndarray | None]] = {
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Reshape": _reshape, "Cast": _cast,
    "Identity": lambda _node, x: x,
}


class Names:
    """Fresh tensor/node names for one graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self._taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes if n.name}

    def fresh(self, base: str) -> str:
        for i in itertools.count():
            name = f"{base}_pruned" if i == 0 else f"{base}_pruned{i}"
            if name not in self._taken:
                self._taken.add(name)
                return name
        raise AssertionError("unreachable")


def replace(graph: gs.Graph, names: Names, node: gs.Node, index: int, value: np.ndarray) -> None:
    """Give ``node`` a new constant operand ``value`` at input ``index`` (appending if needed)."""
    base = node.inputs[index].name if index < len(node.inputs) else f"{node.name or node.op}_in{index}"
    tensor = gs.Constant(names.fresh(base), np.ascontiguousarray(value))
    if index < len(node.inputs):
        node.inputs[index] = tensor
    elif index == len(node.inputs):
        node.inputs.append(tensor)
    else:
        raise ValueError(f"'{node.name}' has {len(node.inputs)} inputs; cannot add input {index}")


def replace_sliced(graph: gs.Graph, names: Names, node: gs.Node, index: int,
                   keep: dict[int, np.ndarray]) -> None:
    """Replace ``node``'s constant input ``index`` by its slice keeping ``keep[axis]`` (bool masks)."""
    tensor = node.inputs[index]
    source = _fill_root(tensor)
    if source is not None:  # stays a (smaller) ConstantOfShape: placeholder weights do not grow
        dims = list(shape(tensor) or ())
        for axis, mask in keep.items():
            dims[axis] = int(mask.sum())
        dims_const = gs.Constant(names.fresh(source.inputs[0].name), np.asarray(dims, np.int64))
        out = gs.Variable(names.fresh(tensor.name), dtype=np.asarray(_fill_value(source)).dtype, shape=dims)
        graph.nodes.append(gs.Node("ConstantOfShape", names.fresh(source.name or "ConstantOfShape"),
                                   dict(source.attrs), [dims_const], [out]))
        node.inputs[index] = out
        return
    value = require(tensor)
    for axis, mask in keep.items():
        value = np.compress(mask, value, axis=axis)
    replace(graph, names, node, index, value)
