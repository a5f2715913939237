"""int8: calibrated static quantization in QDQ form that onnxruntime fuses into integer kernels.

Weights become per-channel symmetric int8 (axis from an explicit per-op table; [-63, 63] by
default so that x86 CPUs without VNNI cannot saturate their int16 pair sums), Conv/Gemm biases int32
at scale ``s_x * s_w``; activations get uint8 asymmetric (or int8 symmetric) Q/DQ pairs whose ranges
come from streaming observers (``onnxopt.calibration``), so calibration memory does not grow with
the number of samples. Its prerequisites (run by the pipeline first, see ``Int8.prerequisites``)
strip an earlier quantization when asked (the pipeline upgrades the opset first), name the nodes, and fold constants,
BatchNorm, per-channel Mul/Add and MatMul+Add into the layers; ``passes.int8.plan`` decides which
nodes and tensors are quantized; ``passes.int8.emit`` writes the Q/DQ nodes. Afterwards the pass asks
onnxruntime for its optimized graph and reports which layers became integer kernels and how far
those kernels are from the Q/DQ reference. With ``max_drop`` it measures the drop on the calibration
data and returns the layers with the largest own error to float, one at a time, until the budget
holds (``passes.int8.measure``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Mapping

import onnx
import onnx_graphsurgeon as gs

from onnxopt.calibration import Method, Observer, QParams, qparams_from_range
from onnxopt.data import DataSource
from onnxopt.errors import PreconditionError
from onnxopt.graph import TypeInfo, export, import_graph, infer_types, replace_contents, unique_node_names
from onnxopt.hardware import cpu_info
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
from onnxopt.settings_check import require_known
from passes.canonical import (ConstantFolding, FoldBatchNorm, FoldConvAdd, FoldConvMul, MatMulAddToGemm, NameNodes,
                              SumToAdd)
from passes.int8.details import BudgetInfo, CalibrationInfo, Int8Details, RangeEntry, ReduceRangeInfo
from passes.int8.emit import EmitResult, apply_plan
from passes.int8.measure import (Fusion, Limited, RunOptions, calibrate, fusion_report, layer_errors,
                                  measure_budget)
from passes.int8.op_table import COVERED_OPS
from passes.int8.plan import Plan, PlanSettings, candidate_tensors, make_plan
from passes.int8.prepare import (PER_CHANNEL_OPSET, QDQ_OPSET, check_not_quantized,
                                  has_foldable_nodes)
from passes.int8.steps import StripQdq

logger = logging.getLogger(__name__)

#: fused-vs-reference output difference (fraction of the output range) worth a note
_KERNEL_DEVIATION = 0.02
#: constant folding in ``prepare`` materialises weights of any size (ConstantOfShape placeholders too)
_NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class _Run:
    """What one run of the pass decides before planning (the settings object is not written to)."""

    #: int8 weights in [-63, 63] instead of [-127, 127]
    reduce: bool
    #: what ``reduce`` was decided for, when ``reduce_range`` was left to the pass
    decided_for: str | None
    #: element types and shapes of the prepared graph's tensors
    types: TypeInfo


@dataclass(kw_only=True)
class Int8(Pass):
    name: ClassVar[str] = "int8"
    summary: ClassVar[str] = ("Static int8 quantization (QDQ): per-channel int8 weights, int32 biases, "
                              "activations calibrated by streaming observers; checks onnxruntime's fusion.")
    needs_calibration: ClassVar[bool] = True
    lossy: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False  # a quantized model is refused, not requantized
    # Outputs move by up to a few quantization steps, so no elementwise bound holds; top-1 agreement
    # with float stays >= 0.95 on small classifiers calibrated with a few hundred samples.
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=math.inf, atol=math.inf, min_agreement=0.95)
    needs_float32: ClassVar[bool] = True

    method: Method = field(default="minmax", metadata={
        "help": "activation range: minmax, percentile, entropy (KL) or mse (least expected squared error)"})
    percentile: float = field(default=99.999, metadata={"help": "percentile of |x| kept by method=percentile"})
    bins: int = field(default=2048, metadata={
        "help": "histogram bins per tensor for percentile/entropy/mse (memory per tensor is fixed)"})
    per_channel: bool = field(default=True, metadata={
        "help": "one weight scale per output channel (needs opset >= 13); false: one per tensor (opset >= 10)"})
    activation_type: Literal["uint8", "int8"] = field(default="uint8", metadata={
        "help": "uint8 asymmetric (default) or int8 symmetric activations"})
    reduce_range: bool | None = field(default=None, metadata={
        "help": "true: int8 weights in [-63, 63], because x86 CPUs without VNNI multiply uint8 x int8 pairs into "
                "a saturating int16 (vpmaddubsw) that full-range weights can overflow; false: [-127, 127] (VNNI, "
                "AMX, ARM, GPUs); none (default): decided for the CPU onnxopt runs on when the provider is the CPU "
                "(reduced only on x86 without int8 dot-product instructions), full range otherwise; set it "
                "explicitly when the deployment CPU differs"})
    exclude_ops: tuple[str, ...] = field(default=(), metadata={"help": "op types left in float"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={"help": "node names left in float"})
    keep_first_last: bool = field(default=False, metadata={
        "help": "keep the first and the last compute layer in float"})
    max_drop: float | None = field(default=None, metadata={
        "help": "accuracy budget in percentage points on the calibration data (accuracy if it has labels, "
                "else top-1 agreement); most sensitive layers go back to float until it holds"})
    batch_size: int = field(default=8, metadata={"help": "samples per calibration inference"})
    calibration_samples: int | None = field(default=None, metadata={
        "help": "use at most this many calibration samples (default: all)"})
    prepare: bool = field(default=True, metadata={
        "help": "first fold constants, BatchNormalization and bias Adds into the preceding layer, MatMul+Add into Gemm "
                "(what onnxruntime's quant_pre_process does), so layers quantize whole"})
    requantize: bool = field(default=False, metadata={
        "help": "accept a QDQ model: strip its Q/DQ pairs and quantize again"})

    def min_opset(self) -> int:
        """QuantizeLinear/DequantizeLinear exist from opset 10, their per-channel ``axis`` from 13."""
        return PER_CHANNEL_OPSET if self.per_channel else QDQ_OPSET

    @property
    def symmetric(self) -> bool:
        return self.activation_type == "int8"

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        problems = [msg for bad, msg in (
            (self.batch_size < 1, "batch_size must be >= 1"),
            (self.calibration_samples is not None and self.calibration_samples < 1, "calibration_samples must be >= 1"),
            (self.max_drop is not None and self.max_drop < 0, "max_drop must be >= 0 (percentage points)"),
            (self.bins < 16, "bins must be >= 16"),
            (not 50.0 < self.percentile <= 100.0, "percentile must be in (50, 100]"),
        ) if bad]
        if problems:
            raise PreconditionError(f"int8: {'; '.join(problems)}")
        require_known(self.name, "exclude_nodes", self.exclude_nodes, unique_node_names(graph), "model's nodes")
        require_known(self.name, "exclude_ops", self.exclude_ops,
                      sorted({n.op for n in graph.nodes} | COVERED_OPS), "op types in the model or quantized by int8")
        check_not_quantized(graph, self.requantize)

    def prerequisites(self, graph: gs.Graph) -> list[Pass]:
        """Q/DQ stripping when asked for, unique node names (the plan refers to
        nodes by name), then with ``prepare`` the rewrites that let layers quantize whole."""
        steps: list[Pass] = []
        if self.requantize:
            steps.append(StripQdq())
        steps.append(NameNodes())
        if self.prepare:
            if has_foldable_nodes(graph):  # weights must be constants, whatever their size
                steps.append(ConstantFolding(size_threshold_bytes=_NO_LIMIT))
            steps += [FoldBatchNorm(), SumToAdd(), FoldConvMul(), FoldConvAdd(), MatMulAddToGemm()]
        return steps

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        reduce, why = self._resolve_reduce_range(ctx)
        return self._quantize(graph, ctx, _Run(reduce, why, infer_types(graph)))

    def _quantize(self, graph: gs.Graph, ctx: PassContext, state: _Run) -> PassReport:
        report = PassReport(self.name)
        plan = make_plan(graph, self._plan_settings({}, state), state.types.dtypes, state.types.shapes)
        if not plan.layers:
            report.notes.append("no float32 Conv/ConvTranspose/Gemm/MatMul layer can be quantized; model left "
                                "unchanged (not prepared)")
            _add_skips(report, plan)
            return report
        if ctx.calibration is None:
            raise PreconditionError("int8 needs calibration data; give --calib (CLI) or calibration= (API)")
        data = Limited(ctx.calibration, self.calibration_samples)
        run = RunOptions(self.batch_size, tuple(ctx.providers), ctx.threads, ctx.progress)
        budget = None
        if self.max_drop is None:
            # onnxruntime reads the weights from the working graph's arrays: no exported copy
            observers = calibrate(graph, plan.observed, data, self.method, self._observer_options(), run)
            samples = data.seen
            params = self._params(observers, plan)
            emitted = apply_plan(graph, plan, params, dedicated=self.symmetric)
            graph.cleanup(remove_unused_graph_inputs=False)
        else:
            float_model = export(graph)
            observers = calibrate(float_model, candidate_tensors(graph, state.types.dtypes), data, self.method,
                                  self._observer_options(), run)
            samples = data.seen
            model, plan, emitted, budget = self._meet_budget(float_model, state, plan, observers, data, run, report,
                                                             self.max_drop)
            params = self._params(observers, plan)
            replace_contents(graph, import_graph(model))
        details = self._describe(report, plan, emitted, observers, params, samples, ctx.calibration)
        details.budget = budget
        assert data.first is not None  # calibration read a batch: empty data sets are refused when opened
        details.fusion = fusion_report(graph, plan, ctx.providers, data.first)
        _note_fusion(report, details.fusion, ctx.providers, self._deviation_hint(ctx, len(plan.layers), state.reduce))
        if state.decided_for is not None:
            details.reduce_range = ReduceRangeInfo(state.reduce, state.decided_for)
            bound = 63 if state.reduce else 127
            report.notes.append(f"reduce_range={str(state.reduce).lower()} (int8 weights in [-{bound}, {bound}]) chosen "
                                f"for {state.decided_for}; set reduce_range explicitly for another deployment CPU")
        report.details = details
        return report

    # -- steps --------------------------------------------------------------------------------
    def _resolve_reduce_range(self, ctx: PassContext) -> tuple[bool, str | None]:
        """The weight range to use and, when decided automatically, what it was decided for."""
        if self.reduce_range is not None:
            return self.reduce_range, None
        provider = ctx.providers[0] if ctx.providers else "CPUExecutionProvider"
        if provider != "CPUExecutionProvider":
            return False, provider
        cpu = cpu_info()
        reduce = cpu.u8s8_saturates
        return reduce, f"{cpu.model_name} ({cpu.arch}; int8 dot-product: {cpu.int8_dot_text})"

    def _deviation_hint(self, ctx: PassContext, layers: int, reduce: bool) -> str:
        """The likely cause when the fused kernels differ from the Q/DQ reference (``reduce``: the
        weights use [-63, 63])."""
        cpu = cpu_info()
        on_cpu = not ctx.providers or ctx.providers[0] == "CPUExecutionProvider"
        if on_cpu and not reduce and cpu.u8s8_saturates:
            return "int16 saturation of this CPU's U8S8 kernels? reduce_range=true avoids it"
        return (f"the fused kernels requantize each of the {layers} layer(s) with their own rounding, the "
                "reference computes in float between Q/DQ pairs; judge the model by its measured accuracy")

    def _plan_settings(self, keep_float: Mapping[str, str], state: _Run) -> PlanSettings:
        return PlanSettings(symmetric=self.symmetric, per_channel=self.per_channel,
                            weight_bound=63 if state.reduce else 127,
                            exclude_ops=frozenset(self.exclude_ops), exclude_nodes=frozenset(self.exclude_nodes),
                            keep_first_last=self.keep_first_last, keep_float=dict(keep_float))

    def _params(self, observers: Mapping[str, Observer], plan: Plan) -> dict[str, QParams]:
        """Scale and zero point per tensor: the method's range, the full range where the quantized
        region ends (see ``Plan.exits``)."""
        full = set(plan.exits)
        return {name: (qparams_from_range(obs.lo, obs.hi, self.activation_type, self.symmetric) if name in full
                       and not obs.empty else obs.qparams(self.activation_type, self.symmetric))
                for name, obs in observers.items()}

    def _observer_options(self) -> dict[str, float | int]:
        if self.method == "minmax":
            return {}
        if self.method == "percentile":
            return {"bins": self.bins, "percentile": self.percentile}
        return {"bins": self.bins}

    def _build(self, float_model: onnx.ModelProto, plan: Plan,
               params: Mapping[str, QParams]) -> tuple[onnx.ModelProto, EmitResult]:
        graph = import_graph(float_model)
        emitted = apply_plan(graph, plan, params, dedicated=self.symmetric)
        graph.cleanup(remove_unused_graph_inputs=False)
        return export(graph, float_model), emitted

    def _meet_budget(self, float_model: onnx.ModelProto, state: _Run, plan: Plan,
                     observers: Mapping[str, Observer], data: Limited, run: RunOptions, report: PassReport,
                     max_drop: float) -> tuple[onnx.ModelProto, Plan, EmitResult, BudgetInfo]:
        """Return the layers with the largest own error to float, one at a time, until the drop fits."""
        params = self._params(observers, plan)
        model, emitted = self._build(float_model, plan, params)
        errors = layer_errors(float_model, plan, params, data, run)
        budget = measure_budget(float_model, model, data, run)
        steps = [{"returned": None, **budget.to_dict()}]
        keep: dict[str, str] = {}
        for layer in sorted(errors, key=lambda name: errors[name], reverse=True):
            if budget.drop <= max_drop:
                break
            keep[layer] = (f"returned to float by the accuracy budget (max_drop={max_drop}, "
                           f"layer NMSE {errors[layer]:.3g})")
            plan = make_plan(import_graph(float_model), self._plan_settings(keep, state), state.types.dtypes,
                             state.types.shapes)
            model, emitted = self._build(float_model, plan, self._params(observers, plan))
            budget = measure_budget(float_model, model, data, run)
            steps.append({"returned": layer, **budget.to_dict()})
        met = budget.drop <= max_drop
        if not met:
            report.notes.append(f"accuracy budget not met: {budget.metric} drop {budget.drop:.2f} pp > "
                                f"{max_drop} pp with every quantized layer tried")
        nmse = {k: float(f"{v:.4g}") for k, v in sorted(errors.items(), key=lambda kv: -kv[1])}
        return model, plan, emitted, BudgetInfo(max_drop, met, list(keep), steps, nmse)

    def _describe(self, report: PassReport, plan: Plan, emitted: EmitResult, observers: Mapping[str, Observer],
                  params: Mapping[str, QParams], samples: int, calibration: DataSource) -> Int8Details:
        _add_skips(report, plan)
        report.notes.extend(plan.notes + emitted.notes)
        report.changes = len(plan.nodes)
        if calibration.synthetic:
            report.notes.append("calibration data is synthetic (random): ranges do not reflect real inputs")
        nonfinite = sorted(name for name, obs in observers.items() if obs.nonfinite)
        if nonfinite:
            report.notes.append(f"NaN/inf values ignored during calibration in: {', '.join(nonfinite[:8])}")
        used = {source for source in plan.tensors.values()}
        return Int8Details(
            method=self.method, activation_type=self.activation_type, per_channel=self.per_channel,
            calibration=CalibrationInfo(samples, calibration.description, len(observers)),
            quantized_ops=plan.op_counts(), layers=len(plan.layers),
            qdq_pairs=emitted.qdq_pairs, int8_weights=emitted.weights, int32_biases=emitted.biases,
            relu_clip_as_clamp=list(plan.folded), float_outputs=list(plan.float_outputs),
            ranges={name: RangeEntry.of(observers[name], params[name]) for name in plan.tensors
                    if name in used and name in observers})


def _note_fusion(report: PassReport, fused: Fusion, providers: tuple[str, ...], hint: str) -> None:
    missing = fused.layers - fused.integer_layers
    if missing > 0:
        named = f": {', '.join(fused.unfused_layers[:8])}" if fused.unfused_layers else ""
        report.notes.append(
            f"onnxruntime ({', '.join(providers)}) ran {missing} of {fused.layers} quantized layer(s) in float, "
            f"with Q/DQ around them (no integer kernel for that case){named}")
    if fused.kernel_deviation > _KERNEL_DEVIATION:
        report.notes.append(
            f"onnxruntime's fused integer kernels differ from the Q/DQ reference by {fused.kernel_deviation:.1%} "
            f"of the output range ({hint})")


def _add_skips(report: PassReport, plan: Plan) -> None:
    for skip in plan.skipped:
        report.skip(skip.target, skip.reason)
