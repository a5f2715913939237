"""Residual-block removal (SEEDS.md §3, steps 4 and 5): delete whole blocks y = x + f(x).

By default (``auto``), with calibration data, blocks are ranked once by measured sensitivity on part
of the calibration data and removed in that order while the model's measured drop on the other,
held-out part stays within ``max_drop`` (``passes.pruning.budget``); without data, by sparsity.
Otherwise blocks whose output has the shape of their input are ranked by importance, the source's
one: 1 - the mean sparsity of the block's convolutions under the per-layer adaptive threshold (a
sparser block matters less); or by measured sensitivity, how far the model's outputs on calibration
data move when the block is removed (mean cosine distance per sample; greedily: after each removal
the remaining blocks are measured again on the changed model). The ``count`` least important blocks, and every block
whose importance is at most ``threshold``, are replaced by their shortcut. With ``recover`` a
removed branch whose output is a constant per channel (known exactly, without data) leaves that
constant behind as an Add, so removing it changes nothing. (Leaving the branch's *mean* output
measured on calibration data was tried: on the bundled ResNet it lowered the logits' squared error
slightly but cost accuracy, so it is not done.)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.data import DataSource
from onnxopt.errors import PreconditionError
from onnxopt.graph import copy_graph, export, import_graph, replace_contents
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
from onnxopt.progress import Progress
from onnxopt.runtime import iter_activations
from passes.pruning import budget
from passes.pruning.channel_groups import inferred_shapes, node_name
from passes.pruning.channel_rules import analyse
from passes.pruning.blocks import Block, conv_sparsity, find_blocks, remove
from passes.pruning.consts import Names
from onnxopt.settings_check import require_known
from passes.pruning.recovery import ConstantChannels

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RemoveBlocks(Pass):
    """Replace the least important residual blocks by their shortcut."""

    name: ClassVar[str] = "remove-blocks"
    summary: ClassVar[str] = "remove the least important residual blocks y = x + f(x) (x goes straight through)"
    lossy: ClassVar[bool] = True
    uses_calibration: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False  # with count > 0 every run removes more blocks
    # No elementwise bound (pruning changes outputs by design). The default budget bounds the accuracy
    # drop where labels exist, not the agreement: top-1 agreement stays >= 0.9 on the bundled models.
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=math.inf, atol=math.inf, min_agreement=0.9)
    needs_float32: ClassVar[bool] = True

    count: int = field(default=0, metadata={"help": "remove the N least important blocks (sparsity, sensitivity)"})
    criterion: Literal["auto", "sparsity", "sensitivity"] = field(default="auto", metadata={
        "help": "auto: with calibration data, the least sensitive blocks while the measured drop stays within "
                "max_drop, else sparsity; sparsity: 1 - mean adaptive-threshold sparsity of the block's Convs; "
                "sensitivity: mean cosine distance of the outputs on calibration data when the block is removed"})
    max_drop: float = field(default=budget.DEFAULT_MAX_DROP, metadata={
        "help": f"budget of criterion=auto: {budget.HELP}"})
    search_samples: int = field(default=200, metadata={
        "help": "calibration samples criterion=auto uses: 40% to rank the blocks, the rest to measure the drop"})
    threshold: float = field(default=0.0, metadata={
        "help": "also remove every block whose importance is at most this (negative: none; sparsity, sensitivity)"})
    recover: bool = field(default=True, metadata={
        "help": "a removed branch whose output is a constant per channel leaves that constant as an Add"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={
        "help": "node names (the Add or any node of the branch; an unnamed node by its first output) whose block "
                "is kept"})

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        if self.count < 0:
            raise PreconditionError(f"remove-blocks: count must be >= 0, got {self.count}")
        if self.criterion == "auto" and (self.count or self.threshold != 0.0):
            raise PreconditionError("remove-blocks: count and threshold rank blocks by criterion=sparsity or "
                                    "sensitivity; give one (the default, auto, removes blocks within max_drop)")
        if not 0.0 <= self.max_drop < 100.0 or self.search_samples < 4:
            raise PreconditionError(f"remove-blocks: max_drop must be in [0, 100) and search_samples at least 4, got "
                                    f"{self.max_drop} and {self.search_samples}")
        require_known(self.name, "exclude_nodes", self.exclude_nodes, [node_name(n) for n in graph.nodes],
                      "model's nodes")
        if self.criterion == "sensitivity" and ctx.calibration is None:
            raise PreconditionError(
                "remove-blocks: criterion=sensitivity needs calibration data (--calib / calibration=)")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        graph.toposort()
        shapes = inferred_shapes(graph)
        blocks, refused = find_blocks(graph, shapes)
        for name, why in refused:
            report.skip(name, why)
        blocks = self._eligible(blocks, report)
        if not blocks:
            report.notes.append("no removable residual block")
            return report
        offsets = self._offsets(graph, blocks) if self.recover else {}
        names = Names(graph)
        parts = budget.split(ctx.calibration, self.search_samples) \
            if self.criterion == "auto" and ctx.calibration is not None else None
        if parts is not None:
            importance, removed = self._within_budget(graph, {b.name for b in blocks}, offsets, parts, ctx, report)
        elif self.criterion == "sensitivity" and ctx.calibration is not None:
            importance, removed = self._greedy(graph, {b.name for b in blocks}, offsets,
                                               _Probe(graph, ctx.calibration, ctx.threads, ctx.progress), names)
        else:
            if self.criterion == "auto":
                report.notes.append(NO_DATA)
            importance = {b.name: 1.0 - conv_sparsity(b) for b in blocks}
            ranked = sorted(importance, key=lambda n: importance[n])
            chosen = set(ranked[:self.count]) | {n for n in ranked if importance[n] <= self.threshold}
            removed = [n for n in ranked if n in chosen]
            for name in removed:  # one at a time, re-finding the blocks in the changed graph
                remove(graph, _current(graph)[name], names, offsets.get(name))
                graph.cleanup(remove_unused_graph_inputs=False).toposort()
        report.changes = len(removed)
        report.details.update(criterion=self.criterion, blocks=[
            {"block": b.name, "importance": round(importance[b.name], 6), "removed": b.name in removed,
             "compensated": b.name in removed and b.name in offsets} for b in blocks])
        return report

    def _within_budget(self, graph: gs.Graph, eligible: set[str], offsets: dict[str, np.ndarray],
                       parts: budget.Split, ctx: PassContext, report: PassReport) -> tuple[dict[str, float], list[str]]:
        """Rank the blocks once by sensitivity on the fit part, then remove them in that order while
        the whole model's drop on the held-out part stays within ``max_drop``."""
        if (note := budget.few_samples_note(parts)) is not None:
            report.notes.append(note)
        probe = _Probe(graph, parts.fit, ctx.threads, ctx.progress)
        ranked = {n: b for n, b in _current(graph).items() if n in eligible}
        with Progress("block sensitivity", len(ranked), enabled=probe.progress, unit="blocks") as bar:
            importance = {n: probe.change(graph, b, offsets.get(n), bar) for n, b in ranked.items()}
        original = export(graph)
        removed: list[str] = []
        trials: list[dict[str, object]] = []
        kept_drop: budget.Drop | None = None
        for step, name in enumerate(sorted(importance, key=lambda n: importance[n]), 1):
            trial = copy_graph(graph)
            remove(trial, _current(trial)[name], Names(trial), offsets.get(name))
            trial.cleanup(remove_unused_graph_inputs=False).toposort()
            drop = budget.measure(original, export(trial, original), parts.check, ctx.threads)
            within = drop.value <= self.max_drop
            trials.append({"block": name, **drop.to_dict(), "within": within})
            logger.info("remove-blocks budget %d/%d: without %s -> %s (%s)", step, len(importance), name, drop,
                        "within" if within else "over")
            if not within:
                break
            replace_contents(graph, trial)
            removed.append(name)
            kept_drop = drop
        report.details["budget"] = {"max_drop": self.max_drop, "fit_samples": parts.fit_samples,
                                    "check_samples": parts.check_samples, "trials": trials}
        report.details["decided_by"] = (
            f"budget: {len(removed)} block(s) by sensitivity within max_drop {self.max_drop:g}" +
            (f": {kept_drop}" if kept_drop is not None else ""))
        report.notes.append(report.details["decided_by"])
        return importance, removed

    def _greedy(self, graph: gs.Graph, eligible: set[str], offsets: dict[str, np.ndarray], probe: _Probe,
                names: Names) -> tuple[dict[str, float], list[str]]:
        """Remove the least sensitive block, measure the rest again on the changed model, repeat while
        fewer than ``count`` are gone or the least change is at most ``threshold``."""
        importance: dict[str, float] = {}
        removed: list[str] = []
        while True:
            current = {n: b for n, b in _current(graph).items() if n in eligible}
            if not current:
                break
            with Progress("block sensitivity", len(current), enabled=probe.progress, unit="blocks") as bar:
                scores = {n: probe.change(graph, b, offsets.get(n), bar) for n, b in current.items()}
            importance.update(scores)
            best = min(scores, key=lambda n: scores[n])
            if len(removed) >= self.count and scores[best] > self.threshold:
                break
            remove(graph, current[best], names, offsets.get(best))
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            removed.append(best)
        return importance, removed

    def _eligible(self, blocks: list[Block], report: PassReport) -> list[Block]:
        excluded = set(self.exclude_nodes)
        kept = []
        for block in blocks:
            if excluded.intersection({block.name, *(node_name(n) for n in block.nodes)}):
                report.skip(block.name, "excluded by exclude_nodes")
            else:
                kept.append(block)
        return kept

    @staticmethod
    def _offsets(graph: gs.Graph, blocks: list[Block]) -> dict[str, np.ndarray]:
        """Per block whose branch output is a known constant per channel: that constant, shaped to
        broadcast against x along the channel axis the channel analysis found (axis 1 for NCHW
        feature maps, the last axis for [N, L, C] sequences)."""
        cg = analyse(graph)
        constants = ConstantChannels(cg)
        out = {}
        for block in blocks:
            layout = cg.layouts.get(block.branch_out.name)
            if layout is None:
                continue
            values = [constants.value(block.branch_out, p) for p in range(len(layout.ids))]
            if all(v is not None for v in values):
                shape = [1] * layout.rank
                shape[layout.axis] = len(values)
                out[block.name] = np.array(values, dtype=np.float32).reshape(shape)
        return out


