"""Loading and saving models safely.

Loading accepts a path or a ``ModelProto``. Saving never overwrites the input model, writes to a
temporary file in the destination folder and renames it into place only after the model passed
``onnx.checker`` (full check) and loaded in an onnxruntime session, so a crash or a refusal never
leaves a half-written or invalid file behind. Models whose tensors exceed protobuf's 2 GB limit
are written with external data automatically.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxopt.errors import ModelLoadError, ModelRunError, ModelSaveError

logger = logging.getLogger(__name__)

#: Tensors larger than this in total go to an external data file (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(source: str | os.PathLike[str] | onnx.ModelProto, *, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (with its external data) or return a copy of a given ``ModelProto``.

    A file is checked by path, so a model over protobuf's 2 GB limit is never serialised.
    ``external_data=False`` leaves external tensors on disk (their data is not read): enough for input
    specs, statistics and structure, when onnxruntime loads the model from its path."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        _validate_loaded(model, "the given ModelProto")
        return model
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
        _validate_loaded(model, str(path), path)
        if external_data:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except DecodeError as exc:
        raise ModelLoadError(f"{path}: not an ONNX model (protobuf decode failed: {exc})") from exc
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"{path}: external data file missing ({exc.filename}); keep it beside the model"
        ) from exc
    except onnx.checker.ValidationError as exc:  # raised for missing/unsafe external data files
        raise ModelLoadError(f"{path}: external data cannot be read ({_first_line(exc)})") from exc
    except (OSError, ValueError, RuntimeError) as exc:  # truncated files, bad external data
        raise ModelLoadError(f"{path}: cannot be read as ONNX ({exc})") from exc
    return model


def _validate_loaded(model: onnx.ModelProto, what: str, path: Path | None = None) -> None:
    """The basic checks, and ``onnx.checker`` on ``path`` when given (external data stays on disk),
    else on the model, with its large weights left out of the check (``skeleton``)."""
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{what}: not an ONNX model (no IR version or no graph)")
    if not model.opset_import:
        raise ModelLoadError(f"{what}: not an ONNX model (no opset imports)")
    try:
        if path is not None:
            onnx.checker.check_model(str(path), full_check=False)
        else:
            onnx.checker.check_model(skeleton(model) if oversized(model) else model, full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise ModelLoadError(f"{what}: invalid ONNX model ({first})") from exc


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without its large weights, for the checker and shape inference: each main-graph
    initializer over 4 KB becomes a graph input of the same name, type and shape (the model then
    serialises far below protobuf's 2 GB limit); the weights are not copied."""
    graph = model.graph
    small = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL or _proto_bytes(t) <= 4096]
    large = [t for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL and _proto_bytes(t) > 4096]
    inputs = list(graph.input) + [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large
                                  if t.name not in {i.name for i in graph.input}]
    out_graph = onnx.helper.make_graph(list(graph.node), graph.name, inputs, list(graph.output), small,
                                       value_info=list(graph.value_info), sparse_initializer=list(graph.sparse_initializer))
    out = onnx.helper.make_model(out_graph, opset_imports=list(model.opset_import), functions=list(model.functions))
    out.ir_version = max(model.ir_version, 4)  # IR < 4 types initializers through graph inputs
    return out


