"""Compare two models: accuracy, top-1 agreement, output errors, paired latency, size, and
warnings wherever the measurement cannot support the claim it seems to make.

Outputs are compared batch by batch with running sums, so memory does not grow with the number of
samples. Each model is fed its own input dtypes (the batch is cast per model) and outputs are
compared in float64 with A as the reference. Accuracy and agreement use the class-score output
(the first output, or a named one) when it is ``[N, C]`` with ``C > 1`` after dropping singleton
axes; other outputs get error metrics only.

``snr_db`` is ``10·log10(Σa² / Σ(a−b)²)``: ``inf`` for identical outputs (``null`` in JSON).
``cosine`` is the cosine similarity of the whole output stream flattened into one vector.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

from onnxopt.data import DataSource, InputSpec, RandomSource, input_specs, open_data
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.graph import initializer_inputs
from onnxopt.hardware import CpuInfo, cpu_info
from onnxopt.latency import PairedLatency, paired_latency
from onnxopt.model_io import load_model
from onnxopt.ops import is_quantized_op
from onnxopt.runtime import make_session
from onnxopt.stats import ModelStats, model_stats

logger = logging.getLogger(__name__)

#: ops whose presence means the model computes in integers (QDQ activations or integer kernels)
#: below this many paired runs the latency percentiles are too coarse to trust
MIN_LATENCY_RUNS = 20
#: warn when the 95% interval of the accuracy delta is wider than this (0.5 percentage points)
ACCURACY_RESOLUTION = 0.005


@dataclass(frozen=True)
class OutputError:
    """Error of B's output against A's over all compared samples."""

    name: str
    elements: int
    max_abs: float
    mean_abs: float
    cosine: float
    snr_db: float
    #: elements left out because A or B is NaN/inf there
    nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "elements": self.elements, "max_abs": self.max_abs, "mean_abs": self.mean_abs,
                "cosine": self.cosine, "snr_db": _json_float(self.snr_db), "nonfinite": self.nonfinite}


@dataclass
class Comparison:
    """Everything ``compare`` measured, with the conditions it was measured under."""

    model_a: str
    model_b: str
    providers: list[str]
    threads: int | None
    batch_size: int
    optimized_sessions: bool
    data: str
    samples: int
    synthetic: bool
    size_a_bytes: int
    size_b_bytes: int
    stats_a: ModelStats
    stats_b: ModelStats
    cpu: CpuInfo
    outputs: list[OutputError] = field(default_factory=list)
    logits_output: str | None = None
    agreement: float | None = None
    labelled_samples: int = 0
    accuracy_a: float | None = None
    accuracy_b: float | None = None
    #: half-width of the 95% interval of ``accuracy_delta`` (paired samples)
    accuracy_delta_ci95: float | None = None
    latency: PairedLatency | None = None
    latency_batch: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def accuracy_delta(self) -> float | None:
        if self.accuracy_a is None or self.accuracy_b is None:
            return None
        return self.accuracy_b - self.accuracy_a

    @property
    def size_ratio(self) -> float:
        return self.size_b_bytes / self.size_a_bytes if self.size_a_bytes else math.nan

    def to_dict(self) -> dict[str, Any]:
        latency = None
        if self.latency is not None:
            latency = {**self.latency.to_dict(), "significant": self.latency.significant, "batch": self.latency_batch}
        return {
            "model_a": self.model_a, "model_b": self.model_b, "providers": list(self.providers),
            "threads": self.threads, "batch_size": self.batch_size, "optimized_sessions": self.optimized_sessions,
            "data": self.data, "samples": self.samples, "synthetic": self.synthetic,
            "logits_output": self.logits_output, "agreement": self.agreement,
            "labelled_samples": self.labelled_samples, "accuracy_a": self.accuracy_a, "accuracy_b": self.accuracy_b,
            "accuracy_delta": self.accuracy_delta, "accuracy_delta_ci95": self.accuracy_delta_ci95,
            "outputs": [o.to_dict() for o in self.outputs],
            "latency": latency,
            "size_a_bytes": self.size_a_bytes, "size_b_bytes": self.size_b_bytes,
            "size_ratio": _json_float(self.size_ratio),
            "stats_a": self.stats_a.to_dict(), "stats_b": self.stats_b.to_dict(),
            "cpu": self.cpu.to_dict(), "warnings": list(self.warnings),
        }


def _json_float(value: float) -> float | None:
    """Strict JSON has no inf/NaN: they become ``null``."""
    return value if math.isfinite(value) else None


# -- running statistics -----------------------------------------------------------------------

class _ErrorStats:
    """Running sums for one output; ``problem`` is set (and metrics dropped) when it cannot be compared."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problem: str | None = None
        self.count = self.nonfinite = 0
        self.max_abs = self.sum_abs = self.dot = self.sum_aa = self.sum_bb = self.sum_err2 = 0.0

    def update(self, a: Any, b: Any) -> None:
        if self.problem is not None:
            return
        if not (_numeric(a) and _numeric(b)):
            self.problem = f"output '{self.name}' is not a numeric tensor: no error metrics"
            return
        if a.shape != b.shape:
            self.problem = f"output '{self.name}' has shape {list(a.shape)} in A but {list(b.shape)} in B: not compared"
            return
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        finite = np.isfinite(a64) & np.isfinite(b64)
        if not finite.all():
            self.nonfinite += int(finite.size - finite.sum())
            a64, b64 = a64[finite], b64[finite]
        diff = np.abs(a64 - b64)
        self.count += diff.size
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.sum_err2 += float(np.dot(diff, diff))
        self.dot += float(np.dot(a64, b64))
        self.sum_aa += float(np.dot(a64, a64))
        self.sum_bb += float(np.dot(b64, b64))

    def result(self) -> OutputError:
        if self.sum_aa == 0.0 and self.sum_bb == 0.0:
            cosine = 1.0
        else:
            norm = math.sqrt(self.sum_aa) * math.sqrt(self.sum_bb)
            cosine = self.dot / norm if norm else 0.0
        if self.sum_err2 == 0.0:
            snr = math.inf
        elif self.sum_aa == 0.0:
            snr = -math.inf
        else:
            snr = 10.0 * math.log10(self.sum_aa / self.sum_err2)
        return OutputError(self.name, self.count, self.max_abs, self.sum_abs / self.count if self.count else 0.0,
                           cosine, snr, self.nonfinite)


