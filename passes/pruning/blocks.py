"""Residual blocks y = Add(x, f(x)): finding them, scoring them, and routing x straight through.

A block is an Add (or two-input Sum) whose one input ``x`` feeds a branch that computes the other
input from ``x`` and constants only, where no tensor inside the branch is used outside it and ``y``
has the shape of ``x``. Removing it makes the readers of ``y`` read ``x`` (or ``x`` plus a constant
per channel that stands for the branch's mean output, when that is known); if ``y`` is a graph
output the Add becomes an Identity so the output keeps its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import rewire
from passes.pruning.consts import Names, producer, read
from passes.pruning.threshold import adaptive_threshold


@dataclass
class Block:
    name: str  # the Add's name, else its output's
    add: gs.Node
    shortcut: gs.Tensor  # x
    branch_out: gs.Tensor  # f(x)
    nodes: list[gs.Node]  # the branch, in graph order


def _branch(fx: gs.Tensor, x: gs.Tensor) -> list[gs.Node] | None:
    """The nodes computing ``fx`` from ``x`` and constants only, or ``None``."""
    start = producer(fx)
    if start is None or fx is x:
        return None
    seen: dict[int, gs.Node] = {}
    stack = [start]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        for t in node.inputs:
            if t is x or isinstance(t, gs.Constant) or not t.name:
                continue
            source = producer(t)
            if source is None:
                return None  # reads a graph input other than x
            stack.append(source)
    return list(seen.values())


def find_blocks(graph: gs.Graph, shapes: dict[str, list[int | None]]) -> tuple[list[Block], list[tuple[str, str]]]:
    """Removable residual blocks in graph order, and (name, reason) for residual Adds that are not."""
    outputs = {id(t) for t in graph.outputs}
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    blocks: list[Block] = []
    refused: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op not in ("Add", "Sum") or len(node.inputs) != 2 or any(
                isinstance(t, gs.Constant) or read(t) is not None for t in node.inputs):
            continue
        found = next(((x, fx, nodes) for x, fx in (node.inputs, node.inputs[::-1])
                      if (nodes := _branch(fx, x)) is not None), None)
        if found is None:
            continue
        x, fx, nodes = found
        label = node.name or node.outputs[0].name
        members = {id(n) for n in nodes} | {id(node)}
        leak = next((t.name for n in nodes for t in n.outputs
                     if id(t) in outputs or any(id(c) not in members for c in t.outputs)), None)
        x_shape, y_shape = shapes.get(x.name), shapes.get(node.outputs[0].name)
        if leak is not None:
            refused.append((label, f"branch tensor '{leak}' is used outside the block"))
        elif not x_shape or x_shape != y_shape or None in x_shape[1:]:
            refused.append((label, "the block changes the feature-map shape (or it is unknown)"))
        else:
            blocks.append(Block(label, node, x, fx, sorted(nodes, key=lambda n: order[id(n)])))
    return blocks, refused


def conv_sparsity(block: Block) -> float:
    """Mean over the block's Convs of the fraction of channels below the layer's adaptive threshold.

    A channel's score is the |gamma| of the BatchNormalization that alone reads the Conv, else its
    filter's L1 norm relative to the layer's largest; a filter of zeros scores 0, and channels
    scoring exactly 0 always count.
    """
    values = []
    for node in block.nodes:
        if node.op != "Conv":
            continue
        scores = _channel_scores(node)
        if scores is None or not len(scores):
            continue
        delta = adaptive_threshold(scores)
        values.append(float(np.mean(scores < delta)) if delta is not None else float(np.mean(scores == 0)))
    return float(np.mean(values)) if values else 0.0


def _channel_scores(conv: gs.Node) -> np.ndarray | None:
    weight = read(conv.inputs[1])
    if weight is None:
        return None
    norms = np.abs(weight.astype(np.float64)).reshape(weight.shape[0], -1).sum(axis=1)
    readers = conv.outputs[0].outputs
    gamma = read(readers[0].inputs[1]) if len(readers) == 1 and readers[0].op == "BatchNormalization" else None
    if gamma is not None and gamma.shape == norms.shape:
        return np.where(norms == 0, 0.0, np.abs(gamma.astype(np.float64)))
    return norms / norms.max() if norms.max() > 0 else norms


def remove(graph: gs.Graph, block: Block, names: Names, offset: np.ndarray | None = None) -> None:
    """Route ``x`` past the block; ``offset`` (one value per channel, broadcastable) replaces f(x)."""
    add, x, y = block.add, block.shortcut, block.add.outputs[0]
    if offset is not None and np.any(offset):
        add.inputs = [x, gs.Constant(names.fresh(f"{block.name}_branch_mean"), np.ascontiguousarray(offset))]
        return
    if any(t is y for t in graph.outputs):
        add.op, add.inputs, add.attrs = "Identity", [x], {}
        return
    rewire(y, x)
    add.outputs.clear()
