"""The Python API: ``optimize`` a model with a list of passes and measure what changed."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import onnx

from onnxopt.claims import calibration_warning
from onnxopt.data import DEFAULT_DYNAMIC_DIM, DataSource, RandomSource, input_specs, open_data, sample_shapes
from onnxopt.errors import DataError, ModelRunError, ModelSaveError
from onnxopt.evaluate import Comparison, check_measurement, compare
from onnxopt.graph import initializer_inputs
from onnxopt.model_io import has_external_data, load_model, save_model
from onnxopt.pass_base import Pass, PassContext, PassReport
from onnxopt.pipeline import Pipeline
from onnxopt.runtime import run_error
from onnxopt.registry import Registry, default_registry
from onnxopt.stats import ModelStats, model_stats

logger = logging.getLogger(__name__)


@dataclass
class OptimizeReport:
    """What ``optimize`` did and measured."""

    source: str
    output: str | None
    passes: list[PassReport]
    before: ModelStats
    after: ModelStats
    calibration: str | None = None
    comparison: Any = None  # onnxopt.evaluate.Comparison when evaluation data was given
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "calibration": self.calibration,
            "passes": [r.to_dict() for r in self.passes],
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "comparison": None if self.comparison is None else self.comparison.to_dict(),
            "warnings": list(self.warnings),
        }


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: OptimizeReport


def optimize(
    model: str | os.PathLike[str] | onnx.ModelProto,
    passes: Sequence[str | Pass],
    *,
    calibration: Any = None,
    evaluation: Any = None,
    output: str | os.PathLike[str] | None = None,
    seed: int = 0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = 1,
    batch_size: int = 32,
    latency_runs: int = 50,
    progress: bool = False,
    registry: Registry | None = None,
    data_options: dict[str, Any] | None = None,
) -> OptimizeResult:
    """Load ``model``, run ``passes`` (specs like ``"int8:method=entropy"`` or ``Pass`` objects),
    optionally save to ``output`` (atomically, never over the input) and compare the result with
    the original on ``evaluation`` data (anything ``onnxopt.data.open_data`` accepts, or
    ``"random"`` for a latency-only comparison).
    """
    registry = registry or default_registry()
    if not passes:
        from onnxopt.errors import UnknownPassError

        raise UnknownPassError(f"no passes given; choose from: {', '.join(registry.names())}")
    pass_objs = [registry.create(p) for p in passes]
    # a file's external data stays on disk for everything but the passes, which get the only full copy
    original = load_model(model, external_data=False)
    external = has_external_data(original)
    source = str(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>"
    options = data_options or {}
    calib: DataSource | None = None
    if calibration is not None:
        calib = open_data(calibration, original, seed=seed, **options)
    data: DataSource | None = None
    if evaluation is not None:  # random data takes dynamic sizes from the calibration data when there is some
        observed = sample_shapes(calib) if calib is not None else None
        data = open_data(evaluation, original, seed=seed, observed=observed, **options)
    for source_ in (calib, data):  # bad data must fail before anything is computed or written
        if source_ is not None:
            source_.check()
    if data is not None:
        check_measurement(providers, threads, batch_size, latency_runs)
    # ``threads`` sets the measurement's intra-op threads (1: stable timings); the passes' own onnxruntime
    # work (calibration, constant folding) uses onnxruntime's default and finishes sooner
    ctx = PassContext(calibration=calib, seed=seed, providers=tuple(providers), progress=progress)
    result = Pipeline(pass_objs).run(load_model(model) if external else original, ctx)
    report = OptimizeReport(
        source=source, output=None, passes=[*result.prelude, *result.reports],
        before=model_stats(original), after=model_stats(result.model),
        calibration=None if calib is None else "; ".join(filter(None, [calib.description, calib.feed_note()])),
    )
    report.warnings.extend(_input_warnings(original, calib, calibration, evaluation))
    if output is None:
        report.warnings.extend(check_runs(model if external else original, calib, providers, options,
                                          lambda feed: run_error(result.model, feed, providers=providers)))
    if data is not None:  # measured before writing: a failed measurement leaves nothing behind
        report.comparison = _compare(
            model if isinstance(model, onnx.ModelProto) else Path(model), result.model, data, report.warnings,
            providers=providers, threads=threads, batch_size=batch_size, latency_runs=latency_runs, progress=progress)
    if output is not None:  # the run check on the written file (never a > 2 GB serialisation)
        input_path = None if isinstance(model, onnx.ModelProto) else Path(model)
        saved: list[Path] = []

        def save(feed: dict[str, Any] | None) -> str | None:
            try:
                saved.append(save_model(result.model, output, input_path=input_path, feed=feed, providers=providers,
                                        external_data=external or None))
            except ModelRunError as exc:
                return exc.detail
            return None

        report.warnings.extend(check_runs(model if external else original, calib, providers, options, save))
        report.output = str(saved[0] if saved else save_model(result.model, output, input_path=input_path,
                                                              external_data=external or None))
    if report.comparison is not None:
        report.comparison.model_a = f"{source} (original)"
        report.comparison.model_b = f"{report.output} (optimized)" if report.output else "optimized model (not saved)"
    return OptimizeResult(result.model, report)


def _compare(original: onnx.ModelProto | Path, optimized: onnx.ModelProto, data: DataSource, warnings: list[str],
             **kwargs: Any) -> Comparison | None:
    """The comparison on ``data``. On random data (the default, which only measures latency and
    structure) a failure is a warning, not a reason to withhold a model that passed its checks."""
    if isinstance(data, RandomSource) and data.assumed:
        warnings.append(f"random data: {', '.join(data.assumed)} sized {DEFAULT_DYNAMIC_DIM} by default; give "
                        "--dim NAME=N (dim_values) or calibration data to measure at the size you deploy")
    try:
        return compare(original, optimized, data, **kwargs)
    except Exception as exc:  # onnxruntime's run errors have no public type; the message is kept whole
        if not data.synthetic:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.append(f"the default comparison on random inputs could not run ({first}): no latency or agreement "
                        "measured; give evaluation data (--eval) or dynamic sizes (--dim NAME=N)")
        logger.info("comparison skipped", exc_info=True)
        return None


def check_runs(original: onnx.ModelProto | str | os.PathLike[str], calib: DataSource | None,
               providers: Sequence[str], options: dict[str, Any],
               run_optimized: Callable[[dict[str, Any] | None], str | None]) -> list[str]:
    """Run the optimized model once before accepting it (``run_optimized(feed)`` says why it fails, else
    ``None``), on the first calibration batch, else on random inputs shaped as the comparison's; a
    failure is refused like a load failure (``ModelSaveError``) unless the original fails on the same
    inputs (then the run proves nothing: a warning says so). Without any feed, ``run_optimized(None)``."""
    try:
        data = calib if calib is not None else RandomSource(
            input_specs(original if isinstance(original, onnx.ModelProto) else load_model(original, external_data=False)),
            1, 0, options.get("dim_values"))
        batch = next(data.batches(1))
    except DataError as exc:
        run_optimized(None)
        return [f"the optimized model was not run before it was accepted: {exc}"]
    error = run_optimized(batch.inputs)
    if error is None:
        return []
    if run_error(original, batch.inputs, providers=providers) is not None:
        return [f"the run check proves nothing: the original model fails on {data.description} too"]
    raise ModelSaveError(f"refusing the optimized model: it loads but fails at run time on {data.description} "
                         f"({error})")


def _input_warnings(model: onnx.ModelProto, calib: DataSource | None, calibration: Any, evaluation: Any) -> list[str]:
    """What the user should know about their inputs before trusting the report."""
    out = []
    overridable = initializer_inputs(model)
    if overridable:
        shown = ", ".join(overridable[:3]) + (", ..." if len(overridable) > 3 else "")
        out.append(f"the model lists {len(overridable)} initializer(s) as graph inputs ({shown}): onnxopt treats "
                   "them as constants, so the optimized model no longer accepts them as inputs")
    if calib is not None and calib.synthetic:
        out.append("calibration used random data: quantization ranges and recovery do not reflect real inputs")
    elif calib is not None:
        samples = calib.num_samples if calib.num_samples is not None else sum(b.size for b in calib.batches())
        out.extend(filter(None, [calibration_warning(samples)]))
    if _same_data(calibration, evaluation):
        out.append("the evaluation data is the calibration data: accuracy is measured in-sample and overstates "
                   "what unseen inputs get; evaluate on held-out samples")
    return out


def _same_data(a: Any, b: Any) -> bool:
    if not isinstance(a, (str, os.PathLike)) or not isinstance(b, (str, os.PathLike)):
        return a is not None and a is b
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