NO_DATA = ("no calibration data: only blocks whose convolutions are all below their adaptive threshold can go; "
           "give --calib with real inputs (~200 samples, with labels for an accuracy budget) to remove the least "
           "sensitive blocks while the measured drop stays within max_drop")


def _current(graph: gs.Graph) -> dict[str, Block]:
    return {b.name: b for b in find_blocks(graph, inferred_shapes(graph))[0]}


class _Probe:
    """How far the graph outputs on calibration data move, against the model as it was when the
    probe was made, when one more block is removed from a graph: the mean over samples (and outputs)
    of the cosine distance between a sample's outputs before and after. Unlike a squared error it
    ignores a change of scale, which leaves a classifier's decision alone."""

    def __init__(self, graph: gs.Graph, data: DataSource, threads: int | None, progress: bool) -> None:
        self.data, self.threads, self.progress = data, threads, progress
        self.outputs = [t.name for t in graph.outputs]
        self.reference = list(iter_activations(graph, self.outputs, data, threads=threads,
                                               description="sensitivity"))

    def change(self, graph: gs.Graph, block: Block, offset: np.ndarray | None, bar: Progress) -> float:
        trial = import_graph(export(graph))
        remove(trial, _current(trial)[block.name], Names(trial), offset)
        trial.cleanup().toposort()
        total, count = 0.0, 0
        for ref, got in zip(self.reference, iter_activations(trial, self.outputs, self.data,
                                                             threads=self.threads, description="sensitivity")):
            for name in self.outputs:
                distance = _cosine_distance(ref[name], got[name])
                total += float(distance.sum())
                count += len(distance)
        bar.advance()
        return total / max(count, 1)


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos(a_i, b_i) per sample i: exactly 0 for equal outputs, 1 when only one is zero."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where((a == b).all(axis=1), 0.0, 1.0 - cos)