def _numeric(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"


class _TopOne:
    """Top-1 agreement between A and B and, with labels, the accuracy of each (paired)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problem: str | None = None
        self.samples = self.agree = self.nonfinite = 0
        self.labelled = self.correct_a = self.correct_b = self.only_a = self.only_b = 0

    def update(self, a: Any, b: Any, labels: np.ndarray | None) -> None:
        if self.problem is not None:
            return
        scores_a, scores_b = _class_scores(a), _class_scores(b)
        if scores_a is None or scores_b is None or scores_a.shape != scores_b.shape:
            shape = list(a.shape) if isinstance(a, np.ndarray) else type(a).__name__
            self.problem = f"output '{self.name}' ({shape}) is not class scores [N, C>1]"
            return
        # a row with NaN/inf has no meaningful argmax: it counts as neither agreeing nor correct
        finite = np.isfinite(scores_a).all(axis=1) & np.isfinite(scores_b).all(axis=1)
        self.nonfinite += int((~finite).sum())
        top_a, top_b = scores_a.argmax(axis=1), scores_b.argmax(axis=1)
        self.samples += top_a.size
        self.agree += int(((top_a == top_b) & finite).sum())
        if labels is None:
            return
        truth = _label_indices(labels, scores_a.shape)
        top_a, top_b = np.where(finite, top_a, -1), np.where(finite, top_b, -1)
        hit_a, hit_b = top_a == truth, top_b == truth
        self.labelled += truth.size
        self.correct_a += int(hit_a.sum())
        self.correct_b += int(hit_b.sum())
        self.only_a += int((hit_a & ~hit_b).sum())
        self.only_b += int((hit_b & ~hit_a).sum())


def _class_scores(value: Any) -> np.ndarray | None:
    """``value`` as ``[N, C]`` class scores, or ``None`` when it is not one score vector per sample."""
    if not _numeric(value) or value.ndim < 2:
        return None
    classes = [d for d in value.shape[1:] if d != 1]
    if len(classes) != 1:
        return None
    return value.reshape(value.shape[0], classes[0])


def _label_indices(labels: np.ndarray, scores_shape: tuple[int, ...]) -> np.ndarray:
    """Class indices ``[N]`` from labels given as indices ``[N]`` / ``[N, 1]`` or one-hot rows ``[N, C]``."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == scores_shape[1]:
        return labels.argmax(axis=1)
    if labels.ndim == 0 or labels.size != labels.shape[0]:
        raise DataError(f"labels of shape {list(labels.shape)}: expected class indices [N] or one-hot rows "
                        f"[N, {scores_shape[1]}]")
    flat = labels.ravel()
    if flat.dtype.kind not in "biuf" or (flat.dtype.kind == "f" and not np.all(flat == np.round(flat))):
        raise DataError(f"labels must be integer class indices or one-hot rows, got {flat.dtype} values")
    flat = flat.astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= scores_shape[1]):
        raise DataError(f"labels range over [{flat.min()}, {flat.max()}] but the model scores {scores_shape[1]} "
                        f"classes: give class indices in [0, {scores_shape[1] - 1}]")
    return flat


