"""Data sources for calibration and evaluation, streamed in batches and validated against the model.

``open_data(source, model)`` accepts a ``DataSource``; ``"random"`` / ``"random:N"``; a path to an
``.npz`` / ``.npy`` file, a folder of ``.npy`` files, ``test_data_set_*`` TensorProto folders or an
image folder (see ``onnxopt.data_formats`` and ``onnxopt.images``); a dict of input arrays; an
object with ``get_next()`` like onnxruntime's ``CalibrationDataReader``; or an iterable of input
dicts. Every source yields chunks that ``DataSource.batches`` validates and re-batches
(``onnxopt.data_source``).
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import onnx

from onnxopt.data_formats import (
    NpyArraysSource,
    NpySamplesSource,
    NpzSource,
    TensorProtoSource,
    open_npy,
    open_npy_folder,
    open_npz,
    open_test_data_sets,
)
from onnxopt.data_source import LABEL_KEYS, Batch, DataSource, InputSpec, fixed_batch_size, input_specs
from onnxopt.errors import DataError
from onnxopt.images import ImageFolderSource, ImagePreprocess, open_image_folder


_END = object()


class IterableSource(DataSource):
    """Any iterable of input dicts (each a chunk with a batch axis), or an object with ``get_next()``
    like onnxruntime's ``CalibrationDataReader`` (``rewind()`` is called before each pass when it
    exists). Labels may ride along under a ``label``/``labels`` key. One-shot iterators and readers
    without ``rewind()`` are kept in memory as they are read, so the data can be read again
    (calibration reads it more than once) and every pass sees the same samples."""

    def __init__(self, obj: Any, specs: list[InputSpec]) -> None:
        super().__init__(specs)
        self._obj = obj
        self._reader = hasattr(obj, "get_next")
        self._replayable = hasattr(obj, "rewind") if self._reader else not isinstance(obj, Iterator)
        self._seen: list[Batch] = []
        self._live: Iterator[Any] | None = None
        kind = "get_next() reader" if self._reader else type(obj).__name__
        self.description = f"{kind} (python object)"

    @property
    def has_labels(self) -> bool:
        first = next(self._chunks(), None)
        return first is not None and first.labels is not None

    def _raw(self) -> Iterator[Any]:
        if not self._reader:
            yield from self._obj
            return
        if hasattr(self._obj, "rewind"):
            self._obj.rewind()
        while (item := self._obj.get_next()) is not None:
            yield item

    def _chunks(self) -> Iterator[Batch]:
        if self._replayable:
            for index, item in enumerate(self._raw()):
                yield self._batch(item, index)
            return
        if self._live is None:
            self._live = self._raw()
        index = 0
        while True:
            if index == len(self._seen):
                item = next(self._live, _END)
                if item is _END:
                    return
                self._seen.append(self._batch(item, index))
            yield self._seen[index]
            index += 1

    def _batch(self, item: Any, index: int) -> Batch:
        if not isinstance(item, Mapping):
            raise DataError(f"{self.description} (chunk {index}): items must be dicts of input name -> array, "
                            f"got {type(item).__name__}")
        inputs = dict(item)
        labels = next((inputs.pop(k) for k in LABEL_KEYS if k in inputs), None)
        return Batch(inputs, labels)


#: the size random data gives a dynamic non-batch dimension that neither ``dim_values`` (``--dim``) nor
#: calibration data sizes: large enough for a CNN's downsampling (/32 leaves 2), small enough to keep
#: the comparison quick. The report says where each dynamic size came from.
DEFAULT_DYNAMIC_DIM = 64


class RandomSource(DataSource):
    """Seeded random inputs from the model's input shapes: for latency and structure only.

    Samples are drawn one at a time (the batch axis is 1 per sample), so the data does not depend on
    the batch size; a model with a fixed batch size gets ``samples`` rounded up to a whole number of
    batches. A dynamic dimension takes its size from ``dim_values`` (by name), else from ``observed``
    (per-sample shapes of real data for the same inputs, e.g. the calibration data), else
    ``DEFAULT_DYNAMIC_DIM``; ``assumed`` lists the sizes that came from the default."""

    synthetic = True

    def __init__(self, specs: list[InputSpec], samples: int = 64, seed: int = 0,
                 dim_values: dict[str, int] | None = None,
                 observed: Mapping[str, tuple[int, ...]] | None = None) -> None:
        super().__init__(specs)
        if samples < 1:
            raise DataError(f"random data needs at least 1 sample, got {samples}")
        fixed = fixed_batch_size(specs) or 1
        self.samples = -(-samples // fixed) * fixed
        self.seed = seed
        self.dim_values = dim_values or {}
        self.observed = observed or {}
        self.assumed: list[str] = []
        self._sized: list[str] = []
        # one sample: 1 on the sample axis; an input passed whole gets its full shape
        self._shapes = {s.name: [1 if axis == s.sample_axis else self._dim(s, axis, d) for axis, d in enumerate(s.shape)]
                        for s in specs}
        dims = f"; dynamic dims {', '.join(self._sized)}" if self._sized else ""
        self.description = f"random inputs ({self.samples} samples, seed {seed}{dims}; latency/structure only)"

    @property
    def num_samples(self) -> int:
        return self.samples

    def _chunks(self) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        # an input passed whole keeps one drawn value for the whole run, so samples still batch together;
        # when no input has a sample axis, each chunk is a run of its own and draws everything afresh
        whole = {s.name for s in self.specs if s.sample_axis is None}
        fresh = len(whole) == len(self.specs)
        kept = {name: _random_array(rng, self._spec(name).dtype, self._shapes[name]) for name in whole if not fresh}
        for _ in range(self.samples):
            yield Batch({s.name: kept[s.name] if s.name in kept else _random_array(rng, s.dtype, self._shapes[s.name])
                         for s in self.specs})

    def _spec(self, name: str) -> InputSpec:
        return next(s for s in self.specs if s.name == name)

    def _dim(self, spec: InputSpec, axis: int, d: int | str | None) -> int:
        if isinstance(d, int) and d > 0:
            return d
        seen = self.observed.get(spec.name)
        if isinstance(d, str) and d in self.dim_values:
            size, where = self.dim_values[d], "given"
        elif seen is not None and len(seen) == len(spec.shape) - (spec.sample_axis is not None):
            size, where = seen[axis - (spec.sample_axis is not None and axis > spec.sample_axis)], "as in the calibration data"
        else:
            size, where = DEFAULT_DYNAMIC_DIM, "default"
            self.assumed.append(f"{d!r} of input '{spec.name}'" if d else f"axis {axis} of input '{spec.name}'")
        self._sized.append(f"{spec.name}[{axis}]={size} ({where})")
        return size


def sample_shapes(source: DataSource) -> dict[str, tuple[int, ...]]:
    """The per-sample shape of each input in the first chunk of ``source`` (its sample axis left out; an
    input passed whole keeps its full shape)."""
    first = next(source._validated(), None)
    if first is None:
        return {}
    return {k: tuple(d for i, d in enumerate(v.shape) if i != first.axis(k)) for k, v in first.inputs.items()
            if np.ndim(v)}


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, shape).astype(dtype)
    raise DataError(f"cannot generate random data of dtype {dtype}")


#: path openers, tried in order; each returns a source, or None when the path is not its format
Opener = Callable[[Path, list[InputSpec], "ImagePreprocess | None"], "DataSource | None"]
OPENERS: list[Opener] = [open_npz, open_npy, open_test_data_sets, open_npy_folder, open_image_folder]

FORMATS = ("an .npz or .npy file, a folder of .npy files, test_data_set_* folders of input_*.pb, "
           "or a folder of images")


def open_data(source: Any, model: onnx.ModelProto, *, seed: int = 0, samples: int = 64,
              dim_values: dict[str, int] | None = None, preprocess: ImagePreprocess | None = None,
              observed: Mapping[str, tuple[int, ...]] | None = None) -> DataSource:
    """A ``DataSource`` for ``model`` (see the module docstring for what ``source`` may be).

    ``seed``, ``samples``, ``dim_values`` and ``observed`` shape random data (``RandomSource``);
    ``preprocess`` says how images in an image folder become inputs (defaults come from the model's
    input shape)."""
    if isinstance(source, DataSource):
        return source
    specs = input_specs(model)
    if isinstance(source, str) and (source == "random" or source.startswith("random:")):
        n = samples
        if ":" in source:
            try:
                n = int(source.split(":", 1)[1])
            except ValueError:
                raise DataError(f"'{source}': expected random:N with N a number of samples") from None
        return RandomSource(specs, n, seed, dim_values, observed)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), specs, preprocess)
    if isinstance(source, Mapping):
        return IterableSource([source], specs)
    if hasattr(source, "get_next") or isinstance(source, Iterable):
        return IterableSource(source, specs)
    raise DataError(f"cannot read data from a {type(source).__name__}; give a path ({FORMATS}), "
                    "random:N, a dict of arrays, a get_next() reader or an iterable of dicts")


def _open_path(path: Path, specs: list[InputSpec], preprocess: ImagePreprocess | None) -> DataSource:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    for opener in OPENERS:
        found = opener(path, specs, preprocess)
        if found is not None:
            return found
    if path.is_dir() and not any(p for p in path.iterdir() if not p.name.startswith(".")):
        raise DataError(f"{path}: the folder is empty; expected {FORMATS}")
    raise DataError(f"{path}: unknown data format; expected {FORMATS}")


__all__ = [
    "Batch", "DataSource", "InputSpec", "input_specs", "open_data", "OPENERS", "Opener", "IterableSource",
    "RandomSource", "NpzSource", "NpyArraysSource", "NpySamplesSource", "TensorProtoSource", "ImageFolderSource",
    "ImagePreprocess", "LABEL_KEYS", "DEFAULT_DYNAMIC_DIM", "sample_shapes",
]
