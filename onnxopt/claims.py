"""What a comparison's numbers can and cannot support, and where a user would be misled: a warning
for each claim the measurement cannot carry (synthetic data, too few samples, noise, an untypical
CPU) and for each result worse than the original (slower, larger, over the accuracy budget)."""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING

import onnx

from onnxopt.ops import is_quantized_op

if TYPE_CHECKING:
    from onnxopt.evaluate import Comparison

#: below this many paired runs the latency percentiles are too coarse to trust
MIN_LATENCY_RUNS = 20
#: warn when the 95% interval of the accuracy delta is wider than this (0.5 percentage points)
ACCURACY_RESOLUTION = 0.005
#: fewer calibration or evaluation samples than this get a warning: one sample is then worth 1 point
#: or more of agreement, and calibration ranges come from a handful of inputs
MIN_SAMPLES = 100
#: the default accuracy budget: a drop of more than 1 point (labels), or agreement with the original
#: below 99% (no labels), is worth a warning
ACCURACY_BUDGET = 0.01
AGREEMENT_BUDGET = 0.99
#: a file larger than the original by more than this fraction is worth a warning
SIZE_SLACK = 0.01


def claim_warnings(cmp: Comparison, model_a: onnx.ModelProto, model_b: onnx.ModelProto) -> list[str]:
    """Warnings for every claim the measurement in ``cmp`` cannot support, and for B being worse than A."""
    out: list[str] = []
    if cmp.synthetic:
        out.append("data is synthetic (random inputs): agreement and errors describe random inputs and say "
                   "nothing about accuracy; give real data for accuracy")
    elif cmp.samples < MIN_SAMPLES:
        kind = "labelled" if cmp.labelled_samples else "unlabelled"
        out.append(f"only {cmp.samples} {kind} evaluation samples (fewer than {MIN_SAMPLES}): each one moves "
                   f"agreement{' and accuracy' if cmp.labelled_samples else ''} by {100 / max(cmp.samples, 1):.1f} "
                   "pts; evaluate on more samples")
    out.extend(_accuracy_warnings(cmp))
    out.extend(_hardware_warnings(cmp, model_a, model_b))
    out.extend(_cost_warnings(cmp))
    return out


def _accuracy_warnings(cmp: Comparison) -> list[str]:
    out = []
    delta, half = cmp.accuracy_delta, cmp.accuracy_delta_ci95
    if delta is not None and delta < -ACCURACY_BUDGET:
        out.append(f"accuracy dropped {-delta * 100:.2f} pts ({cmp.accuracy_a:.2%} → {cmp.accuracy_b:.2%}), over the "
                   f"{ACCURACY_BUDGET * 100:g}-point budget")
    elif delta is None and cmp.agreement is not None and not cmp.synthetic and cmp.agreement < AGREEMENT_BUDGET:
        out.append(f"top-1 agreement with the original is {cmp.agreement:.2%}, under the {AGREEMENT_BUDGET:.0%} "
                   "budget: B changes the prediction on more than 1 in 100 samples")
    if delta is not None and half is not None and abs(delta) <= half:
        if delta != 0:
            out.append(f"accuracy delta {delta * 100:+.2f} pts is within its 95% interval ±{half * 100:.2f} pts "
                       f"({cmp.labelled_samples} labelled samples): not a significant difference")
        elif half > ACCURACY_RESOLUTION:
            out.append(f"only {cmp.labelled_samples} labelled samples: accuracy changes up to ±{half * 100:.2f} pts "
                       "(95%) cannot be ruled out")
    return out


