"""Compare two models: accuracy, top-1 agreement, output errors, paired latency, size, and
warnings wherever the measurement cannot support the claim it seems to make (``onnxopt.claims``).

Latency is timed against A after the lossless canonical rewrites (``onnxopt.baseline``), with A,
canonical A and B interleaved in one run; the canonical gain is reported on its own.

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
from onnxopt.baseline import Baseline, canonical_baseline
from onnxopt.claims import claim_warnings
from onnxopt.hardware import CpuInfo, cpu_info
from onnxopt.latency import PairedLatency, interleaved_times, paired
from onnxopt.metrics import ErrorStats, OutputError, TopOne, accuracy_delta_interval, json_float
from onnxopt.model_io import has_external_data, load_model
from onnxopt.progress import Progress
from onnxopt.runtime import make_session
from onnxopt.stats import ModelStats, model_stats

logger = logging.getLogger(__name__)


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
    #: B against the latency baseline: A after the lossless canonical rewrites (``onnxopt.baseline``)
    latency: PairedLatency | None = None
    latency_batch: int = 0
    #: what the latency ratio is measured against ("A", or A canonical and what that changed)
    latency_baseline: str = "A"
    #: the canonical rewrites' own gain (canonical A against A, same run); ``None`` when they change nothing
    canonical_latency: PairedLatency | None = None
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
            "latency": latency, "latency_baseline": self.latency_baseline,
            "canonical_latency": None if self.canonical_latency is None else self.canonical_latency.to_dict(),
            "size_a_bytes": self.size_a_bytes, "size_b_bytes": self.size_b_bytes,
            "size_ratio": json_float(self.size_ratio),
            "stats_a": self.stats_a.to_dict(), "stats_b": self.stats_b.to_dict(),
            "cpu": self.cpu.to_dict(), "warnings": list(self.warnings),
        }


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
        # a model whose weights stay in external files is timed as it is (the rewrites would need them loaded)
        base = Baseline(a.proto) if has_external_data(a.proto) else canonical_baseline(a.proto)
        canonical = (make_session(base.model, providers=providers, threads=threads, optimize=True)
                     if base.changes else None)
        if base.problem is not None:
            cmp.warnings.append(f"latency is measured against A as it is: the canonical rewrites failed ({base.problem})")
        cmp.latency_baseline = base.description
        _measure_latency(cmp, *sessions, canonical, b.specs, source, runs=latency_runs, batch=latency_batch,
                         warmup=warmup, progress=progress)
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
    errors = [ErrorStats(n) for n in common]
    top1 = TopOne(logits_output or common[0])
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


def _measure_latency(cmp: Comparison, session_a: Any, session_b: Any, canonical: Any | None, specs_b: list[InputSpec],
                     source: DataSource, *, runs: int, batch: int, warmup: int, progress: bool) -> None:
    """B against the baseline (canonical A when it differs from A), and canonical A against A, all three
    timed in one interleaved run."""
    batches = source.batches(batch)
    try:
        feeds_a = next(batches).inputs
    finally:
        batches.close()
    timed = [(session_a, feeds_a), (session_b, _feeds(feeds_a, specs_b))]
    if canonical is not None:
        timed.append((canonical, feeds_a))
    with Progress("latency", runs, enabled=progress, unit="runs") as bar:
        times = interleaved_times(timed, runs=runs, warmup=warmup, progress=bar)
    cmp.latency = paired(times[-1] if canonical is not None else times[0], times[1], warmup)
    if canonical is not None:
        cmp.canonical_latency = paired(times[0], times[2], warmup)
    cmp.latency_batch = int(next(iter(feeds_a.values())).shape[0]) if feeds_a else 0
