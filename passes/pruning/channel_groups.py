"""Channel dependency analysis: which channels of which tensors must be pruned together.

Every channel position of every tensor the analysis understands carries an integer *channel id*.
A Conv/ConvTranspose/Gemm/MatMul with constant weights creates fresh ids for its output channels
(it *produces* them) and *consumes* the ids of its input channels. Ops that keep channels
(BatchNormalization, activations, pooling, per-channel constants) pass the ids on; ops that combine
two computed tensors (a residual Add/Sum, Mul, ...) unite the ids position by position; Concat
concatenates them; Flatten/Reshape to features repeats each id over the spatial positions; a
depthwise Conv passes its input ids on. Ids united this way form a *unit*: one channel that can only
be removed from all these places at once. Units produced by the same set of layers form a *group*,
as in Torch-Pruning's DepGraph: one layer's output channels, or every layer tied by residual Adds.

Whatever the analysis does not understand *blocks* the ids that reach it, with a reason: graph
outputs, unknown ops, grouped convolutions, reshapes that mix channels with other axes, tensors read
inside subgraphs. Blocked units are never pruned; the pass reports each blocked group with its reason.
The op rules live in ``channel_rules`` (which also runs the analysis: ``analyse``) and ``channel_layers``;
this module holds the bookkeeping and the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import infer_types, subgraphs
from passes.pruning.consts import shape as const_shape

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Layout:
    """Where a tensor's channels are: the id of each position along ``axis`` of a rank-``rank`` tensor."""

    ids: np.ndarray
    axis: int
    rank: int


@dataclass(frozen=True, eq=False)
class ConstSlice:
    """Constant input ``index`` of ``node`` has one position per id along ``axis``."""

    node: gs.Node
    index: int
    axis: int
    ids: np.ndarray


@dataclass(eq=False)
class Weighted:
    """A Conv/ConvTranspose/Gemm/MatMul with constant weights."""

    node: gs.Node
    kind: str  # conv | depthwise | grouped | conv_transpose | gemm | matmul
    in_axis: int | None  # weight axis of the input channels (None: not sliced)
    out_axis: int  # weight axis of the output channels
    in_ids: np.ndarray | None  # ids of the input channels the weight reads
    out_ids: np.ndarray | None  # ids of the output channels (fresh unless depthwise)
    macs: int | None  # per-sample MACs as onnxopt.stats counts them (symbolic dims = 1)

    @property
    def produces(self) -> bool:
        return self.kind in ("conv", "conv_transpose", "gemm", "matmul") and self.out_ids is not None


@dataclass(eq=False)
class Group:
    """Units produced by the same set of layers, pruned with one threshold."""

    name: str
    producers: tuple[str, ...]
    units: np.ndarray  # root ids, in the first producer's channel order
    blocked: dict[int, str] = field(default_factory=dict)  # unit -> reason

    @property
    def prunable(self) -> np.ndarray:
        return np.array([u for u in self.units if u not in self.blocked], dtype=np.int64)

    def block_reason(self) -> str | None:
        return next(iter(self.blocked.values()), None)


