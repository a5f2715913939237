"""Structured channel pruning on the ONNX graph (SEEDS.md §3, steps 2, 3 and 6, plus recovery).

1. Analyse the channel dependencies (``_channel_groups``): coupled channels form groups; groups that
   reach graph outputs or ops the analysis does not understand are left alone, with the reason.
2. Score every unit (``_prune_importance``): BatchNormalization |gamma| by default.
3. Choose what to prune (``threshold``): by default (``auto``) the per-layer adaptive histogram
   threshold in the groups whose scores are polarised (SEEDS.md §3); the groups without a valley,
   with calibration data, to the largest global MACs reduction whose measured drop stays within
   ``max_drop`` (``budget``: bisection over the MACs target, each candidate pruned, recovered and
   measured on held-out calibration samples). Or a ratio, or a fixed global MACs target. Each group
   is validated before it is pruned.
4. Recover without training when ``recover`` is on: fold constant channels into the next bias
   (``_prune_recovery``), and with calibration data refit the layers that lost inputs by least
   squares (``_prune_lstsq``).
5. Shrink every tensor of the pruned channels (``_prune_surgery``).
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
from onnxopt.graph import copy_graph, export, replace_contents
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
from passes.pruning import budget
from passes.pruning import threshold as thresholds
from passes.pruning.channel_groups import ChannelGraph, Group, node_name, validate
from passes.pruning.channel_rules import analyse
from passes.pruning.consts import Names
from passes.pruning.importance import GroupScores, score_groups
from passes.pruning.lstsq import reconstruct
from onnxopt.settings_check import require_known
from passes.pruning.recovery import fold_constant_channels
from passes.pruning.surgery import apply

logger = logging.getLogger(__name__)

#: the layers whose output channels the pass prunes (names in exclude_nodes and layer_ratios)
_LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: the largest MACs reduction the budget search tries
MAX_SEARCH_REDUCTION = 0.8
NO_DATA = ("groups without a histogram valley (scores not polarised) are not pruned without calibration data; "
           "give --calib with real inputs (~200 samples, with labels for an accuracy budget) and the pass prunes "
           "them to the largest MACs reduction whose measured drop stays within max_drop")


@dataclass(kw_only=True)
class PruneChannels(Pass):
    """Remove unimportant channels from Conv/Gemm/MatMul layers, coupled groups at a time."""

    name: ClassVar[str] = "prune-channels"
    summary: ClassVar[str] = "remove unimportant channels (coupled groups) from Conv/Gemm/MatMul layers"
    lossy: ClassVar[bool] = True
    uses_calibration: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False  # the adaptive threshold looks at what is left each time
    # No elementwise bound (pruning changes outputs by design). The default budget bounds the accuracy
    # drop where labels exist, not the agreement: top-1 agreement stays >= 0.9 on the bundled models.
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=math.inf, atol=math.inf, min_agreement=0.9)
    needs_float32: ClassVar[bool] = True

    importance: Literal["bn", "l1", "l2", "activation"] = field(default="bn", metadata={
        "help": "channel score: BatchNormalization |gamma| (L1 where a group has none), filter L1/L2 "
                "norm, or mean |activation| on calibration data"})
    threshold: Literal["auto", "adaptive", "ratio", "macs"] = field(default="auto", metadata={
        "help": "auto: adaptive where a group's scores have a valley, else (with calibration data) the largest "
                "MACs reduction within max_drop; adaptive: per-layer histogram valley (bin 0.01); ratio: prune "
                "`ratio` of every group; macs: global ranking until `target_macs_reduction`"})
    max_drop: float = field(default=budget.DEFAULT_MAX_DROP, metadata={
        "help": f"budget of threshold=auto: {budget.HELP}"})
    search_samples: int = field(default=200, metadata={
        "help": "calibration samples the budget search uses: 40% for recovery, the rest to measure the drop"})
    search_steps: int = field(default=5, metadata={
        "help": "bisection steps of the budget search (each prunes, recovers and measures one candidate)"})
    ratio: float = field(default=0.25, metadata={"help": "fraction of each group pruned with threshold=ratio"})
    layer_ratios: tuple[str, ...] = field(default=(), metadata={
        "help": "per-layer ratios NAME=R (NAME: any layer of the group), overriding `ratio`"})
    target_macs_reduction: float = field(default=0.3, metadata={
        "help": "fraction of the Conv/Gemm/MatMul MACs to remove with threshold=macs"})
    min_channels: int = field(default=1, metadata={"help": "channels every group keeps at least"})
    round_to: int = field(default=8, metadata={
        "help": "round kept channels up to a multiple of this; 8 keeps onnxruntime's blocked (NCHWc) "
                "Conv kernels, which other counts can make slower than the unpruned model; 1: no rounding"})
    recover: bool = field(default=True, metadata={
        "help": "fold constant pruned channels into the next bias; with calibration data, refit the "
                "layers that lost inputs by least squares"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={
        "help": "Conv/ConvTranspose/Gemm/MatMul layer names (an unnamed one by its first output) whose output "
                "channels are never pruned"})

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise PreconditionError(f"prune-channels: ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 < self.target_macs_reduction < 1.0:
            raise PreconditionError(
                f"prune-channels: target_macs_reduction must be in (0, 1), got {self.target_macs_reduction}")
        if not 0.0 <= self.max_drop < 100.0:
            raise PreconditionError(f"prune-channels: max_drop must be in [0, 100) percentage points, got "
                                    f"{self.max_drop}")
        if self.search_samples < 4 or self.search_steps < 1:
            raise PreconditionError("prune-channels: search_samples must be at least 4 and search_steps at least 1")
        if self.min_channels < 1 or self.round_to < 1:
            raise PreconditionError("prune-channels: min_channels and round_to must be at least 1")
        layers = [node_name(n) for n in graph.nodes if n.op in _LAYER_OPS]
        what = "model's Conv/ConvTranspose/Gemm/MatMul layers"
        require_known(self.name, "exclude_nodes", self.exclude_nodes, layers, what)
        require_known(self.name, "layer_ratios", self._layer_ratios(), layers, what)
        if self.importance == "activation" and ctx.calibration is None:
            raise PreconditionError("prune-channels: importance=activation needs calibration data "
                                    "(--calib / calibration=)")

    def _layer_ratios(self) -> dict[str, float]:
        out = {}
        for item in self.layer_ratios:
            layer, sep, value = item.rpartition("=")
            try:
                ratio = float(value)
            except ValueError:
                ratio = -1.0
            if not sep or not layer or not 0.0 <= ratio < 1.0:
                raise PreconditionError(f"prune-channels: layer_ratios entry '{item}' is not NAME=R with R in [0, 1)")
            out[layer] = ratio
        return out

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        cg = analyse(graph)
        groups = self._eligible(cg, report)
        report.details["macs"] = {"before": cg.macs(), "after": cg.macs()}
        if not groups:
            report.notes.append("no prunable channel group")
            return report
        scores = score_groups(cg, groups, self.importance, ctx.calibration, ctx.threads)
        if self.threshold != "auto":
            self._prune(graph, cg, groups, scores, self.threshold, self.target_macs_reduction, ctx.calibration,
                        ctx, report)
            return report
        valleys = sum(thresholds.adaptive_threshold(sc.values) is not None for sc in scores)
        if valleys < len(groups) and ctx.calibration is not None:
            self._within_budget(graph, cg, groups, scores, ctx, ctx.calibration, valleys, report)
            return report
        report.details["decided_by"] = _adaptive_text(valleys, len(groups))
        if valleys < len(groups):
            report.notes.append(NO_DATA)
        self._prune(graph, cg, groups, scores, "adaptive", 0.0, ctx.calibration, ctx, report)
        return report

    def _prune(self, graph: gs.Graph, cg: ChannelGraph, groups: list[Group], scores: list[GroupScores], rule: str,
               target: float, data: DataSource | None, ctx: PassContext, report: PassReport) -> None:
        """Choose by ``rule`` (``target``: the MACs reduction of rule macs), recover on ``data``, slice."""
        pruned, table = self._choose(cg, groups, scores, report, rule, target)
        report.changes = int(pruned.sum())
        report.details.update(groups=table, pruned_channels=report.changes,
                              macs={"before": cg.macs(), "after": cg.macs(pruned)})
        if not report.changes:
            report.details["recovery"] = {"ran": False, "why": "nothing pruned"}
            return
        original = export(graph) if self.recover and data is not None else None
        names = Names(graph)
        recovery: dict[str, object] = {"ran": self.recover}
        if self.recover:
            folded, unfolded = fold_constant_channels(graph, cg, pruned, names)
            recovery["constant_channels_folded"] = folded
            for layer, why in unfolded:
                report.skip(layer, f"constant channels not folded: {why}")
        report.details["constants_sliced"] = apply(graph, cg, pruned, names)
        if original is not None and data is not None:
            fits, unfit = reconstruct(graph, cg, pruned, original, data, names, seed=ctx.seed, threads=ctx.threads,
                                      progress=ctx.progress)
            recovery["least_squares"] = [vars(f) for f in fits]
            for layer, why in unfit:
                report.skip(layer, why)
        elif self.recover:
            recovery["least_squares"] = "not run: no calibration data"
        report.details["recovery"] = recovery

    def _within_budget(self, graph: gs.Graph, cg: ChannelGraph, groups: list[Group], scores: list[GroupScores],
                       ctx: PassContext, data: DataSource, valleys: int, report: PassReport) -> None:
        """Bisection over the global MACs target of the groups without a valley (those with one keep
        the adaptive rule): each candidate is a pruned and recovered copy of the graph, measured
        against the original on held-out calibration samples; the largest target within
        ``max_drop`` is kept, else the adaptive rule alone."""
        adaptive = _adaptive_text(valleys, len(groups))
        parts = budget.split(data, self.search_samples)
        if parts is None:
            report.notes.append("fewer than 4 calibration samples: no budget search; give ~200")
            report.details["decided_by"] = adaptive
            self._prune(graph, cg, groups, scores, "adaptive", 0.0, data, ctx, report)
            return
        if (note := budget.few_samples_note(parts)) is not None:
            report.notes.append(note)
        original = export(graph)
        best: list[tuple[budget.Trial, gs.Graph, PassReport]] = []

        def attempt(target: float) -> budget.Trial:
            trial_graph = copy_graph(graph)
            trial_cg = analyse(trial_graph)
            trial_report = PassReport(self.name)
            trial_groups = self._eligible(trial_cg, trial_report)
            self._prune(trial_graph, trial_cg, trial_groups, scores, "auto", target, parts.fit, ctx, trial_report)
            trial_graph.cleanup(remove_unused_graph_inputs=False).toposort()
            drop = budget.measure(original, export(trial_graph, original), parts.check, ctx.threads)
            trial = budget.Trial(target, trial_report.details["macs"]["after"], drop, drop.value <= self.max_drop)
            if trial.within and trial_report.changes and (not best or target > best[0][0].setting):
                best[:] = [(trial, trial_graph, trial_report)]
            return trial

        trials = budget.bisect(attempt, MAX_SEARCH_REDUCTION, self.search_steps)
        report.details["budget"] = {"max_drop": self.max_drop, "fit_samples": parts.fit_samples,
                                    "check_samples": parts.check_samples,
                                    "trials": [t.to_dict() for t in trials]}
        if not best:
            smallest = min(trials, key=lambda t: t.setting)
            decided = f"budget: no MACs reduction tried stays within max_drop {self.max_drop:g}"
            report.details["decided_by"] = f"{adaptive}; {decided}" if valleys else decided
            report.notes.append(f"{decided} (smallest tried: {smallest.setting:.1%} of MACs, {smallest.drop}): only "
                                f"the groups with a histogram valley are pruned")
            self._prune(graph, cg, groups, scores, "adaptive", 0.0, data, ctx, report)
            return
        trial, trial_graph, trial_report = best[0]
        replace_contents(graph, trial_graph)
        report.changes = trial_report.changes
        report.skipped.extend(trial_report.skipped)
        report.details.update({k: v for k, v in trial_report.details.items() if k != "macs"},
                              macs={"before": report.details["macs"]["before"], "after": trial.macs})
        decided = f"largest MACs target within max_drop {self.max_drop:g} ({trial.setting:.1%}): {trial.drop}"
        report.details["decided_by"] = f"{adaptive}; budget for the others: {decided}" if valleys else \
            f"budget: {decided}"
        report.notes.append(report.details["decided_by"])

    def _eligible(self, cg: ChannelGraph, report: PassReport) -> list[Group]:
        excluded = set(self.exclude_nodes)
        groups = []
        for group in cg.groups:
            if excluded.intersection(group.producers):
                report.skip(group.name, "excluded by exclude_nodes")
                continue
            reason = group.block_reason()
            if reason is not None:
                report.skip(group.name, f"{len(group.blocked)} of {len(group.units)} channels kept: {reason}")
            if len(group.prunable):
                groups.append(group)
        return groups

    def _choose(self, cg: ChannelGraph, groups: list[Group], scores: list[GroupScores], report: PassReport,
                rule: str, target: float) -> tuple[np.ndarray, list[dict]]:
        limits = thresholds.Limits(self.min_channels, self.round_to)
        if rule == "adaptive":
            choices = thresholds.by_adaptive(groups, scores, limits)
        elif rule == "auto":  # adaptive where a group has a valley, the global MACs target on the rest
            choices = thresholds.by_adaptive(groups, scores, limits)
            rest = [i for i, c in enumerate(choices) if c.rule == thresholds.NO_VALLEY]
            fixed = [c.units for c in choices]
            for i, choice in zip(rest, thresholds.by_macs(
                    [groups[i] for i in rest], [scores[i] for i in rest], limits, target,
                    lambda chosen: cg.macs(_mask(cg, fixed + chosen)), cg.macs(_mask(cg, fixed)))):
                choices[i] = choice
        elif rule == "ratio":
            ratios = self._layer_ratios()
            choices = thresholds.by_ratio(groups, scores, limits, lambda g: next(
                (ratios[n] for n in (g.name, *g.producers) if n in ratios), self.ratio))
        else:
            choices = thresholds.by_macs(groups, scores, limits, target,
                                         lambda chosen: cg.macs(_mask(cg, chosen)), cg.macs())
        pruned = np.zeros(cg.num_ids, dtype=bool)
        table = []
        for group, sc, choice in zip(groups, scores, choices):
            if len(choice.units):
                trial = pruned.copy()
                trial[choice.units] = True
                why = validate(cg, trial, group)
                if why is not None:
                    report.skip(group.name, f"not pruned: {why}")
                    continue
                pruned = trial
            table.append({"group": group.name, "layers": list(group.producers), "channels": len(group.units),
                          "pruned": int(len(choice.units)), "importance": sc.method, "rule": choice.rule})
        return pruned, table


def _adaptive_text(valleys: int, groups: int) -> str:
    return f"adaptive: histogram valley in {valleys} of {groups} groups" if valleys else thresholds.NO_VALLEY


def _mask(cg: ChannelGraph, chosen: list[np.ndarray]) -> np.ndarray:
    mask = np.zeros(cg.num_ids, dtype=bool)
    for units in chosen:
        mask[units] = True
    return mask
