"""fp16: truncate a float32 model to float16 that loads, does not overflow, and says what it kept.

Technique §1 of SEEDS.md: keep the float32-trained parameters as float16 and accept the model if
it keeps its accuracy. What the pass guarantees, and how:

- *Types from the schemas.* Each node's tensors are grouped by the schema type they are bound to
  (``onnx.defs.get_schema`` type constraints); only groups whose constraint allows
  ``tensor(float16)`` are converted, so Resize ``scales``, shapes and indices never are
  (``passes.fp16.schema``). Initializers, Constant nodes, value types, Cast ``to``,
  ConstantOfShape ``value`` and ``dtype`` attributes follow; If/Loop/Scan bodies are converted
  inside float32 boundaries (``passes.fp16.convert``).
- *Loads on the target provider.* For every node signature the pass would create, a one-node model
  is loaded in onnxruntime on ``ctx.providers[0]``; a node without a float16 kernel stays float32
  (``passes.fp16.probe`` says exactly how, and why CPU kernels that onnxruntime emulates with
  Casts are still converted).
- *No overflow.* Initializers are clamped to ±65504 and non-zero values below the smallest
  subnormal raised to it, counted in the report. With calibration data (optional), a node whose
  float32 inputs or outputs exceed ``max_abs_activation`` stays float32, and so does a node whose
  float16 output error exceeds its inputs' by more than ``max_node_error`` (automatic mixed
  precision, measured and refined over up to four rounds, ``passes.fp16.calib``); every such node
  is reported with its number.
- *Refuses what it would break.* ``requires`` rejects a model that is already quantized (Q/DQ or
  integer ops: Casts after DequantizeLinear stop onnxruntime's integer fusion), block-list entries
  that name no op type or node of the model (a typo must not convert the node meant to be kept),
  and out-of-range limits.
- *Minimal Casts, idempotent.* One Cast per tensor per type, none chained or cancelling; run on
  its own output the pass makes the same decisions and changes nothing. ``ensures`` runs
  strict onnx type inference, so a type mismatch is caught here rather than in onnxruntime.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import ClassVar

import onnx
import onnx_graphsurgeon as gs

from onnxopt.data import DataSource
from onnxopt.errors import PostconditionError, PreconditionError
from onnxopt.graph import INFERENCE_FAILURES, inference_probe, subgraphs
from onnxopt.ops import is_quantized_op
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
from onnxopt.settings_check import unknown_entries
from passes.fp16.calib import Limits, Runner, calibration_blocks
from passes.fp16.convert import FP16_MAX, Converter, Options, Outcome, float32_tensors, opset_map
from passes.fp16.probe import KernelProbe
from passes.fp16.schema import Types, apply_types, inferred_types
from passes.canonical import FoldBatchNorm

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Fp16(Pass):
    name: ClassVar[str] = "fp16"
    summary: ClassVar[str] = "convert float32 weights and compute to float16 (mixed precision where needed)"
    lossy: ClassVar[bool] = True
    uses_calibration: ClassVar[bool] = True
    # float16 keeps 11 significant bits (unit roundoff 4.9e-4). On the bundled models' evaluation sets
    # the logits move by at most 7.4e-3 (vgg_digits, logits up to 55) and argmax agrees on 100%
    # (docs/BENCHMARKS.md); 2e-2 leaves room for deeper models without hiding a broken conversion.
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=2e-2, atol=2e-2, min_agreement=0.999)

    keep_io_types: bool = field(default=True, metadata={
        "help": "graph inputs and outputs stay float32, with one Cast at each boundary"})
    op_block_list: tuple[str, ...] = field(default=(), metadata={
        "help": "op types that stay float32 (comma-separated)"})
    node_block_list: tuple[str, ...] = field(default=(), metadata={
        "help": "node names that stay float32 (comma-separated)"})
    fold_batchnorm: bool = field(default=True, metadata={
        "help": "before converting, fold BatchNormalization into the Conv/ConvTranspose/Gemm before it, as "
                "onnxruntime does at load time: a float16 BN keeps its statistics float32 (exact), which stops "
                "that fusion on CPU (resnet_fmnist: latency x1.11 instead of x1.00). A BN stays when blocked or "
                "when its folded weights would exceed the float16 range"})
    check_provider_kernels: bool = field(default=True, metadata={
        "help": "probe onnxruntime on the target provider; nodes it has no float16 kernel for stay float32"})
    max_abs_activation: float = field(default=16384.0, metadata={
        "help": "with calibration data: a node whose float32 inputs/outputs exceed this magnitude stays float32 "
                "(a quarter of the float16 maximum 65504: headroom for inputs the data does not cover)"})
    max_node_error: float | None = field(default=0.01, metadata={
        "help": "with calibration data: a node whose float16 output adds more than this relative L2 error "
                "stays float32 (none: skip this check)"})

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        scopes = [graph, *subgraphs(graph)]
        problems = [msg for bad, msg in (
            (not 0.0 < self.max_abs_activation <= FP16_MAX,
             f"max_abs_activation must be in (0, 65504] (the float16 maximum), got {self.max_abs_activation:g}"),
            (self.max_node_error is not None and not self.max_node_error > 0.0,
             f"max_node_error must be > 0 (or none to skip the check), got {self.max_node_error}"),
        ) if bad]
        problems += filter(None, (
            unknown_entries("op_block_list", self.op_block_list, sorted({n.op for g in scopes for n in g.nodes}),
                            "op types of the model"),
            unknown_entries("node_block_list", self.node_block_list,
                            sorted({n.name for g in scopes for n in g.nodes if n.name}), "node names of the model"),
        ))
        if problems:
            raise PreconditionError(f"fp16: {'; '.join(problems)}")
        quantized = Counter(n.op for g in scopes for n in g.nodes
                            if is_quantized_op(n.op))
        if quantized:
            listing = ", ".join(f"{op} x{count}" for op, count in sorted(quantized.items()))
            raise PreconditionError(
                f"fp16: the model is already quantized ({listing}): "
                "fp16 would put Casts between DequantizeLinear and the compute ops and stop onnxruntime's integer "
                "fusion (QLinearConv, QLinearMatMul...), leaving a slower model; int8 and fp16 are alternatives: "
                "apply fp16 to the float model instead, not after int8")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        report.details["interface"] = {t.name: str(t.dtype) for t in [*graph.inputs, *graph.outputs]}
        types = self._types(graph, report)
        if not float32_tensors(graph) and all(t.elem_type != onnx.TensorProto.FLOAT
                                              for scope in types for t in scope.values()):
            report.notes.append("no float32 tensors (already float16, or integer-only): nothing to convert")
            return report
        graph.toposort()
        apply_types(graph, types)
        before = _type_error(graph, strict=True)
        if before is not None:  # ensures then checks types without strict mode, and tolerates what the input has
            report.details["strict_types"] = False
            report.notes.append(f"onnx's strict type inference fails on the input model already ({before}): "
                                "the result's types are checked without strict mode")
            lenient = _type_error(graph, strict=False)
            if lenient is not None:
                report.details["type_error_before"] = lenient
        probe = self._probe(graph, ctx, report)
        options = Options(self.keep_io_types, frozenset(self.op_block_list), frozenset(self.node_block_list))
        if ctx.calibration is not None:
            options = replace(options, blocked=self._calibrate(graph, ctx.calibration, ctx, options, probe, report))
        outcome = Converter(graph, options, probe).run()
        _fill_report(report, outcome, probe)
        return report

    @staticmethod
    def _types(graph: gs.Graph, report: PassReport) -> Types:
        try:
            return inferred_types(graph)
        except INFERENCE_FAILURES as exc:
            report.notes.append(f"type inference failed ({_first_line(exc)}): untyped tensors are left alone")
            return []

    def prerequisites(self, graph: gs.Graph) -> list[Pass]:
        """BatchNormalization folding (see ``fold_batchnorm``) of what float16 can hold and the block lists allow."""
        if not self.fold_batchnorm or "BatchNormalization" in self.op_block_list:
            return []
        norms = [n for g in [graph, *subgraphs(graph)] for n in g.nodes if n.op == "BatchNormalization"]
        blocked = tuple(n.name for n in norms if n.name in self.node_block_list)
        return [FoldBatchNorm(max_abs_weight=FP16_MAX, exclude_nodes=blocked)] if norms else []

    def ensures(self, graph: gs.Graph, ctx: PassContext, report: PassReport) -> None:
        if self.keep_io_types:
            now = {t.name: str(t.dtype) for t in [*graph.inputs, *graph.outputs]}
            changed = [f"{k}: {v} -> {now.get(k)}" for k, v in report.details["interface"].items() if now.get(k) != v]
            if changed:
                raise PostconditionError(f"fp16 changed interface types with keep_io_types: {', '.join(changed)}")
        error = _type_error(graph, strict=report.details.get("strict_types", True))
        if error is not None and error != report.details.get("type_error_before"):
            raise PostconditionError(f"fp16 left inconsistent types: {error}")

    def _probe(self, graph: gs.Graph, ctx: PassContext, report: PassReport) -> KernelProbe | None:
        if not self.check_provider_kernels:
            return None
        import onnxruntime as ort

        provider = ctx.providers[0] if ctx.providers else "CPUExecutionProvider"
        report.details["provider"] = provider
        if provider not in ort.get_available_providers():
            report.notes.append(f"{provider} is not available in this onnxruntime build: its float16 kernels "
                                "were not probed")
            return None
        return KernelProbe(provider, opset_map(graph))

    def _calibrate(self, graph: gs.Graph, data: DataSource, ctx: PassContext, options: Options,
                   probe: KernelProbe | None, report: PassReport) -> dict[str, str]:
        import onnxruntime as ort

        providers = [p for p in ctx.providers if p in ort.get_available_providers()] or ["CPUExecutionProvider"]

        def convert(trial: gs.Graph, blocked: dict[str, str]) -> set[str]:
            return Converter(trial, replace(options, blocked=blocked), probe).run().converted

        blocked, details = calibration_blocks(
            graph, data, Limits(self.max_abs_activation, self.max_node_error), convert,
            Runner(providers, ctx.threads, ctx.progress))
        details["providers"] = providers
        report.details["calibration"] = details
        if subgraphs(graph):
            report.notes.append("calibration measures the main graph's tensors only: a node with a subgraph is "
                                "judged by its inputs and outputs, and kept float32 with its whole body when blocked")
        return blocked


def _type_error(graph: gs.Graph, *, strict: bool) -> str | None:
    """onnx type inference's complaint about ``graph`` (weights left out of the check), else ``None``."""
    try:
        onnx.shape_inference.infer_shapes(inference_probe(graph), check_type=True, strict_mode=strict)
    except onnx.shape_inference.InferenceError as exc:
        return _first_line(exc)
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _fill_report(report: PassReport, outcome: Outcome, probe: KernelProbe | None) -> None:
    for label, reason in outcome.kept:
        report.skip(label, reason)
    report.changes = outcome.tensors_converted + outcome.constants_converted
    report.details.update({
        "nodes_converted": outcome.nodes_converted,
        "nodes_kept_float32": len(outcome.kept),
        "tensors_converted": outcome.tensors_converted,
        "constants_converted": outcome.constants_converted,
        "values_clamped_to_65504": outcome.values_clamped,
        "tiny_values_raised_to_subnormal": outcome.tiny_values_raised,
        "casts_added": outcome.casts_added,
    })
    if probe is not None:
        report.details["kernel_probe"] = probe.results
    if outcome.emulated_ops:
        provider = probe.provider if probe is not None else "this provider"
        report.notes.append(f"onnxruntime on {provider} has no native float16 kernel for "
                            f"{', '.join(sorted(outcome.emulated_ops))}: it wraps them in Casts at load time, "
                            "so float16 saves size, not time, there")
