"""Binary codes of a weight matrix, and the alternating update that refits them on data.

A layer's ``[channels, K]`` weight matrix is approximated by ``bits`` bit-planes,
``W ≈ Σ_p alpha_p[:, None] · B_p`` with ``B_p ∈ {-1, +1}`` (``Planes``). ``plain_planes`` is the
data-free start: ``B = sign(W)`` (zero → +1) and ``alpha = mean |W|`` per channel, the second plane
fitted the same way to the residual.

The alternating update (SEEDS.md §2) works on one layer at a time. With ``X̂`` the binarised model's
patches at that layer and ``Y = X · W_fᵀ`` the float model's output there, it minimises
``‖Y − X̂ · Ŵᵀ‖²`` per output channel through the normal-equation statistics ``G = X̂ᵀX̂``,
``Q = Yᵀ X̂`` and ``‖Y‖²``: alternately the scales (closed-form least squares with the signs fixed)
and the signs (cyclic coordinate descent with the scales fixed: each weight takes the level nearest
to its unconstrained optimum). Both steps are exact minimisations, so the objective never rises.
The last scale solve is followed by putting the scales in their stored form (float16, or uint8 log
codes: ``passes.binary.alpha``) and one more sign sweep with them fixed, so the errors reported
are those of the weights the model stores.
A ridge term ``λ‖Ŵ − W_f‖²`` (``λ = ridge · trace(G) / K``) keeps the fit well posed when the
calibration set has fewer rows than ``K``; its weight is chosen per layer on held-out calibration
samples (``Refitter``). A layer whose error the update does not lower, on all rows and on the
held-out rows, keeps the plain codes.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.progress import Progress
from onnxopt.runtime import iter_activations
from passes.binary.alpha import LogCodes, ScaleFormat
from passes.binary.layers import WeightLayer

if TYPE_CHECKING:
    from onnxopt.data import DataSource
    from onnxopt.pass_base import PassContext

logger = logging.getLogger(__name__)


@dataclass
class Planes:
    """``W ≈ Σ_p alphas[p][:, None] · signs[p]``; alphas ``[p, C]``, signs ``[p, C, K]`` of ±1.
    ``codes`` holds the stored uint8 log codes of each plane when the scales are coded (``alphas``
    are then their decoded values)."""

    alphas: np.ndarray
    signs: np.ndarray
    codes: tuple[LogCodes, ...] | None = None

    @property
    def bits(self) -> int:
        return int(self.alphas.shape[0])

    def stored(self, fmt: ScaleFormat) -> Planes:
        """The same weights with the scales as ``fmt`` stores them (rounded, or coded and decoded)."""
        return Planes(*fmt.store(self.alphas, self.signs))

    def dequantize(self, dtype: np.dtype) -> np.ndarray:
        """``[C, K]`` in ``dtype``, computed as the unpacking subgraph computes it (float16 through
        float32)."""
        compute = np.float32 if dtype == np.float16 else dtype
        out = None
        for alpha, sign in zip(self.alphas.astype(compute), self.signs.astype(compute)):
            term = alpha[:, None] * sign
            out = term if out is None else out + term
        return out.astype(dtype)


def plain_planes(matrix: np.ndarray, bits: int) -> Planes:
    """Greedy binarisation: sign and mean magnitude per channel, then the same on the residual."""
    residual = matrix.astype(np.float64)
    alphas, signs = [], []
    for _ in range(bits):
        sign = np.where(residual >= 0, 1, -1).astype(np.int8)
        alpha = np.abs(residual).mean(axis=1)
        residual = residual - alpha[:, None] * sign
        alphas.append(alpha)
        signs.append(sign)
    return Planes(np.stack(alphas), np.stack(signs))


@dataclass
class LayerStats:
    """Normal-equation statistics of one layer: per group ``G``, per channel ``Q`` rows and ``‖Y‖²``."""

    gram: np.ndarray  # [groups, K, K]
    cross: np.ndarray  # [C, K]
    energy: np.ndarray  # [C]
    rows: int = 0

    @classmethod
    def empty(cls, layer: WeightLayer) -> LayerStats:
        k = layer.k
        return cls(np.zeros((layer.groups, k, k)), np.zeros((layer.channels, k)), np.zeros(layer.channels))

    def merged(self, other: LayerStats) -> LayerStats:
        return LayerStats(self.gram + other.gram, self.cross + other.cross, self.energy + other.energy,
                          self.rows + other.rows)

    def add(self, patches: np.ndarray, target: np.ndarray) -> None:
        """Accumulate binarised-model patches ``[rows, groups, K]`` and float targets ``[rows, C]``."""
        per = self.cross.shape[0] // self.gram.shape[0]
        for g in range(self.gram.shape[0]):
            x = patches[:, g, :].astype(np.float64)
            y = target[:, g * per:(g + 1) * per]
            self.gram[g] += x.T @ x
            self.cross[g * per:(g + 1) * per] += y.T @ x
        self.energy += (target ** 2).sum(axis=0)
        self.rows += len(target)


def float_targets(layer: WeightLayer, patches: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The float layer's output ``[rows, C]`` (no bias) on float-model patches ``[rows, groups, K]``."""
    per = layer.channels // layer.groups
    parts = [patches[:, g, :].astype(np.float64) @ weight[g * per:(g + 1) * per].T.astype(np.float64)
             for g in range(layer.groups)]
    return np.concatenate(parts, axis=1)


