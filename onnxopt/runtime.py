"""onnxruntime sessions and intermediate activations, shared by the evaluator and the passes."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import onnx

from onnxopt.errors import OnnxoptError
from onnxopt.model_io import EXTERNAL_DATA_THRESHOLD, tensor_bytes

if TYPE_CHECKING:
    import onnxruntime as ort

    from onnxopt.data import DataSource

logger = logging.getLogger(__name__)

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)


def make_session(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    threads: int | None = None,
    optimize: bool = False,
    optimized_model_path: str | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session. ``optimize=False`` disables all graph optimizations (for exact
    comparisons); ``threads`` sets intra-op threads (``None``: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path is not None:
        options.optimized_model_filepath = optimized_model_path
    options.log_severity_level = 4  # fatal only: failures surface as our one-line errors, not as raw logs
    available = set(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing:
        raise OnnxoptError(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
            f"(available: {', '.join(sorted(available))})")
    try:
        if isinstance(model, onnx.ModelProto):
            if tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD:
                return _session_via_file(model, options, list(providers))
            return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
        return ort.InferenceSession(str(model), options, providers=list(providers))
    except OnnxoptError:
        raise
    except Exception as exc:  # onnxruntime's exception types are not part of its public API
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxoptError(f"onnxruntime cannot load the model: {first}") from exc


def _session_via_file(model: onnx.ModelProto, options: ort.SessionOptions, providers: list[str]):
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="onnxopt-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(str(path), options, providers=providers)


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs the tensors ``names`` (untyped outputs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    for name in names:
        if name not in existing:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    return out


def iter_activations(
    model: onnx.ModelProto,
    names: Sequence[str],
    data: DataSource,
    *,
    batch_size: int = 32,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    threads: int | None = None,
    progress: bool = False,
    description: str = "calibrating",
) -> Iterator[dict[str, np.ndarray]]:
    """Yield, batch by batch, the values of the tensors ``names`` on ``data`` (optimizations off).

    Memory does not grow with the number of samples: nothing is kept between batches.
    """
    session = make_session(with_outputs(model, names), providers=providers, threads=threads)
    wanted = list(dict.fromkeys(names))
    for batch in data.batches(batch_size, progress=progress, description=description):
        values = session.run(wanted, batch.inputs)
        yield dict(zip(wanted, values))