def accuracy_delta_interval(only_a: int, only_b: int, n: int) -> float:
    """Half-width of the 95% interval of ``acc_B − acc_A`` from ``n`` paired samples where ``only_a``
    were right only for A and ``only_b`` only for B: the Wald interval of a paired difference,
    floored at the rule-of-three bound ``3/n`` so that no discordant pairs never claims certainty."""
    if n <= 0:
        return math.nan
    delta = (only_b - only_a) / n
    variance = max((only_a + only_b) / n - delta * delta, 0.0) / n
    return min(max(1.96 * math.sqrt(variance), 3.0 / n), 1.0)


# -- models and feeds -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Model:
    proto: onnx.ModelProto
    #: what onnxruntime loads: the path when there is one (keeps external data beside it)
    target: onnx.ModelProto | str
    label: str
    size_bytes: int
    specs: list[InputSpec]


def _load(source: onnx.ModelProto | str | os.PathLike[str]) -> _Model:
    if isinstance(source, onnx.ModelProto):
        return _Model(source, source, "<ModelProto>", source.ByteSize(), input_specs(source))
    path = Path(source)
    proto = load_model(path, external_data=False)  # onnxruntime loads the weights from the path
    return _Model(proto, str(path), str(path), _file_size(path, proto), input_specs(proto))


def _file_size(path: Path, skeleton: onnx.ModelProto) -> int:
    """Bytes on disk: the model file plus its external data files (``skeleton``: loaded without them)."""
    files = {entry.value for tensor in skeleton.graph.initializer if uses_external_data(tensor)
             for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())


def _check_inputs(a: list[InputSpec], b: list[InputSpec]) -> None:
    names_a, names_b = {s.name for s in a}, {s.name for s in b}
    if names_a != names_b:
        raise DataError(f"the models have different inputs (A: {', '.join(sorted(names_a))}; "
                        f"B: {', '.join(sorted(names_b))}): they cannot be fed the same data")
    dtype_a = {s.name: s.dtype for s in a}
    for spec in b:
        if not _castable(dtype_a[spec.name], spec.dtype):
            raise DataError(f"input '{spec.name}' is {dtype_a[spec.name]} in A but {spec.dtype} in B: "
                            "only float-to-float and int-to-int inputs can be cast between the models")


def _castable(have: np.dtype, want: np.dtype) -> bool:
    return have == want or (have.kind == "f" and want.kind == "f") or (have.kind in "iu" and want.kind in "iu")


