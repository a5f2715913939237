"""Data sources for calibration and evaluation, streamed in batches and validated against the model.

Every source yields *chunks* (dicts of arrays with a leading batch axis, plus optional labels);
``DataSource.batches`` validates each chunk against the model's inputs (names, dtypes, ranks, fixed
dimensions) and re-batches to the requested size when the model's batch dimension is dynamic.
"""

from __future__ import annotations

import abc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx

from onnxopt.errors import DataError

logger = logging.getLogger(__name__)

LABEL_KEYS = ("label", "labels")


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (``None`` or a string for symbolic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.shape) and not isinstance(self.shape[0], int)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers)."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise DataError(f"input '{vi.name}' is not a tensor; only tensor inputs are supported")
        dims: tuple[int | str | None, ...] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    return specs


@dataclass
class Batch:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 0


class DataSource(abc.ABC):
    """A re-iterable stream of validated batches for one model."""

    #: one line for reports: where the data came from and how many samples
    description: str
    #: True for generated inputs: good for latency and structure, never for accuracy
    synthetic: bool = False

    def __init__(self, specs: list[InputSpec]) -> None:
        self.specs = specs

    @abc.abstractmethod
    def _chunks(self) -> Iterator[Batch]:
        """Yield chunks with a leading batch axis (any size)."""

    @property
    def num_samples(self) -> int | None:
        """The number of samples, when known without reading the data."""
        return None

    @property
    def has_labels(self) -> bool:
        return False

    def batches(self, batch_size: int = 32, *, progress: bool = False, description: str = "") -> Iterator[Batch]:
        """Validated batches of ``batch_size`` samples (the model's fixed batch size if it has one)."""
        fixed = next((s.shape[0] for s in self.specs if s.shape and isinstance(s.shape[0], int)), None)
        size = fixed or batch_size
        chunks = (self._validate(c, i) for i, c in enumerate(self._chunks()))
        stream = _rebatch(chunks, size) if fixed is None else chunks
        seen = 0
        bar = _progress(progress, self.num_samples, description or self.description)
        try:
            for batch in stream:
                seen += batch.size
                if bar is not None:
                    bar.advance(batch.size)
                yield batch
        finally:
            if bar is not None:
                bar.close()
        if seen == 0:
            raise DataError(f"{self.description}: the data set is empty")

    def _validate(self, chunk: Batch, index: int) -> Batch:
        expected = {s.name for s in self.specs}
        got = set(chunk.inputs)
        where = f"{self.description} (chunk {index})"
        if got != expected:
            missing, extra = sorted(expected - got), sorted(got - expected)
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if extra:
                parts.append(f"unknown name(s) {', '.join(extra)}")
            raise DataError(f"{where}: {'; '.join(parts)}; the model's inputs are {', '.join(sorted(expected))}")
        sizes = set()
        for spec in self.specs:
            arr = np.asarray(chunk.inputs[spec.name])
            if arr.dtype != spec.dtype:
                raise DataError(f"{where}: input '{spec.name}' has dtype {arr.dtype}, the model wants {spec.dtype}")
            if spec.shape and arr.ndim != len(spec.shape):
                raise DataError(
                    f"{where}: input '{spec.name}' has shape {list(arr.shape)}, the model wants "
                    f"{_shape_text(spec.shape)} (rank {len(spec.shape)})")
            for axis, (have, want) in enumerate(zip(arr.shape, spec.shape)):
                if isinstance(want, int) and want > 0 and have != want:
                    raise DataError(
                        f"{where}: input '{spec.name}' has shape {list(arr.shape)}, the model wants "
                        f"{_shape_text(spec.shape)} (axis {axis} is {have}, not {want})")
            sizes.add(arr.shape[0] if arr.ndim else 1)
            chunk.inputs[spec.name] = arr
        if len(sizes) > 1:
            raise DataError(f"{where}: inputs have different numbers of samples {sorted(sizes)}")
        if chunk.labels is not None and len(chunk.labels) != next(iter(sizes)):
            raise DataError(f"{where}: {len(chunk.labels)} labels for {next(iter(sizes))} samples")
        return chunk


def _shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _rebatch(chunks: Iterable[Batch], size: int) -> Iterator[Batch]:
    pending: list[Batch] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += chunk.size
        while count >= size:
            merged = _concat(pending)
            yield _take(merged, 0, size)
            rest = _take(merged, size, merged.size)
            pending, count = ([rest] if rest.size else []), rest.size
    if count:
        yield _concat(pending)


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    inputs = {k: np.concatenate([p.inputs[k] for p in parts]) for k in parts[0].inputs}
    labels = None
    if all(p.labels is not None for p in parts):
        labels = np.concatenate([p.labels for p in parts])  # type: ignore[misc]
    return Batch(inputs, labels)


def _take(batch: Batch, start: int, stop: int) -> Batch:
    return Batch({k: v[start:stop] for k, v in batch.inputs.items()},
                 None if batch.labels is None else batch.labels[start:stop])


class _Progress:
    def __init__(self, total: int | None, description: str) -> None:
        from rich.progress import Progress

        self._progress = Progress(transient=True)
        self._task = self._progress.add_task(description, total=total)
        self._progress.start()

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()


def _progress(enabled: bool, total: int | None, description: str) -> _Progress | None:
    return _Progress(total, description) if enabled else None


# -- sources ---------------------------------------------------------------------------------