def _hardware_warnings(cmp: Comparison, model_a: onnx.ModelProto, model_b: onnx.ModelProto) -> list[str]:
    out = []
    cpu_first = bool(cmp.providers) and cmp.providers[0] == "CPUExecutionProvider"
    for label, model in (("A", model_a), ("B", model_b)):
        if cpu_first and _uses_float16(model):
            out.append(f"model {label} computes in float16 on CPUExecutionProvider, which has few float16 kernels "
                       "(onnxruntime casts back to float32): float16 is a size optimisation here, not a speed one")
        if cpu_first and _uses_integer_compute(model):
            if cmp.cpu.int8_dot is None:
                out.append(f"model {label} computes in int8, and whether this CPU has int8 dot-product instructions "
                           "(VNNI/AMX/asimddp) is unknown: its latency may not transfer to other CPUs")
            elif not cmp.cpu.int8_dot:
                out.append(f"model {label} computes in int8 but this CPU ({cmp.cpu.model_name}) has no int8 "
                           "dot-product instructions (VNNI/AMX/asimddp): int8 latency here does not predict "
                           "CPUs that have them")
    return out


def _cost_warnings(cmp: Comparison) -> list[str]:
    out = []
    if cmp.size_a_bytes and cmp.size_ratio > 1 + SIZE_SLACK:
        grown = _grown_ops(cmp)
        out.append(f"B's file is ×{cmp.size_ratio:.2f} the size of A's (+{cmp.size_b_bytes - cmp.size_a_bytes:,} "
                   f"bytes; parameter bytes ×{_ratio(cmp.stats_b.parameter_bytes, cmp.stats_a.parameter_bytes)})"
                   f"{f'; B has more {grown}' if grown else ''}")
    lat = cmp.latency
    if lat is None:
        return out
    if lat.significant and lat.ratio > 1:
        grown = _grown_ops(cmp)
        out.append(f"B is slower than {cmp.latency_baseline}: latency ×{lat.ratio:.2f} (p10–p90 {lat.ratio_p10:.2f}–"
                   f"{lat.ratio_p90:.2f}){f'; B has more {grown}' if grown else ''}")
    if not lat.significant:
        out.append(f"latency ratio B/A {lat.ratio:.3f} is inside this run's noise band (per-pair ratios "
                   f"p10–p90 {lat.ratio_p10:.3f}–{lat.ratio_p90:.3f}): no measured speed difference")
    if lat.runs < MIN_LATENCY_RUNS:
        out.append(f"only {lat.runs} paired latency runs: use at least {MIN_LATENCY_RUNS} for a stable ratio")
    if cmp.threads is None:
        out.append("intra-op threads not pinned (onnxruntime uses every core): latency depends on machine "
                   "load; pin threads (e.g. 1) for a stable ratio")
    elif cmp.threads > (os.cpu_count() or cmp.threads):
        out.append(f"{cmp.threads} threads on {os.cpu_count()} CPU cores: oversubscribed, latency is unreliable")
    return out


def _ratio(b: float, a: float) -> str:
    return f"{b / a:.2f}" if a else "—"


def _grown_ops(cmp: Comparison, shown: int = 3) -> str:
    """The op types B has more of than A, most added first (where the extra time or bytes go)."""
    grown = Counter(cmp.stats_b.op_histogram) - Counter(cmp.stats_a.op_histogram)
    return ", ".join(f"{op} (+{n})" for op, n in grown.most_common(shown))


def calibration_warning(samples: int) -> str | None:
    """A warning when calibration data (real, not random) has fewer than ``MIN_SAMPLES`` samples."""
    if samples >= MIN_SAMPLES:
        return None
    return (f"only {samples} calibration samples (fewer than {MIN_SAMPLES}): ranges, refits and recovery "
            "see a handful of inputs and may not hold for others; calibrate on more samples")


def _uses_float16(model: onnx.ModelProto) -> bool:
    fp16 = onnx.TensorProto.FLOAT16
    graph = model.graph
    if any(t.data_type == fp16 for t in graph.initializer):
        return True
    if any(vi.type.tensor_type.elem_type == fp16 for vi in list(graph.input) + list(graph.output)):
        return True
    return any(n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in graph.node)


def _uses_integer_compute(model: onnx.ModelProto) -> bool:
    return any(is_quantized_op(n.op_type) and n.op_type != "DequantizeLinear" for n in model.graph.node)
