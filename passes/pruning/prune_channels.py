"""Structured channel pruning on the ONNX graph (SEEDS.md §3, steps 2, 3 and 6, plus recovery).

1. Analyse the channel dependencies (``_channel_groups``): coupled channels form groups; groups that
   reach graph outputs or ops the analysis does not understand are left alone, with the reason.
2. Score every unit (``_prune_importance``): BatchNormalization |gamma| by default.
3. Choose what to prune (``_prune_threshold``): the per-layer adaptive histogram threshold by
   default, or a ratio, or a global MACs target; each group is validated before it is pruned.
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

from onnxopt.errors import PreconditionError
from onnxopt.graph import export
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
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


@dataclass(kw_only=True)
class PruneChannels(Pass):
    """Remove unimportant channels from Conv/Gemm/MatMul layers, coupled groups at a time."""

    name: ClassVar[str] = "prune-channels"
    summary: ClassVar[str] = "remove unimportant channels (coupled groups) from Conv/Gemm/MatMul layers"
    lossy: ClassVar[bool] = True
    uses_calibration: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False  # the adaptive threshold looks at what is left each time
    # No elementwise bound (pruning changes outputs by design); at the default settings the
    # bundled models keep >= 97% top-1 agreement (tests/test_contract.py, docs/BENCHMARKS.md).
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=math.inf, atol=math.inf, min_agreement=0.97)
    needs_float32: ClassVar[bool] = True

    importance: Literal["bn", "l1", "l2", "activation"] = field(default="bn", metadata={
        "help": "channel score: BatchNormalization |gamma| (L1 where a group has none), filter L1/L2 "
                "norm, or mean |activation| on calibration data"})
    threshold: Literal["adaptive", "ratio", "macs"] = field(default="adaptive", metadata={
        "help": "adaptive: per-layer histogram valley (bin 0.01); ratio: prune `ratio` of every group; "
                "macs: global ranking until `target_macs_reduction`"})
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
        pruned, table = self._choose(cg, groups, scores, report)
        report.changes = int(pruned.sum())
        report.details.update(groups=table, pruned_channels=report.changes,
                              macs={"before": cg.macs(), "after": cg.macs(pruned)})
        if not report.changes:
            report.details["recovery"] = {"ran": False, "why": "nothing pruned"}
            return report
        original = export(graph) if self.recover and ctx.calibration is not None else None
        names = Names(graph)
        recovery: dict[str, object] = {"ran": self.recover}
        if self.recover:
            folded, unfolded = fold_constant_channels(graph, cg, pruned, names)
            recovery["constant_channels_folded"] = folded
            for layer, why in unfolded:
                report.skip(layer, f"constant channels not folded: {why}")
        report.details["constants_sliced"] = apply(graph, cg, pruned, names)
        if original is not None and ctx.calibration is not None:
            fits, unfit = reconstruct(graph, cg, pruned, original, ctx.calibration, names,
                                      seed=ctx.seed, threads=ctx.threads, progress=ctx.progress)
            recovery["least_squares"] = [vars(f) for f in fits]
            for layer, why in unfit:
                report.skip(layer, why)
        elif self.recover:
            recovery["least_squares"] = "not run: no calibration data"
        report.details["recovery"] = recovery
        return report

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

    def _choose(self, cg: ChannelGraph, groups: list[Group], scores: list[GroupScores],
                report: PassReport) -> tuple[np.ndarray, list[dict]]:
        limits = thresholds.Limits(self.min_channels, self.round_to)
        if self.threshold == "adaptive":
            choices = thresholds.by_adaptive(groups, scores, limits)
        elif self.threshold == "ratio":
            ratios = self._layer_ratios()
            choices = thresholds.by_ratio(groups, scores, limits, lambda g: next(
                (ratios[n] for n in (g.name, *g.producers) if n in ratios), self.ratio))
        else:
            choices = thresholds.by_macs(groups, scores, limits, self.target_macs_reduction,
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


def _mask(cg: ChannelGraph, chosen: list[np.ndarray]) -> np.ndarray:
    mask = np.zeros(cg.num_ids, dtype=bool)
    for units in chosen:
        mask[units] = True
    return mask
