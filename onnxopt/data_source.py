"""The ``DataSource`` base: model input specs, validated chunks, re-batching and progress.

A source yields *chunks*: dicts of arrays with a leading batch axis (any number of samples), plus
optional labels. ``DataSource.batches`` validates every chunk against the model's inputs (names,
dtypes, ranks, fixed dimensions, labels present in all chunks or in none) and re-batches to the
requested size, or to the model's fixed batch size if it has one. The concrete sources live in
``onnxopt.data`` (Python objects, random), ``onnxopt.data_formats`` (files) and ``onnxopt.images``.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import onnx

from onnxopt.errors import DataError
from onnxopt.progress import Progress

logger = logging.getLogger(__name__)

#: keys (npz), file stems (.npy folders) and dict keys (python objects) that hold labels
LABEL_KEYS = ("label", "labels")


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (``None`` or a string for symbolic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]
    #: a rank-0 input (the model declares an empty shape): fed as one value per batch, no batch axis
    scalar: bool = False

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
        if not vi.type.HasField("tensor_type"):
            raise DataError(f"input '{vi.name}' is not a tensor; only tensor inputs are supported")
        tt = vi.type.tensor_type
        dims: tuple[int | str | None, ...] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims,
                               scalar=tt.HasField("shape") and not dims))
    return specs


def fixed_batch_size(specs: list[InputSpec]) -> int | None:
    """The model's batch size when its first input fixes it, else ``None`` (dynamic)."""
    return next((s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0), None)


def shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass
class Batch:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        """Samples in the batch: the leading axis of the batched inputs (1 when all are scalars)."""
        batched = [v for v in self.inputs.values() if np.ndim(v)]
        return int(batched[0].shape[0]) if batched else int(bool(self.inputs))


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
        """Validated batches of ``batch_size`` samples; the last one may be smaller.

        A model with a fixed batch size gets batches of exactly that size: a smaller last batch
        is dropped with a warning. Chunks whose non-batch dimensions differ are never merged.
        """
        fixed = fixed_batch_size(self.specs)
        size = fixed or batch_size
        if size < 1:
            raise DataError(f"batch size must be at least 1, got {size}")
        seen = dropped = 0
        bar = Progress(description or self.description, self.num_samples) if progress else None
        try:
            for batch in _rebatch(self._validated(), size):
                if fixed is not None and batch.size != fixed:
                    dropped += batch.size
                    continue
                seen += batch.size
                if bar is not None:
                    bar.advance(batch.size)
                yield batch
        finally:
            if bar is not None:
                bar.close()
        if dropped:
            if not seen:
                raise DataError(f"{self.description}: {dropped} sample(s), fewer than the model's fixed "
                                f"batch size {fixed}")
            logger.warning("%s: dropped %d sample(s) that do not fill the model's fixed batch size %d",
                           self.description, dropped, fixed)
        if seen == 0:
            raise DataError(f"{self.description}: the data set is empty")

    def check(self) -> None:
        """Fail early: read and validate the first chunk only (names, dtypes, shapes; not empty)."""
        if next(self._validated(), None) is None:
            raise DataError(f"{self.description}: the data set is empty")

    def _validated(self) -> Iterator[Batch]:
        labelled: bool | None = None
        for index, chunk in enumerate(self._chunks()):
            chunk = self._validate(chunk, index)
            has = chunk.labels is not None
            if labelled is not None and has != labelled:
                state = "has labels but earlier chunks have none" if has else "has no labels but earlier chunks have"
                raise DataError(f"{self.description} (chunk {index}): {state}; give labels for all samples or none")
            labelled = has
            yield chunk

    def _validate(self, chunk: Batch, index: int) -> Batch:
        """Check one chunk against the specs; the batch axis (axis 0) is free, re-batching sets it."""
        where = f"{self.description} (chunk {index})"
        expected = {s.name for s in self.specs}
        got = set(chunk.inputs)
        if got != expected:
            missing, extra = sorted(expected - got), sorted(got - expected)
            parts = ([f"missing input(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown name(s) {', '.join(extra)}"] if extra else [])
            raise DataError(f"{where}: {'; '.join(parts)}; the model's inputs are {', '.join(sorted(expected))}")
        inputs: dict[str, np.ndarray] = {}
        sizes = set()
        for spec in self.specs:
            arr = _as_array(chunk.inputs[spec.name], f"{where}: input '{spec.name}'")
            if spec.scalar != (arr.ndim == 0):
                wanted = "a scalar (rank 0, one value per chunk)" if spec.scalar else "a leading batch axis"
                raise DataError(f"{where}: input '{spec.name}' has shape {list(arr.shape)}; the model wants {wanted}")
            if arr.dtype != spec.dtype:
                raise DataError(f"{where}: input '{spec.name}' has dtype {arr.dtype}, the model wants {spec.dtype}; "
                                f"cast your data to {spec.dtype}")
            if spec.shape and arr.ndim != len(spec.shape):
                raise DataError(f"{where}: input '{spec.name}' has shape {list(arr.shape)} (rank {arr.ndim}), "
                                f"the model wants {shape_text(spec.shape)} (rank {len(spec.shape)}) with the batch axis first")
            for axis, (have, want) in enumerate(zip(arr.shape, spec.shape)):
                if axis and isinstance(want, int) and want > 0 and have != want:
                    raise DataError(f"{where}: input '{spec.name}' has shape {list(arr.shape)}, the model wants "
                                    f"{shape_text(spec.shape)} (axis {axis} is {have}, not {want})")
            if not spec.scalar:
                sizes.add(arr.shape[0])
            inputs[spec.name] = arr
        if len(sizes) > 1:
            raise DataError(f"{where}: inputs have different numbers of samples {sorted(sizes)}")
        batch = Batch(inputs)
        if chunk.labels is not None:
            batch.labels = np.atleast_1d(_as_array(chunk.labels, f"{where}: labels"))
            if len(batch.labels) != batch.size:
                raise DataError(f"{where}: {len(batch.labels)} labels for {batch.size} samples")
        return batch


def _as_array(value: object, what: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except ValueError as exc:
        raise DataError(f"{what} is not a rectangular array ({exc})") from exc


def _merge_key(chunk: Batch) -> tuple[object, ...]:
    """Chunks merge only when their per-sample shapes and their scalar input values are equal."""
    return tuple(v.shape[1:] if v.ndim else (v.dtype.str, v.tobytes()) for v in chunk.inputs.values())


def _rebatch(chunks: Iterable[Batch], size: int) -> Iterator[Batch]:
    """Batches of ``size`` samples from chunks of any size; chunks whose per-sample shapes (or
    scalar inputs) differ are not merged (the pending samples go out as a smaller batch first).
    A model whose inputs are all scalars takes one chunk per run."""
    pending: list[Batch] = []
    count = 0
    for chunk in chunks:
        if not any(v.ndim for v in chunk.inputs.values()):
            yield chunk
            continue
        if pending and _merge_key(chunk) != _merge_key(pending[0]):
            yield _concat(pending)
            pending, count = [], 0
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
    inputs = {k: np.concatenate([p.inputs[k] for p in parts]) if v.ndim else v for k, v in parts[0].inputs.items()}
    labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])  # type: ignore[misc]
    return Batch(inputs, labels)


def _take(batch: Batch, start: int, stop: int) -> Batch:
    return Batch({k: v[start:stop] if v.ndim else v for k, v in batch.inputs.items()},
                 None if batch.labels is None else batch.labels[start:stop])