def data_error(planes: Planes, stats: LayerStats, dtype: np.dtype) -> float:
    """Relative output error ``Σ‖Y − X̂Ŵᵀ‖² / Σ‖Y‖²`` of the codes on the accumulated data."""
    w = planes.dequantize(dtype).astype(np.float64)
    per = w.shape[0] // stats.gram.shape[0]
    total = 0.0
    for g in range(stats.gram.shape[0]):
        wg = w[g * per:(g + 1) * per]
        quad = np.sum((wg @ stats.gram[g]) * wg)
        total += stats.energy[g * per:(g + 1) * per].sum() - 2 * np.sum(wg * stats.cross[g * per:(g + 1) * per]) + quad
    return float(max(total, 0.0) / max(stats.energy.sum(), 1e-30))


def alternate(planes: Planes, stats: LayerStats, weight: np.ndarray, *, ridge: float, iterations: int,
              fmt: ScaleFormat) -> Planes:
    """The alternating update of all channels, group by group (see the module docstring). After the
    last scale solve the scales are put in their stored form ``fmt`` (rounded or coded) and one more
    sign sweep runs with those stored scales fixed, so the result is exactly what the model stores."""
    alphas, signs = planes.alphas.copy(), planes.signs.copy()
    groups = stats.gram.shape[0]
    per = weight.shape[0] // groups
    k = weight.shape[1]
    systems = []
    for g in range(groups):
        cs = slice(g * per, (g + 1) * per)
        gram = stats.gram[g]
        lam = ridge * max(float(np.trace(gram)) / k, 1e-12)
        gram_r = gram + lam * np.eye(k)
        cross_r = stats.cross[cs] + lam * weight[cs].astype(np.float64)
        a, s = alphas[:, cs], signs[:, cs]
        for _ in range(iterations):
            a = _scale_step(s, gram_r, cross_r)
            s = _sign_step(a, s, gram_r, cross_r)
        alphas[:, cs], signs[:, cs] = _scale_step(s, gram_r, cross_r), s
        systems.append((cs, gram_r, cross_r))
    stored = Planes(alphas, signs).stored(fmt)
    signs = stored.signs.copy()
    for cs, gram_r, cross_r in systems:
        signs[:, cs] = _sign_step(stored.alphas[:, cs], signs[:, cs], gram_r, cross_r)
    return Planes(stored.alphas, signs, stored.codes)


