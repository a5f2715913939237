"""File-format data sources: ``.npz``, ``.npy`` files and folders, ``test_data_set_*`` TensorProto folders.

Formats (every array has the batch axis first unless said otherwise):

- ``data.npz``: one array per input name ``[samples, ...]``, optional ``label``/``labels``; other
  arrays (file names, captions...) are ignored and named in the source's description.
- ``data.npy``: one array ``[samples, ...]`` for a single-input model (memory-mapped).
- a folder of ``<input>.npy`` files, one per input name, each ``[samples, ...]``, optional
  ``label.npy``; memory-mapped, so samples are read from disk batch by batch.
- a folder of per-sample ``.npy`` files for a single-input model, read in order of file name
  (zero-pad numbers: ``0002.npy`` before ``0010.npy``). Each file is ONE sample, stored with or
  without a leading batch axis of 1; an optional ``label.npy`` holds one label per sample file.
- ONNX model-zoo / onnxruntime test folders: ``test_data_set_<k>/input_<i>.pb`` TensorProto files
  (each file a whole input, batch axis included). An input is matched by the tensor's name, or
  by position ``i`` in the model's inputs when the tensor has no name. ``output_*.pb`` files are
  ignored. The path may be the folder holding the ``test_data_set_*`` folders or one of them.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from onnxopt.data_source import LABEL_KEYS, Batch, DataSource, InputSpec
from onnxopt.errors import DataError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from onnxopt.images import ImagePreprocess


def _load_npy(path: Path, *, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc})") from exc


def _single_input(specs: list[InputSpec], what: str) -> InputSpec:
    if len(specs) != 1:
        raise DataError(f"{what} feeds single-input models; this model has inputs "
                        f"{', '.join(s.name for s in specs)} (use one <input>.npy file per input)")
    return specs[0]


class NpzSource(DataSource):
    """A ``.npz`` file keyed by input names, each array ``[samples, ...]``; optional ``label``.
    Arrays that are neither are ignored (``ignored``), and the description names them."""

    def __init__(self, path: Path, specs: list[InputSpec]) -> None:
        super().__init__(specs)
        self.path = path
        names = {s.name for s in specs}
        with self._open() as npz:
            self._keys = [k for k in npz.files if k in names or k in LABEL_KEYS]
            self.ignored = [k for k in npz.files if k not in self._keys]
            missing = sorted(names - set(self._keys))
            if missing:
                raise DataError(f"{path}: missing input(s) {', '.join(missing)}: name each array after a model input "
                                f"({', '.join(sorted(names))}); the .npz holds {', '.join(npz.files) or 'no arrays'}")
            shapes = {k: _npz_shape(npz, k) for k in self._keys if k not in LABEL_KEYS}
            if not shapes:
                raise DataError(f"{path}: the model has no inputs to feed")
            # scalar (rank-0) arrays feed scalar inputs; the others carry the samples
            first, shape = next(((k, v) for k, v in shapes.items() if v), next(iter(shapes.items())))
            self._n = shape[0] if shape else 1
        if self._n == 0:
            raise DataError(f"{path}: the data set is empty (array '{first}' has 0 samples)")
        ignored = f"; ignored arrays {', '.join(self.ignored)}" if self.ignored else ""
        self.description = f"{path.name} ({self._n} samples, npz{ignored})"
        if self.ignored:
            logger.info("%s: ignoring array(s) %s (neither an input nor labels)", path, ", ".join(self.ignored))

    def _open(self) -> np.lib.npyio.NpzFile:
        try:
            npz = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{self.path}: not a readable .npz file ({exc})") from exc
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{self.path}: not an .npz archive (it holds a single array; name it .npy)")
        return npz

    @property
    def num_samples(self) -> int:
        return self._n

    @property
    def has_labels(self) -> bool:
        return any(k in LABEL_KEYS for k in self._keys)

    def _chunks(self) -> Iterator[Batch]:
        with self._open() as npz:
            try:
                inputs = {k: npz[k] for k in self._keys if k not in LABEL_KEYS}
                label_key = next((k for k in self._keys if k in LABEL_KEYS), None)
                labels = npz[label_key] if label_key else None
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise DataError(f"{self.path}: cannot read the arrays ({exc})") from exc
        yield Batch(inputs, labels)


def _npz_shape(npz: np.lib.npyio.NpzFile, key: str) -> tuple[int, ...]:
    """The shape of one array, from its header only (the data is not read)."""
    try:
        with npz.zip.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return tuple(read(member)[0])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{npz.zip.filename}: cannot read array '{key}' ({exc})") from exc


class NpyArraysSource(DataSource):
    """Whole-input ``.npy`` files ``[samples, ...]``, memory-mapped: batches are read lazily."""

    def __init__(self, files: dict[str, Path], label_file: Path | None, specs: list[InputSpec], name: str) -> None:
        super().__init__(specs)
        self.files = files
        self.label_file = label_file
        shapes = {k: _load_npy(p, mmap=True).shape for k, p in files.items()}
        first = next(iter(files))
        self._n = shapes[first][0] if shapes[first] else 1
        if self._n == 0:
            raise DataError(f"{files[first]}: the data set is empty (0 samples)")
        self.description = f"{name} ({self._n} samples, npy)"

    @property
    def num_samples(self) -> int:
        return self._n

    @property
    def has_labels(self) -> bool:
        return self.label_file is not None

    def _chunks(self) -> Iterator[Batch]:
        inputs = {k: _load_npy(p, mmap=True) for k, p in self.files.items()}
        labels = None if self.label_file is None else _load_npy(self.label_file, mmap=True)
        yield Batch(inputs, labels)


class NpySamplesSource(DataSource):
    """One ``.npy`` file per sample for a single-input model, with or without a batch axis of 1."""

    def __init__(self, files: list[Path], label_file: Path | None, specs: list[InputSpec], name: str) -> None:
        super().__init__(specs)
        self.spec = _single_input(specs, "a folder of per-sample .npy files")
        self.files = files
        self.labels = None if label_file is None else np.atleast_1d(_load_npy(label_file, mmap=False))
        if self.labels is not None and len(self.labels) != len(files):
            raise DataError(f"{label_file}: {len(self.labels)} labels for {len(files)} sample files")
        self.description = f"{name} ({len(files)} samples, one .npy per sample)"

    @property
    def num_samples(self) -> int:
        return len(self.files)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def _chunks(self) -> Iterator[Batch]:
        rank = len(self.spec.shape)
        for i, path in enumerate(self.files):
            arr = _load_npy(path, mmap=False)
            if not rank or arr.ndim == rank - 1:
                arr = arr[np.newaxis]
            elif arr.ndim != rank or arr.shape[0] != 1:
                raise DataError(f"{path}: shape {list(arr.shape)} is not one sample of input '{self.spec.name}' "
                                f"(rank {rank - 1}, or rank {rank} with a batch axis of 1)")
            yield Batch({self.spec.name: arr}, None if self.labels is None else self.labels[i:i + 1])


def _index(path: Path) -> tuple[int, str]:
    """Sort key: the number at the end of the name, then the name (``_10`` after ``_9``)."""
    match = re.search(r"(\d+)$", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


class TensorProtoSource(DataSource):
    """``test_data_set_*/input_*.pb`` folders: one chunk per data set."""

    def __init__(self, sets: list[Path], specs: list[InputSpec], name: str) -> None:
        super().__init__(specs)
        self.sets = sets
        for folder in sets:
            if not any(folder.glob("input_*.pb")):
                raise DataError(f"{folder}: no input_*.pb files in this test data set")
        self.description = f"{name} ({len(sets)} test data set(s), TensorProto)"

    def _chunks(self) -> Iterator[Batch]:
        for folder in self.sets:
            inputs: dict[str, np.ndarray] = {}
            for path in sorted(folder.glob("input_*.pb"), key=_index):
                position = _index(path)[0]
                tensor = _read_tensor(path)
                if tensor.name:
                    name = tensor.name
                elif 0 <= position < len(self.specs):
                    name = self.specs[position].name
                else:
                    raise DataError(f"{path}: unnamed tensor at position {position}, but the model has "
                                    f"{len(self.specs)} input(s)")
                if name in inputs:
                    raise DataError(f"{path}: input '{name}' is given twice in {folder.name}")
                inputs[name] = numpy_helper.to_array(tensor, base_dir=str(folder))
            yield Batch(inputs)


def _read_tensor(path: Path) -> onnx.TensorProto:
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise DataError(f"{path}: not a readable TensorProto file ({exc})") from exc
    if tensor.data_type == onnx.TensorProto.UNDEFINED:
        raise DataError(f"{path}: not a TensorProto file (no element type)")
    return tensor


# -- openers: each returns a source, or None when the path is not its format -----------------

def _no_preprocess(path: Path, preprocess: ImagePreprocess | None, what: str) -> None:
    if preprocess is not None:
        raise DataError(f"{path}: image preprocessing applies to image folders only, this is {what}")


def open_npz(path: Path, specs: list[InputSpec], preprocess: ImagePreprocess | None) -> DataSource | None:
    if not (path.is_file() and path.suffix == ".npz"):
        return None
    _no_preprocess(path, preprocess, "an .npz file")
    return NpzSource(path, specs)


def open_npy(path: Path, specs: list[InputSpec], preprocess: ImagePreprocess | None) -> DataSource | None:
    if not (path.is_file() and path.suffix == ".npy"):
        return None
    _no_preprocess(path, preprocess, "an .npy file")
    spec = _single_input(specs, "a single .npy file")
    return NpyArraysSource({spec.name: path}, None, specs, path.name)


def open_npy_folder(path: Path, specs: list[InputSpec], preprocess: ImagePreprocess | None) -> DataSource | None:
    if not path.is_dir():
        return None
    files = sorted(p for p in path.glob("*.npy") if p.is_file() and not p.name.startswith("."))
    if not files:
        return None
    _no_preprocess(path, preprocess, "a folder of .npy files")
    label_file = next((p for p in files if p.stem in LABEL_KEYS), None)
    data = [p for p in files if p.stem not in LABEL_KEYS]
    if not data:
        raise DataError(f"{path}: the folder holds only {label_file.name if label_file else 'labels'}, no input data")
    names = {s.name for s in specs}
    if {p.stem for p in data} <= names:
        return NpyArraysSource({p.stem: p for p in data}, label_file, specs, path.name)
    if len(specs) != 1:
        raise DataError(f"{path}: files {', '.join(p.name for p in data[:3])} do not match the model's inputs "
                        f"{', '.join(sorted(names))}; name them <input>.npy "
                        "(per-sample files need a single-input model)")
    return NpySamplesSource(data, label_file, specs, path.name)


def open_test_data_sets(path: Path, specs: list[InputSpec], preprocess: ImagePreprocess | None) -> DataSource | None:
    if not path.is_dir():
        return None
    sets = [path] if any(path.glob("input_*.pb")) else sorted(
        (p for p in path.glob("test_data_set_*") if p.is_dir()), key=_index)
    if not sets:
        return None
    _no_preprocess(path, preprocess, "a folder of test data sets")
    return TensorProtoSource(sets, specs, path.name)