def _feeds(inputs: dict[str, np.ndarray], specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """``inputs`` cast to the dtypes of ``specs`` (a model with float16 IO gets float16)."""
    return {s.name: inputs[s.name] if inputs[s.name].dtype == s.dtype else inputs[s.name].astype(s.dtype)
            for s in specs}


def _source(data: Any, model: onnx.ModelProto) -> DataSource:
    if data is None:
        return RandomSource(input_specs(model))
    return data if isinstance(data, DataSource) else open_data(data, model)


# -- compare ----------------------------------------------------------------------------------

def check_measurement(providers: Sequence[str], threads: int | None, batch_size: int, latency_runs: int) -> None:
    """Refuse measurement settings that would fail late or measure something else than asked."""
    import onnxruntime as ort

    if threads is not None and threads < 1:
        raise DataError(f"threads={threads}: give at least 1 (None lets onnxruntime use every core, and the "
                        "report then warns that latency depends on machine load)")
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size}: give at least 1")
    if latency_runs < 0:
        raise DataError(f"latency_runs={latency_runs}: give 0 (no latency) or more")
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing or not providers:
        raise DataError(f"execution provider(s) {', '.join(missing) or '(none given)'} not available in this "
                        f"onnxruntime (available: {', '.join(available)})")


def compare(
    model_a: onnx.ModelProto | str | os.PathLike[str],
    model_b: onnx.ModelProto | str | os.PathLike[str],
    data: DataSource | Any | None,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = 1,
    batch_size: int = 32,
    latency_runs: int = 50,
    latency_batch: int = 1,
    warmup: int = 5,
    optimize: bool = True,
    progress: bool = False,
    logits_output: str | None = None,
) -> Comparison:
    """Measure B against A on ``data`` (a ``DataSource`` for A, anything ``open_data`` accepts, or
    ``None`` for seeded random inputs: latency only). Accuracy/agreement sessions use onnxruntime's
    graph optimizations when ``optimize`` (what users deploy); latency sessions always do, with
    ``threads`` intra-op threads. ``latency_runs=0`` skips latency. ``logits_output`` names the
    class-score output (default: the first)."""
    check_measurement(providers, threads, batch_size, latency_runs)
    a, b = _load(model_a), _load(model_b)
    _check_inputs(a.specs, b.specs)
    source = _source(data, a.proto)
    cmp = Comparison(
        model_a=a.label, model_b=b.label, providers=list(providers), threads=threads, batch_size=batch_size,
        optimized_sessions=optimize, data=source.description, samples=0, synthetic=source.synthetic,
        size_a_bytes=a.size_bytes, size_b_bytes=b.size_bytes, stats_a=model_stats(a.proto),
        stats_b=model_stats(b.proto), cpu=cpu_info())
    sessions = (make_session(a.target, providers=providers, threads=threads, optimize=optimize),
                make_session(b.target, providers=providers, threads=threads, optimize=optimize))
    _measure_outputs(cmp, *sessions, b.specs, source, batch_size=batch_size, progress=progress,
                     logits_output=logits_output)
    if latency_runs > 0:
        if not optimize:  # latency is always measured the way users deploy: all graph optimizations on
            sessions = (make_session(a.target, providers=providers, threads=threads, optimize=True),
                        make_session(b.target, providers=providers, threads=threads, optimize=True))
        _measure_latency(cmp, *sessions, b.specs, source, runs=latency_runs, batch=latency_batch, warmup=warmup)
    cmp.warnings.extend(claim_warnings(cmp, a.proto, b.proto))
    for warning in cmp.warnings:
        logger.debug("compare: %s", warning)
    return cmp