class NpzSource(DataSource):
    """A ``.npz`` file keyed by input names, each array ``[samples, ...]``; optional ``label``."""

    def __init__(self, path: Path, specs: list[InputSpec]) -> None:
        super().__init__(specs)
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as npz:
                self._keys = list(npz.files)
                first = next((k for k in self._keys if k not in LABEL_KEYS), None)
                self._n = int(npz[first].shape[0]) if first is not None and npz[first].ndim else 0
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
        self.description = f"{path.name} ({self._n} samples, npz)"

    @property
    def num_samples(self) -> int:
        return self._n

    @property
    def has_labels(self) -> bool:
        return any(k in LABEL_KEYS for k in self._keys)

    def _chunks(self) -> Iterator[Batch]:
        with np.load(self.path, allow_pickle=False) as npz:
            label_key = next((k for k in self._keys if k in LABEL_KEYS), None)
            inputs = {k: npz[k] for k in self._keys if k not in LABEL_KEYS}
            labels = npz[label_key] if label_key else None
        if self._n:
            yield Batch(inputs, labels)


class IterableSource(DataSource):
    """Any iterable of input dicts (each a batch), or an object with ``get_next()`` like
    onnxruntime's ``CalibrationDataReader``. One-shot iterables are kept after the first pass so
    the data can be read again (calibration reads it more than once)."""

    def __init__(self, obj: Any, specs: list[InputSpec]) -> None:
        super().__init__(specs)
        self._obj = obj
        self._cache: list[Batch] | None = None
        kind = "get_next() reader" if hasattr(obj, "get_next") else type(obj).__name__
        self.description = f"{kind} (python object)"

    def _raw(self) -> Iterator[Any]:
        obj = self._obj
        if hasattr(obj, "get_next"):
            if hasattr(obj, "rewind"):
                obj.rewind()
            while (item := obj.get_next()) is not None:
                yield item
        else:
            yield from obj

    def _chunks(self) -> Iterator[Batch]:
        if self._cache is not None:
            yield from self._cache
            return
        reusable = not (hasattr(self._obj, "get_next") and not hasattr(self._obj, "rewind")) and not isinstance(
            self._obj, Iterator)
        seen: list[Batch] = []
        for item in self._raw():
            if not isinstance(item, dict):
                raise DataError(f"{self.description}: items must be dicts of input name -> array, got {type(item).__name__}")
            item = dict(item)
            labels = next((item.pop(k) for k in LABEL_KEYS if k in item), None)
            batch = Batch({k: np.asarray(v) for k, v in item.items()},
                          None if labels is None else np.asarray(labels))
            if not reusable:
                seen.append(batch)
            yield batch
        if not reusable:
            self._cache = seen


class RandomSource(DataSource):
    """Seeded random inputs from the model's input shapes: for latency and structure only."""

    synthetic = True

    def __init__(self, specs: list[InputSpec], samples: int = 64, seed: int = 0, dim_values: dict[str, int] | None = None) -> None:
        super().__init__(specs)
        self.samples = samples
        self.seed = seed
        self.dim_values = dim_values or {}
        self.description = f"random inputs ({samples} samples, seed {seed}; latency/structure only)"

    @property
    def num_samples(self) -> int:
        return self.samples

    def _chunks(self) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        fixed = next((s.shape[0] for s in self.specs if s.shape and isinstance(s.shape[0], int)), None)
        step = fixed or 1
        for _ in range(max(1, self.samples // step)):
            inputs = {}
            for spec in self.specs:
                shape = [step] + [self._dim(d) for d in spec.shape[1:]] if spec.shape else []
                inputs[spec.name] = _random_array(rng, spec.dtype, shape)
            yield Batch(inputs)

    def _dim(self, d: int | str | None) -> int:
        if isinstance(d, int) and d > 0:
            return d
        if isinstance(d, str) and d in self.dim_values:
            return self.dim_values[d]
        raise DataError(
            f"random data needs a value for the dynamic dimension {d!r}; give it with --dim {d}=N")


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, shape).astype(dtype)
    raise DataError(f"cannot generate random data of dtype {dtype}")


#: suffix / folder openers, tried in order; each returns a source or None if it does not apply
Opener = Callable[[Path, list[InputSpec]], "DataSource | None"]


def _open_npz(path: Path, specs: list[InputSpec]) -> DataSource | None:
    return NpzSource(path, specs) if path.suffix == ".npz" else None


OPENERS: list[Opener] = [_open_npz]


def open_data(source: Any, model: onnx.ModelProto, *, seed: int = 0, samples: int = 64,
              dim_values: dict[str, int] | None = None) -> DataSource:
    """A ``DataSource`` for ``model`` from: a ``DataSource``; a path (``.npz``, see ``OPENERS``);
    ``"random"`` / ``"random:N"``; an object with ``get_next()``; or an iterable of input dicts."""
    specs = input_specs(model)
    if isinstance(source, DataSource):
        return source
    if isinstance(source, str) and (source == "random" or source.startswith("random:")):
        n = samples
        if ":" in source:
            try:
                n = int(source.split(":", 1)[1])
            except ValueError:
                raise DataError(f"'{source}': expected random:N with N a number of samples") from None
        return RandomSource(specs, n, seed, dim_values)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        for opener in OPENERS:
            found = opener(path, specs)
            if found is not None:
                return found
        raise DataError(f"{path}: unknown data format (expected .npz, a folder of .npy files, "
                        "test_data_set_* folders, or an image folder)")
    if hasattr(source, "get_next") or isinstance(source, Iterable):
        return IterableSource(source, specs)
    raise DataError(f"cannot read data from a {type(source).__name__}")
