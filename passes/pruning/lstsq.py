"""Recovery without training, step 2: least-squares reconstruction of the layers that lost inputs.

Layer by layer in graph order, for every Conv (2-D, group 1), Gemm or MatMul whose input channels
were pruned: take its input in the *pruned* model (so errors of earlier layers are compensated; only
the part of the model upstream of the layer is run) and its output in the *original* model on the
calibration data, and solve for the weights and bias that minimise the difference (ridge-regularised
normal equations, accumulated batch by batch; Conv inputs are unfolded into patches, a random subset
of positions per sample). A new solution is kept only if it lowers that layer's calibration error.
Activations come from onnxruntime with its graph optimizations on (values move by float rounding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from numpy.lib.stride_tricks import sliding_window_view

from onnxopt.data import DataSource
from onnxopt.graph import export
from onnxopt.progress import Progress
from onnxopt.runtime import iter_activations
from passes.pruning.channel_groups import ChannelGraph, ConstSlice, Weighted, node_name
from passes.pruning.consts import Names, read, replace, require
from passes.pruning.recovery import bias_add

logger = logging.getLogger(__name__)

# patch rows sampled per calibration sample for a Conv: twice its inputs over a batch of 32, within
# these bounds (per sample, so a model with a fixed batch of 1 does not sample 32 times as many)
ROWS_PER_SAMPLE, MIN_ROWS_PER_SAMPLE = 64, 8
CACHE_BYTES = 256 << 20  # original-model outputs kept in memory (else recomputed per layer)
RIDGE = 1e-3  # relative to the mean diagonal of the normal matrix


@dataclass(frozen=True)
class Fit:
    """One reconstructed layer: relative squared output error on the calibration data."""

    layer: str
    error_before: float
    error_after: float
    kept: bool


def _unsupported(w: Weighted) -> str | None:
    if w.kind not in ("conv", "gemm", "matmul"):
        return f"least squares does not handle {w.kind} layers"
    if w.kind == "conv":
        if require(w.node.inputs[1]).ndim != 4:
            return "least squares handles 2-D convolutions only"
        if w.node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return "least squares does not handle auto_pad SAME_*"
    if w.kind == "gemm" and len(w.node.inputs) > 2 and w.node.inputs[2].name:
        bias = read(w.node.inputs[2])
        if bias is None or (bias.ndim == 2 and bias.shape[0] != 1):
            return "least squares needs a Gemm bias that is the same for every row"
    return None


@dataclass(frozen=True)
class _Job:
    """One layer to refit: ``target`` is its output (or its bias Add's) in the original model."""

    w: Weighted
    add: ConstSlice | None
    target: str

    @property
    def intercept(self) -> bool:
        return self.w.kind != "matmul" or self.add is not None


def reconstruct(graph: gs.Graph, cg: ChannelGraph, pruned: np.ndarray, original: onnx.ModelProto,
                data: DataSource, names: Names, *, seed: int = 0, threads: int | None = None,
                progress: bool = False) -> tuple[list[Fit], list[tuple[str, str]]]:
    """Refit every layer that lost input channels; return the fits and (layer, reason) skipped."""
    rng = np.random.default_rng(seed)
    jobs: list[_Job] = []
    skipped: list[tuple[str, str]] = []
    for w in cg.weighted:
        if w.in_ids is None or not cg.pruned_positions(w.in_ids, pruned).any():
            continue
        why = _unsupported(w)
        if why is not None:
            skipped.append((node_name(w.node), why))
            continue
        add = bias_add(cg, w) if w.kind == "matmul" else None
        jobs.append(_Job(w, add, (add.node if add is not None else w.node).outputs[0].name))
    targets = _Targets(original, [job.target for job in jobs], data, threads)
    fits = []
    with Progress("least squares", len(jobs), enabled=progress, unit="layers") as bar:
        for job in jobs:
            graph.toposort()
            current = _upstream(export(graph), job.w.node.inputs[0].name)
            fits.append(_refit(graph, cg, job, pruned, targets, current, data, names, rng, threads))
            logger.info("least squares %s: error %.4g -> %.4g", fits[-1].layer, fits[-1].error_before,
                        fits[-1].error_after)
            bar.advance()
    return fits, skipped


class _Targets:
    """The original model's outputs of the layers to refit, batch by batch: computed in one run and
    kept in memory up to ``CACHE_BYTES``, else computed again for each layer."""

    def __init__(self, model: onnx.ModelProto, names: list[str], data: DataSource, threads: int | None) -> None:
        self.model, self.data, self.threads = model, data, threads
        self.cache: list[dict[str, np.ndarray]] | None = []
        size = 0
        for values in iter_activations(model, names, data, threads=threads, description="recovering",
                                       optimize=True):
            size += sum(v.nbytes for v in values.values())
            if size > CACHE_BYTES:
                self.cache = None
                break
            self.cache.append(values)

    def batches(self, name: str) -> Iterator[np.ndarray]:
        if self.cache is not None:
            return (values[name] for values in self.cache)
        return (values[name] for values in
                iter_activations(self.model, [name], self.data, threads=self.threads, description="recovering",
                                 optimize=True))


def _upstream(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` cut down to the nodes that compute ``name``, which becomes its only output."""
    producers = {out: node for node in model.graph.node for out in node.output}
    needed: set[int] = set()
    stack = [name]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(n for n in model.graph.node if id(n) in needed)
    del out.graph.output[:]
    out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def _refit(graph: gs.Graph, cg: ChannelGraph, job: _Job, pruned: np.ndarray, targets: _Targets,
           current: onnx.ModelProto, data: DataSource, names: Names, rng: np.random.Generator,
           threads: int | None) -> Fit:
    w, node, source = job.w, job.w.node, job.w.node.inputs[0].name
    assert w.out_ids is not None  # every layer least squares handles produces its outputs
    keep_out = ~cg.pruned_positions(w.out_ids, pruned)
    weight = require(node.inputs[1])
    normal, cross, yy = None, None, 0.0
    stream = zip(targets.batches(job.target),
                 iter_activations(current, [source], data, threads=threads, description="recovering",
                                  optimize=True))
    for y, have in stream:
        x = have[source].astype(np.float32)
        y = np.compress(keep_out, y.astype(np.float32), axis=1 if w.kind != "matmul" else y.ndim - 1)
        rows, wanted = _conv_rows(node, weight.shape, x, y, rng) if w.kind == "conv" else (
            x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
        if job.intercept:
            rows = np.hstack([rows, np.ones((len(rows), 1), np.float32)])
        # float32 products per batch (fast), float64 sums over batches
        normal = (rows.T @ rows).astype(np.float64) + (0 if normal is None else normal)
        cross = (rows.T @ wanted).astype(np.float64) + (0 if cross is None else cross)
        yy += float((wanted.astype(np.float64) ** 2).sum())
    assert normal is not None and cross is not None
    start = _current_solution(w, job.add, weight, job.intercept)
    before = _error(start, normal, cross, yy)
    features = normal.shape[0] - int(job.intercept)
    ridge = normal.copy()
    ridge[np.arange(features), np.arange(features)] += RIDGE * max(float(np.mean(np.diag(normal)[:features])), 1e-12)
    try:
        solution = np.linalg.solve(ridge, cross)
    except np.linalg.LinAlgError:
        solution = np.linalg.lstsq(ridge, cross, rcond=None)[0]
    after = _error(solution, normal, cross, yy)
    kept = after < before
    if kept:
        _write(graph, names, w, job.add, weight, solution, job.intercept)
    return Fit(node_name(node), before, after if kept else before, kept)


def _conv_rows(node: gs.Node, w_shape: tuple[int, ...], x: np.ndarray, y: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    kh, kw = w_shape[2:]
    pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
    sh, sw = node.attrs.get("strides", [1, 1])
    dh, dw = node.attrs.get("dilations", [1, 1])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    windows = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    ho, wo = y.shape[2:]
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :ho, :wo]
    total = x.shape[0] * ho * wo
    per_sample = min(ROWS_PER_SAMPLE, max(MIN_ROWS_PER_SAMPLE, -(-2 * x.shape[1] * kh * kw // 32)))
    limit = per_sample * x.shape[0]
    picked = rng.choice(total, limit, replace=False) if total > limit else np.arange(total)
    b, i, j = np.unravel_index(picked, (x.shape[0], ho, wo))
    return windows[b, :, i, j].reshape(len(picked), -1), y[b, :, i, j]


def _current_solution(w: Weighted, add: ConstSlice | None, weight: np.ndarray, intercept: bool) -> np.ndarray:
    node = w.node
    if w.kind == "conv":
        matrix = weight.reshape(weight.shape[0], -1).T
    elif w.kind == "gemm":
        matrix = (weight.T if node.attrs.get("transB", 0) else weight) * float(node.attrs.get("alpha", 1.0))
    else:
        matrix = weight
    if not intercept:
        return matrix.astype(np.float64)
    bias = np.zeros(matrix.shape[1])
    if add is not None:
        bias = bias + require(add.node.inputs[add.index]).reshape(-1)
    elif len(node.inputs) > 2 and node.inputs[2].name:
        scale = float(node.attrs.get("beta", 1.0)) if w.kind == "gemm" else 1.0
        bias = bias + scale * require(node.inputs[2]).astype(np.float64)
    return np.vstack([matrix, bias[None, :]]).astype(np.float64)


def _error(solution: np.ndarray, normal: np.ndarray, cross: np.ndarray, yy: float) -> float:
    residual = yy - 2.0 * float((solution * cross).sum()) + float((solution * (normal @ solution)).sum())
    return max(residual, 0.0) / max(yy, 1e-30)


def _write(graph: gs.Graph, names: Names, w: Weighted, add: ConstSlice | None, weight: np.ndarray, solution: np.ndarray,
           intercept: bool) -> None:
    node = w.node
    matrix = solution[:-1] if intercept else solution
    if w.kind == "conv":
        replace(graph, names, node, 1, matrix.T.reshape(weight.shape).astype(weight.dtype))
    elif w.kind == "gemm":
        replace(graph, names, node, 1, (matrix.T if node.attrs.get("transB", 0) else matrix).astype(weight.dtype))
        node.attrs["alpha"] = 1.0
        node.attrs["beta"] = 1.0
    else:
        replace(graph, names, node, 1, matrix.astype(weight.dtype))
    if not intercept:
        return
    if add is not None:
        old = require(add.node.inputs[add.index])
        replace(graph, names, add.node, add.index, solution[-1].reshape(old.shape).astype(old.dtype))
    else:
        replace(graph, names, node, 2, solution[-1].astype(weight.dtype))