def _scale_step(signs: np.ndarray, gram: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """Least-squares scales ``[p, C]`` with the signs ``[p, C, K]`` fixed."""
    s = signs.astype(np.float64)
    gs_ = s @ gram
    normal = np.einsum("pcj,qcj->cpq", gs_, s)
    rhs = np.einsum("pck,ck->cp", s, cross)
    return np.einsum("cpq,cq->pc", np.linalg.pinv(normal), rhs)


def _sign_step(alphas: np.ndarray, signs: np.ndarray, gram: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """One cyclic sweep over the K weights of every channel: each takes its best level given the
    others (``G·w`` is updated only for the weights still to come in the sweep)."""
    combos = np.array(list(itertools.product((-1, 1), repeat=alphas.shape[0])), dtype=np.int8)  # [L, p]
    levels = alphas.T @ combos.T.astype(np.float64)  # [C, L]
    channels = np.arange(levels.shape[0])
    single = levels.shape[1] == 2
    wt = np.einsum("pc,pck->kc", alphas, signs.astype(np.float64))  # [K, C]: row j = weight j of every channel
    gwt = gram @ wt  # [K, C]
    cross_t = cross.T
    diag = np.diag(gram)
    picks = np.empty(wt.shape, dtype=np.intp)
    for j in range(wt.shape[0]):
        if diag[j] <= 0:
            picks[j] = np.abs(wt[j][:, None] - levels).argmin(axis=1)
            continue
        t = (cross_t[j] - gwt[j]) / diag[j] + wt[j]
        if single:  # levels (-a, +a): the one on t's side
            pick = t * levels[:, 1] > 0
            new = np.where(pick, levels[:, 1], levels[:, 0])
        else:
            pick = np.abs(t[:, None] - levels).argmin(axis=1)
            new = levels[channels, pick]
        picks[j] = pick
        gwt[j + 1:] += np.multiply.outer(gram[j, j + 1:], new - wt[j])  # G is symmetric
        wt[j] = new
    return np.ascontiguousarray(combos[picks].transpose(2, 1, 0))


@dataclass
class LayerFit:
    """One layer's refit: relative output errors before (plain codes) and after the update, on all
    calibration rows and on the held-out rows that chose the ridge weight."""

    layer: str
    rows: int
    ridge: float | None
    error_before: float
    error_after: float
    holdout_before: float
    holdout_after: float

    @property
    def kept_plain(self) -> bool:
        return self.ridge is None

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "rows": self.rows, "ridge": self.ridge, "kept_plain": self.kept_plain,
                **{k: round(getattr(self, k), 6) for k in ("error_before", "error_after", "holdout_before",
                                                          "holdout_after")}}


@dataclass
class Refitter:
    """Runs the alternating update layer by layer in graph order on calibration data.

    One sample in ``HOLDOUT`` is held out: the update runs on the other rows once per candidate
    ridge weight, the candidate with the lowest held-out error wins (none, if no candidate beats the
    plain codes there, and the layer keeps them), and the winner is refitted on all rows.
    """

    HOLDOUT: ClassVar[int] = 4

    float_model: onnx.ModelProto
    working_model: onnx.ModelProto
    data: DataSource
    ctx: PassContext
    rows: int
    ridges: tuple[float, ...]
    iterations: int
    batch_size: int = 64

    def run(self, layers: list[WeightLayer], planes: dict[str, Planes],
            formats: dict[str, ScaleFormat]) -> list[LayerFit]:
        """Refit ``planes`` (by layer name) in place and return the per-layer errors of the weights
        as stored, with the scales in the format ``formats`` gives (by layer name)."""
        targets, offsets = self._float_targets(layers)
        index = {t.name: i for i, t in enumerate(self.working_model.graph.initializer)}
        fits = []
        with Progress("binary refit", len(layers), enabled=self.ctx.progress, unit="layers") as bar:
            for li, layer in enumerate(layers):
                fit, held = LayerStats.empty(layer), LayerStats.empty(layer)
                stream = self._activations(self.working_model, layer.node.inputs[0].name, len(offsets))
                for bi, x in enumerate(stream):
                    sample, position = self._sample(li, bi, x.shape, layer)
                    patches, target = layer.patch_rows(x, sample, position), targets[li][bi]
                    out = (offsets[bi] + sample) % self.HOLDOUT == 0
                    fit.add(patches[~out], target[~out])
                    held.add(patches[out], target[out])
                result = self._fit_layer(layer, planes[layer.name], fit, held, formats[layer.name])
                planes[layer.name] = result[0]
                fits.append(result[1])
                logger.info("refit %s: error %.4f -> %.4f (held out %.4f -> %.4f, ridge %s)", layer.name,
                            result[1].error_before, result[1].error_after, result[1].holdout_before,
                            result[1].holdout_after, result[1].ridge)
                quantized = layer.from_matrix(planes[layer.name].dequantize(layer.weight.values.dtype))
                self.working_model.graph.initializer[index[layer.weight.name]].CopyFrom(
                    numpy_helper.from_array(quantized, layer.weight.name))
                bar.advance()
        return fits

    def _fit_layer(self, layer: WeightLayer, start: Planes, fit: LayerStats, held: LayerStats,
                   fmt: ScaleFormat) -> tuple[Planes, LayerFit]:
        dtype = layer.weight.values.dtype
        weight = layer.matrix()
        both = fit.merged(held)

        def update(stats: LayerStats, ridge: float, iterations: int) -> Planes:
            return alternate(start, stats, weight, ridge=ridge, iterations=iterations, fmt=fmt)

        before = data_error(start, both, dtype)
        ridge = self.ridges[0]
        held_before = held_after = before  # judged in-sample when too few samples to hold any out
        if held.rows:
            held_before = data_error(start, held, dtype)
            held_after, ridge = min((data_error(update(fit, r, 1), held, dtype), r) for r in self.ridges)
        fitted = update(both, ridge, self.iterations)
        after = data_error(fitted, both, dtype)
        if not held.rows:
            held_after = after
        if held_after >= held_before or after >= before:
            return start, LayerFit(layer.name, both.rows, None, before, before, held_before, held_before)
        return fitted, LayerFit(layer.name, both.rows, ridge, before, after, held_before, held_after)

    def _activations(self, model: onnx.ModelProto, name: str, batches: int) -> Iterator[np.ndarray]:
        stream = iter_activations(_truncated(model, name), [name], self.data, batch_size=self.batch_size,
                                  providers=self.ctx.providers, threads=self.ctx.threads,
                                  description="binary refit")
        for values in itertools.islice(stream, batches):
            yield values[name]

    def _float_targets(self, layers: list[WeightLayer]) -> tuple[list[list[np.ndarray]], list[int]]:
        """Float-model outputs of every layer at the sampled rows, and the first sample index of
        every batch used."""
        names = list(dict.fromkeys(layer.node.inputs[0].name for layer in layers))
        stream = iter_activations(self.float_model, names, self.data, batch_size=self.batch_size,
                                  providers=self.ctx.providers, threads=self.ctx.threads,
                                  progress=self.ctx.progress, description="binary refit (float model)")
        targets: list[list[np.ndarray]] = [[] for _ in layers]
        counts = [0] * len(layers)
        offsets: list[int] = []
        seen = 0
        for bi, acts in enumerate(stream):
            offsets.append(seen)
            for li, layer in enumerate(layers):
                x = acts[layer.node.inputs[0].name]
                sample, position = self._sample(li, bi, x.shape, layer)
                targets[li].append(float_targets(layer, layer.patch_rows(x, sample, position), layer.matrix()))
                counts[li] += len(sample)
            seen += layers[0].batch(acts[layers[0].node.inputs[0].name].shape)
            if min(counts) >= self.rows:
                break
        return targets, offsets

    def _sample(self, li: int, bi: int, shape: tuple[int, ...], layer: WeightLayer) -> tuple[np.ndarray, np.ndarray]:
        """Rows (sample index, position index) of batch ``bi`` for layer ``li``: the same in both models."""
        positions = layer.positions(shape)
        samples = self.data.num_samples or 256
        per_sample = min(positions, max(1, -(-self.rows // samples)))
        rng = np.random.default_rng([self.ctx.seed, li, bi])
        n = layer.batch(shape)
        picks = rng.random((n, positions)).argsort(axis=1)[:, :per_sample]
        return np.repeat(np.arange(n), per_sample), picks.ravel()


def _truncated(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` cut down to the nodes that ``name`` depends on, with ``name`` its one output (the
    graph inputs stay, so the same feeds apply)."""
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    needed: set[int] = set()
    stack = [name]
    while stack:
        index = producer.get(stack.pop())
        if index is not None and index not in needed:
            needed.add(index)
            stack.extend(nodes[index].input)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes[i] for i in sorted(needed))
    used = {i for node in out.graph.node for i in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    del out.graph.output[:]
    out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out