def _measure_outputs(cmp: Comparison, session_a: Any, session_b: Any, specs_b: list[InputSpec], source: DataSource,
                     *, batch_size: int, progress: bool, logits_output: str | None) -> None:
    names_a = [o.name for o in session_a.get_outputs()]
    names_b = {o.name for o in session_b.get_outputs()}
    common = [n for n in names_a if n in names_b]
    only = sorted(set(names_a) ^ names_b)
    if only:
        cmp.warnings.append(f"output(s) {', '.join(only)} exist in only one model: not compared")
    if logits_output is not None and logits_output not in common:
        raise OnnxoptError(f"logits output '{logits_output}' is not an output of both models "
                           f"(common outputs: {', '.join(common) or 'none'})")
    if not common:
        cmp.warnings.append("the models share no output names: no accuracy, agreement or error metrics")
        return
    errors = [_ErrorStats(n) for n in common]
    top1 = _TopOne(logits_output or common[0])
    top1_index = common.index(top1.name)
    labelled_batches = 0
    for batch in source.batches(batch_size, progress=progress, description="comparing"):
        outs_a = session_a.run(common, batch.inputs)
        outs_b = session_b.run(common, _feeds(batch.inputs, specs_b))
        cmp.samples += batch.size
        labelled_batches += batch.labels is not None
        for stats, value_a, value_b in zip(errors, outs_a, outs_b):
            stats.update(value_a, value_b)
        top1.update(outs_a[top1_index], outs_b[top1_index], batch.labels)
    cmp.outputs = [s.result() for s in errors if s.problem is None]
    cmp.warnings.extend(s.problem for s in errors if s.problem is not None)
    cmp.warnings.extend(f"output '{o.name}': {o.nonfinite} NaN/inf element(s) left out of the error metrics"
                        for o in cmp.outputs if o.nonfinite)
    if top1.problem is not None:
        if labelled_batches:
            cmp.warnings.append(f"labels given but {top1.problem}: accuracy not measured")
        return
    cmp.logits_output = top1.name
    cmp.agreement = top1.agree / top1.samples
    if top1.nonfinite:
        cmp.warnings.insert(0, f"{top1.nonfinite} of {top1.samples} sample(s) have NaN/inf class scores (e.g. float16 "
                               "overflow): they count as disagreeing and wrong")
    if top1.labelled:
        cmp.labelled_samples = top1.labelled
        cmp.accuracy_a = top1.correct_a / top1.labelled
        cmp.accuracy_b = top1.correct_b / top1.labelled
        cmp.accuracy_delta_ci95 = accuracy_delta_interval(top1.only_a, top1.only_b, top1.labelled)


def _measure_latency(cmp: Comparison, session_a: Any, session_b: Any, specs_b: list[InputSpec], source: DataSource,
                     *, runs: int, batch: int, warmup: int) -> None:
    batches = source.batches(batch)
    try:
        feeds_a = next(batches).inputs
    finally:
        batches.close()
    cmp.latency = paired_latency(session_a, feeds_a, session_b, _feeds(feeds_a, specs_b), runs=runs, warmup=warmup)
    cmp.latency_batch = int(next(iter(feeds_a.values())).shape[0]) if feeds_a else 0


# -- what the numbers can and cannot support ---------------------------------------------------

def claim_warnings(cmp: Comparison, model_a: onnx.ModelProto, model_b: onnx.ModelProto) -> list[str]:
    """Warnings for every claim the measurement in ``cmp`` cannot support."""
    out: list[str] = []
    if cmp.synthetic:
        out.append("data is synthetic (random inputs): agreement and errors describe random inputs and say "
                   "nothing about accuracy; give real data for accuracy")
    delta, half = cmp.accuracy_delta, cmp.accuracy_delta_ci95
    if delta is not None and half is not None and abs(delta) <= half:
        if delta != 0:
            out.append(f"accuracy delta {delta * 100:+.2f} pts is within its 95% interval ±{half * 100:.2f} pts "
                       f"({cmp.labelled_samples} labelled samples): not a significant difference")
        elif half > ACCURACY_RESOLUTION:
            out.append(f"only {cmp.labelled_samples} labelled samples: accuracy changes up to ±{half * 100:.2f} pts "
                       "(95%) cannot be ruled out")
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
    if cmp.latency is not None:
        lat = cmp.latency
        frozen_a, frozen_b = len(initializer_inputs(model_a)), len(initializer_inputs(model_b))
        if frozen_a > frozen_b:
            out.append(f"model A lists {frozen_a} initializer(s) as graph inputs (an IR < 4 export habit), which "
                       "stops onnxruntime from folding and fusing them (e.g. BatchNormalization into Conv); B lists "
                       f"{frozen_b}: part of the latency ratio comes from that, not from the passes alone")
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