class ChannelGraph:
    """The result of the analysis of one graph (see the module doc)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.shapes = inferred_shapes(graph)
        self.layouts: dict[str, Layout] = {}
        self.slices: list[ConstSlice] = []
        self.weighted: list[Weighted] = []
        self.batchnorms: list[tuple[gs.Node, np.ndarray]] = []
        self.group_attrs: list[tuple[gs.Node, np.ndarray]] = []  # depthwise Conv: group = kept inputs
        self.reshapes: list[tuple[gs.Node, np.ndarray]] = []  # Reshape: shape[1] = kept outputs
        self.spread: dict[int, int] = {}  # id(Flatten/Reshape node) -> positions per channel
        self._parent: list[int] = []
        self._reason: dict[int, str] = {}
        self.groups: list[Group] = []
        self._roots: np.ndarray = np.zeros(0, np.int64)
        self._touching: tuple[dict[int, list[str]], dict[int, list[ConstSlice]]] | None = None

    # -- ids ------------------------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def _find(self, i: int) -> int:
        parent = self._parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self._find(x), self._find(y)
            if rx != ry:
                self._parent[ry] = rx
                if ry in self._reason:
                    self._reason.setdefault(rx, self._reason.pop(ry))

    def block(self, ids: np.ndarray, reason: str) -> None:
        for i in ids.tolist():
            self._reason.setdefault(self._find(i), reason)

    def block_tensor(self, tensor: gs.Tensor, reason: str) -> None:
        layout = self.layouts.get(tensor.name)
        if layout is not None:
            self.block(layout.ids, reason)

    # -- layouts (used by the rules) --------------------------------------------------------
    def layout_of(self, tensor: gs.Tensor) -> Layout | None:
        return self.layouts.get(tensor.name) if present(tensor) else None

    def set_output(self, node: gs.Node, layout: Layout, index: int = 0) -> None:
        if index < len(node.outputs):
            self.layouts[node.outputs[index].name] = layout

    # -- results --------------------------------------------------------------------------
    def roots(self, ids: np.ndarray) -> np.ndarray:
        """The unit of each id."""
        return self._roots[ids]

    @property
    def num_ids(self) -> int:
        return len(self._parent)

    def pruned_positions(self, ids: np.ndarray, pruned: np.ndarray) -> np.ndarray:
        """Bool mask of the positions of ``ids`` whose unit is marked in ``pruned`` (indexed by id)."""
        return pruned[self._roots[ids]]

    def macs(self, pruned: np.ndarray | None = None) -> int:
        """MACs of the weighted layers after pruning the units marked in ``pruned``."""
        total = 0.0
        for w in self.weighted:
            if w.macs is None:
                continue
            scale = 1.0
            if pruned is not None:
                if w.out_ids is not None:
                    scale *= 1.0 - self.pruned_positions(w.out_ids, pruned).mean()
                if w.in_ids is not None and w.kind != "depthwise":
                    scale *= 1.0 - self.pruned_positions(w.in_ids, pruned).mean()
            total += w.macs * scale
        return int(round(total))

    def touching(self, group: Group) -> tuple[list[str], list[ConstSlice]]:
        """The tensors (by name) and constant slices that hold channels of ``group``."""
        if self._touching is None:
            self._touching = ({}, {})
            for name, layout in self.layouts.items():
                for root in np.unique(self._roots[layout.ids]).tolist():
                    self._touching[0].setdefault(root, []).append(name)
            for s in self.slices:
                for root in np.unique(self._roots[s.ids]).tolist():
                    self._touching[1].setdefault(root, []).append(s)
        names: dict[str, None] = {}
        slices: dict[int, ConstSlice] = {}
        for unit in group.units.tolist():
            names.update(dict.fromkeys(self._touching[0].get(unit, ())))
            slices.update((id(s), s) for s in self._touching[1].get(unit, ()))
        return list(names), list(slices.values())

    def finish(self) -> None:
        """Block graph outputs and subgraph reads, then form the units and groups."""
        for out in self.graph.outputs:
            self.block_tensor(out, f"reaches graph output '{out.name}'")
        for sub in subgraphs(self.graph):
            for node in sub.nodes:
                for t in node.inputs:
                    self.block_tensor(t, f"read inside a subgraph by '{node_name(node)}'")
        self._roots = np.array([self._find(i) for i in range(self.num_ids)], dtype=np.int64)
        blocked = {self._find(i): r for i, r in self._reason.items()}
        owners: dict[int, list[int]] = {}  # unit -> indices of the layers producing it
        order: list[int] = []
        for index, w in enumerate(self.weighted):
            if not w.produces:
                continue
            for root in self._roots[w.out_ids].tolist():
                if root not in owners:
                    owners[root] = []
                    order.append(root)
                if not owners[root] or owners[root][-1] != index:
                    owners[root].append(index)
        by_key: dict[tuple[int, ...], list[int]] = {}
        for root in order:
            by_key.setdefault(tuple(owners[root]), []).append(root)
        for key, units in by_key.items():
            layers = tuple(node_name(self.weighted[i].node) for i in key)
            name = layers[0] if len(layers) == 1 else f"{layers[0]} (+{len(layers) - 1} coupled)"
            group = Group(name, layers, np.array(units, dtype=np.int64))
            group.blocked = {u: blocked[u] for u in units if u in blocked}
            self.groups.append(group)


def node_name(node: gs.Node) -> str:
    """The node's name, or its first output's when it has none (exporters often leave names empty)."""
    return node.name or (node.outputs[0].name if node.outputs else node.op)


def present(tensor: gs.Tensor | None) -> bool:
    """Whether an optional input is given (an omitted one is absent or has an empty name)."""
    return tensor is not None and bool(tensor.name)


def inferred_shapes(graph: gs.Graph) -> dict[str, list[int | None]]:
    """Tensor name -> dims (``None`` where symbolic or unknown): the declared ones, overridden by
    ONNX shape inference with data propagation (``onnxopt.graph.infer_types``)."""
    shapes: dict[str, list[int | None]] = {}
    for name, tensor in graph.tensors().items():
        if tensor.shape is not None:
            shapes[name] = [d if isinstance(d, int) and d >= 0 else None for d in tensor.shape]
    shapes.update((name, list(dims)) for name, dims in infer_types(graph, data_prop=True).shapes.items())
    return shapes


def validate(cg: ChannelGraph, pruned: np.ndarray, group: Group) -> str | None:
    """Why pruning ``group``'s units marked in ``pruned`` would break the graph, else ``None``."""
    names, slices = cg.touching(group)
    for name in names:
        layout = cg.layouts[name]
        if cg.pruned_positions(layout.ids, pruned).all():
            return f"tensor '{name}' would lose all {len(layout.ids)} channels"
    for s in slices:
        dims = const_shape(s.node.inputs[s.index])
        if dims is None or dims[s.axis] != len(s.ids):
            return f"input {s.index} of '{node_name(s.node)}' no longer has {len(s.ids)} channels on axis {s.axis}"
    return None