def _proto_bytes(tensor: onnx.TensorProto) -> int:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return tensor.ByteSize()
    return math.prod(tensor.dims) * itemsize if tensor.data_type != onnx.TensorProto.STRING else tensor.ByteSize()


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held in the proto by the model's initializers (for the 2 GB limit), from their shapes and
    types: reading ``raw_data`` would copy it (0.1 s for a 220 MB weight). External data counts 0."""
    return sum(_proto_bytes(t) for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL)


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any main-graph initializer of ``model`` lives in an external data file."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def oversized(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s weights held in the proto exceed ``EXTERNAL_DATA_THRESHOLD``: it is then
    written with external data and checked without its weights (protobuf's hard limit is 2 GiB)."""
    return tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    check_runtime: bool = True,
    feed: dict[str, np.ndarray] | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    external_data: bool | None = None,
) -> Path:
    """Validate ``model`` and write it atomically to ``path``.

    Refuses (``ModelSaveError``, nothing written) when ``path`` is the input model, when the
    model fails the full ``onnx.checker`` check, or when onnxruntime cannot create a session on
    ``providers``; with a ``feed``, also when one run on it fails (``ModelRunError``). Both are
    checked on the written file, so a model over 2 GB is never serialised in one piece.

    Weights go to ``<name>.data`` beside the model when ``external_data`` (default: when
    ``oversized``); ``model``'s tensors then refer to that file instead of holding the bytes (as
    ``onnx.save_model`` leaves them: ``onnx.load_external_data_for_model(model, folder)`` reads them back).
    """
    dest = Path(path).resolve()
    if input_path is not None and _same_file(dest, Path(input_path)):
        raise ModelSaveError(f"{dest}: refusing to overwrite the input model; choose another -o path")
    _check_destination(dest, "a file name ending in .onnx")

    external = oversized(model) if external_data is None else external_data
    data_name = dest.name + ".data"
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".onnxopt-") as tmp:
        tmp_model = Path(tmp) / dest.name
        try:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=external,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        except (OSError, ValueError) as exc:
            raise ModelSaveError(f"{dest}: cannot serialise the model ({exc})") from exc
        try:
            onnx.checker.check_model(str(tmp_model), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ModelSaveError(f"refusing to write {dest}: the model fails onnx.checker ({_first_line(exc)})") from exc
        except onnx.shape_inference.InferenceError as exc:
            raise ModelSaveError(f"refusing to write {dest}: shape inference fails ({_first_line(exc)})") from exc
        if check_runtime:
            _check_loads_in_onnxruntime(tmp_model, dest, feed, providers)
        if external:
            os.replace(Path(tmp) / data_name, dest.parent / data_name)
        os.replace(tmp_model, dest)
    logger.info("wrote %s%s", dest, " (+ external data)" if external else "")
    return dest


def save_text(text: str, path: str | os.PathLike[str], *, protected: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Write ``text`` atomically to ``path`` (a report), refusing to replace any of ``protected``
    (the input and output models)."""
    dest = Path(path).resolve()
    for other in protected:
        if _same_file(dest, Path(other)):
            raise ModelSaveError(f"{dest}: refusing to write the report over a model; choose another --report path")
    _check_destination(dest, "a file name for the report")
    with tempfile.NamedTemporaryFile("w", dir=dest.parent, prefix=".onnxopt-", suffix=".tmp", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, dest)
    return dest


def _check_destination(dest: Path, what: str) -> None:
    """Refuse a destination that is not a (possibly new) regular file in an existing folder."""
    if dest.is_dir():
        raise ModelSaveError(f"{dest}: is a directory; give {what}")
    if dest.exists() and not dest.is_file():
        raise ModelSaveError(f"{dest}: exists and is not a regular file (a device, pipe or socket); give {what}")
    if not dest.parent.is_dir():
        raise ModelSaveError(f"{dest.parent}: output folder does not exist")


def _check_loads_in_onnxruntime(tmp_model: Path, dest: Path, feed: dict[str, np.ndarray] | None,
                                providers: Sequence[str]) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # the failure becomes our one-line error
    try:
        session = ort.InferenceSession(str(tmp_model), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
        raise ModelSaveError(
            f"refusing to write {dest}: onnxruntime cannot load the model ({_first_line(exc)})"
        ) from exc
    if feed is None:
        return
    try:
        wanted = {i.name for i in session.get_inputs()}
        session.run(None, {k: v for k, v in feed.items() if k in wanted})
    except Exception as exc:  # noqa: BLE001 - as above
        raise ModelRunError(f"refusing to write {dest}: the model loads but fails at run time ({_first_line(exc)})",
                            _first_line(exc)) from exc


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
