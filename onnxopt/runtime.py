"""onnxruntime sessions and intermediate activations, shared by the evaluator and the passes."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import OnnxoptError
from onnxopt.graph import constant_bytes, subgraph_protos, weights_detached
from onnxopt.model_io import oversized, tensor_bytes

if TYPE_CHECKING:
    import onnxruntime as ort

    from onnxopt.data_source import Batch

logger = logging.getLogger(__name__)


class BatchStream(Protocol):
    """What ``iter_activations`` reads: batches as ``onnxopt.data.DataSource.batches`` yields them
    (a data source, or a view of one such as the int8 pass's sample limit)."""

    def batches(self, batch_size: int = 32, *, progress: bool = False, description: str = "") -> Iterator[Batch]: ...

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
#: above this much weight data, optimized activation sessions skip onnxruntime's NCHWc transform:
#: it makes small convolutional models ~2x faster, but on ResNet-50 (100 MB) it raised the peak
#: from 557 to 785 MB for a run only 8% faster than without it
NCHWC_MAX_WEIGHT_BYTES = 64 << 20


def make_session(
    model: gs.Graph | onnx.ModelProto | bytes | str | os.PathLike[str],
    *,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    threads: int | None = None,
    optimize: bool = False,
    optimized_model_path: str | None = None,
    outputs: Sequence[str] = (),
    disabled_optimizers: Sequence[str] = (),
) -> ort.InferenceSession:
    """An onnxruntime session of a working graph, a ``ModelProto``, a serialized model or a file.
    ``optimize=False`` disables all graph optimizations (for exact comparisons); ``threads`` sets
    intra-op threads (``None``: onnxruntime's default); ``outputs`` names intermediate tensors to
    expose as extra (untyped) outputs of a graph or ``ModelProto``: they are appended for the
    session's creation and removed again, so a large model is not copied; ``disabled_optimizers``
    names onnxruntime graph transformers to skip (with ``optimize``).

    A graph's weights are not serialized: onnxruntime takes them from the graph's own arrays (see
    ``_graph_session``), which saves an export, a serialization and a parse of every weight."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path is not None:  # for its graph: initializers go to a side file, unread by onnx.load
        options.optimized_model_filepath = optimized_model_path
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         Path(optimized_model_path).name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.log_severity_level = 4  # fatal only: failures surface as our one-line errors, not as raw logs
    available = set(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing:
        raise OnnxoptError(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
            f"(available: {', '.join(sorted(available))})")
    if outputs and isinstance(model, (bytes, str, os.PathLike)):
        raise TypeError("make_session: extra outputs need a graph or ModelProto, not a path or bytes")
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    try:
        if not isinstance(model, (onnx.ModelProto, bytes, str, os.PathLike)):
            return _graph_session(model, outputs, options, list(providers), extra)
        if isinstance(model, onnx.ModelProto):
            with _outputs_added(model, outputs):
                if oversized(model):
                    return _session_via_file(model, options, list(providers), extra)
                return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers), **extra)
        source = model if isinstance(model, bytes) else str(model)
        return ort.InferenceSession(source, options, providers=list(providers), **extra)
    except OnnxoptError:
        raise
    except Exception as exc:  # onnxruntime's exception types are not part of its public API
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxoptError(f"onnxruntime cannot load the model: {first}") from exc


#: where a weight handed to onnxruntime from memory claims to live (onnxruntime never opens it)
IN_MEMORY_LOCATION = "onnxopt-in-memory"


def _graph_session(graph: gs.Graph, outputs: Sequence[str], options: ort.SessionOptions, providers: list[str],
                   extra: dict[str, Any]) -> ort.InferenceSession:
    """A session of ``graph`` exported without its weights: each detached weight is an initializer
    declared as external data whose bytes onnxruntime takes from the graph's own array
    (``add_external_initializers``; onnxruntime 1.32 copies them into its own buffers, nothing else
    holds a copy). The model has no protobuf size limit then, and the session keeps the arrays alive."""
    import onnxruntime as ort

    with weights_detached(graph) as weights:
        model = gs.export_onnx(graph, do_type_check=False)
        arrays = [np.ascontiguousarray(tensor.values) for tensor in weights.values()]
    model.ir_version = max(model.ir_version, 4)
    declared = []
    for value_info in model.graph.input:
        if value_info.name not in weights:
            declared.append(value_info)
            continue
        tensor_type = value_info.type.tensor_type
        initializer = model.graph.initializer.add(
            name=value_info.name, data_type=tensor_type.elem_type, dims=[d.dim_value for d in tensor_type.shape.dim],
            data_location=onnx.TensorProto.EXTERNAL)
        initializer.external_data.add(key="location", value=IN_MEMORY_LOCATION)
    del model.graph.input[:]
    model.graph.input.extend(declared)
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    if weights:
        options.add_external_initializers(list(weights), values)
    with _outputs_added(model, outputs):
        image = model.SerializeToString()
    session = ort.InferenceSession(image, options, providers=providers, **extra)
    session._onnxopt_weights = values  # an onnxruntime that reads these arrays in place needs them alive
    return session


@contextlib.contextmanager
def _outputs_added(model: onnx.ModelProto, names: Sequence[str]) -> Iterator[None]:
    """``names`` appended to the graph outputs (those not there yet) for the ``with`` block."""
    existing = {o.name for o in model.graph.output}
    added = [name for name in dict.fromkeys(names) if name not in existing]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in added)
    try:
        yield
    finally:
        if added:
            del model.graph.output[-len(added):]


def _session_via_file(model: onnx.ModelProto, options: ort.SessionOptions, providers: list[str],
                      extra: dict[str, Any]):
    import onnxruntime as ort

    from onnx.external_data_helper import load_external_data_for_tensor

    external = onnx.TensorProto.EXTERNAL
    before = [(t.data_location == external, t.HasField("data_location")) for t in _all_tensors(model)]
    with tempfile.TemporaryDirectory(prefix="onnxopt-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            try:  # saving with external data moves the caller's weights out of the proto into the file
                onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
            except OSError as exc:
                raise OnnxoptError(f"cannot write the temporary copy onnxruntime loads models over ~1.8 GB from "
                                   f"({tmp}): {exc}; free space there or set TMPDIR") from exc
            return ort.InferenceSession(str(path), options, providers=providers, **extra)
        finally:  # put them back, also after a failed (partial) save
            for tensor, (was_external, declared) in zip(_all_tensors(model), before):
                if was_external or tensor.data_location != external:
                    continue
                if not tensor.HasField("raw_data"):  # written to the file: read it back
                    load_external_data_for_tensor(tensor, tmp)
                del tensor.external_data[:]
                if declared:
                    tensor.data_location = onnx.TensorProto.DEFAULT
                else:
                    tensor.ClearField("data_location")


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes, subgraphs included (what external data can hold)."""
    for g in [model.graph, *subgraph_protos(model.graph)]:
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def run_error(model: gs.Graph | onnx.ModelProto | str | os.PathLike[str], inputs: dict[str, np.ndarray], *,
              providers: Sequence[str] = DEFAULT_PROVIDERS) -> str | None:
    """Why one run of ``model`` on ``inputs`` fails (session creation included), else ``None``: a
    kernel can load and still refuse its types when it runs (a float16 ScatterND with a reduction)."""
    try:
        session = make_session(model, providers=providers)
        wanted = {i.name for i in session.get_inputs()}
        session.run(None, {k: v for k, v in inputs.items() if k in wanted})
    except OnnxoptError as exc:
        return str(exc)
    except Exception as exc:  # onnxruntime's exception types are not part of its public API
        text = str(exc).strip().splitlines()
        return text[0] if text else type(exc).__name__
    return None


def iter_activations(
    model: gs.Graph | onnx.ModelProto,
    names: Sequence[str],
    data: BatchStream,
    *,
    batch_size: int = 32,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    threads: int | None = None,
    progress: bool = False,
    description: str = "calibrating",
    optimize: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield, batch by batch, the values of the tensors ``names`` of a graph or proto on ``data``.
    ``optimize`` turns onnxruntime's graph optimizations on: the requested tensors stay (they are
    graph outputs) and their values may differ by float rounding. Models with over
    ``NCHWC_MAX_WEIGHT_BYTES`` of weights skip the NCHWc layout transform, which holds a reordered
    copy of every Conv weight.

    Memory does not grow with the number of samples: nothing is kept between batches.
    """
    size = tensor_bytes(model) if isinstance(model, onnx.ModelProto) else constant_bytes(model)
    skip = ("NchwcTransformer",) if optimize and size > NCHWC_MAX_WEIGHT_BYTES else ()
    session = make_session(model, providers=providers, threads=threads, optimize=optimize, disabled_optimizers=skip,
                           outputs=names)
    wanted = list(dict.fromkeys(names))
    for batch in data.batches(batch_size, progress=progress, description=description):
        values = session.run(wanted, batch.inputs)
        yield dict(zip(wanted, values))
