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

import onnx
from google.protobuf.message import DecodeError

from onnxopt.errors import ModelLoadError, ModelSaveError

logger = logging.getLogger(__name__)

#: Tensors larger than this in total go to an external data file (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(source: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    """Load an ONNX model (with its external data) or return a copy of a given ``ModelProto``."""
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
        model = onnx.load(str(path), load_external_data=True)
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
    _validate_loaded(model, str(path))
    return model


def _validate_loaded(model: onnx.ModelProto, what: str) -> None:
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{what}: not an ONNX model (no IR version or no graph)")
    if not model.opset_import:
        raise ModelLoadError(f"{what}: not an ONNX model (no opset imports)")
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise ModelLoadError(f"{what}: invalid ONNX model ({first})") from exc


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held in the proto by the model's initializers (for the 2 GB limit), from their shapes and
    types: reading ``raw_data`` would copy it (0.1 s for a 220 MB weight). External data counts 0."""
    total = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        except (KeyError, ValueError, TypeError):  # an undefined or exotic type: measure it
            itemsize = 0
        total += math.prod(init.dims) * itemsize if itemsize and init.data_type != onnx.TensorProto.STRING \
            else init.ByteSize()
    return total


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    check_runtime: bool = True,
) -> Path:
    """Validate ``model`` and write it atomically to ``path``.

    Refuses (``ModelSaveError``, nothing written) when ``path`` is the input model, when the
    model fails the full ``onnx.checker`` check, or when onnxruntime cannot create a session.
    """
    dest = Path(path).resolve()
    if input_path is not None and _same_file(dest, Path(input_path)):
        raise ModelSaveError(f"{dest}: refusing to overwrite the input model; choose another -o path")
    _check_destination(dest, "a file name ending in .onnx")

    external = tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
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
            _check_loads_in_onnxruntime(tmp_model, dest)
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


def _check_loads_in_onnxruntime(tmp_model: Path, dest: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # the failure becomes our one-line error
    try:
        ort.InferenceSession(str(tmp_model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
        raise ModelSaveError(
            f"refusing to write {dest}: onnxruntime cannot load the model ({_first_line(exc)})"
        ) from exc


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
