"""The ``DataSource`` base: model input specs, validated chunks, re-batching and progress.

A source yields *chunks*: dicts of arrays holding any number of samples, plus optional labels.
Which axis of an input holds the samples is inferred from the model's input shapes
(``sample_axes``): axis 0 when every input's first dimension is the same dynamic or fixed batch
dimension; else the axis of a symbolic dimension the inputs share (a recurrent state ``[2, B, 128]``
beside ``x: [B, T]`` has its samples on axis 1). An input without a sample axis (a scalar, a weight
fed as an input, a state without the batch dimension) is passed whole with every batch; when no
input has one, each chunk is one run. ``DataSource.batches`` validates every chunk against the
model's inputs (names, dtypes, ranks, fixed dimensions, labels present in all chunks or in none)
and re-batches to the requested size, or to the model's fixed batch size if it has one. The
concrete sources live in ``onnxopt.data`` (Python objects, random), ``onnxopt.data_formats``
(files) and ``onnxopt.images``.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
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
    #: the axis that holds the samples (``sample_axes``); ``None``: the input is passed whole with every batch
    sample_axis: int | None = 0


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers), with their sample axes."""
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
    axes = sample_axes(specs)
    return [dataclasses.replace(s, sample_axis=axes[s.name]) for s in specs]


def sample_axes(specs: list[InputSpec]) -> dict[str, int | None]:
    """Which axis of each input holds the samples, from the declared shapes alone.

    1. Axis 0 of every input of known rank when those first dimensions can be one batch dimension:
       unnamed, or all the same name or the same fixed size.
    2. Else a symbolic dimension at axis 0 of some input (the one most inputs hold), or else one
       that several inputs share: its axis in each input that has it; the others are passed whole
       (``tokens [B, T]`` beside ``mask [1, T]``: B, the mask is passed whole).
    3. Else none: each chunk is one run.
    Rank-0 inputs are always passed whole."""
    ranked = [s for s in specs if s.shape]
    unknown_rank = [s for s in specs if not s.shape and not s.scalar]
    firsts = {s.shape[0] for s in ranked}
    if len(firsts - {None}) <= 1:
        return {s.name: None if s.scalar else 0 for s in specs}
    holders = Counter(d for s in ranked for d in set(s.shape) if isinstance(d, str))
    leading = {s.shape[0] for s in ranked if isinstance(s.shape[0], str)}
    candidates = [d for d in holders if holders[d] > 1 or d in leading]
    if not candidates:
        return {s.name: None for s in specs}
    name = max(candidates, key=lambda d: (d in leading, holders[d]))
    axes: dict[str, int | None] = {s.name: s.shape.index(name) if name in s.shape else None for s in ranked}
    axes.update({s.name: None for s in [*unknown_rank, *(s for s in specs if s.scalar)]})
    return axes


def fixed_batch_size(specs: list[InputSpec]) -> int | None:
    """The model's batch size when an input fixes its sample axis, else ``None`` (dynamic)."""
    return next((s.shape[s.sample_axis] for s in specs if s.sample_axis is not None and len(s.shape) > s.sample_axis
                 and isinstance(s.shape[s.sample_axis], int) and s.shape[s.sample_axis] > 0), None)


def feed_note(specs: list[InputSpec]) -> str | None:
    """What a report says about inputs whose samples are not on axis 0 (``None`` when all are)."""
    whole = [s.name for s in specs if s.sample_axis is None]
    if whole and len(whole) == len(specs):
        return "no input has a sample axis: each given dict (or file chunk) is one run"
    moved = [f"{s.name} (axis {s.sample_axis})" for s in specs if s.sample_axis]
    parts = ([f"input(s) {', '.join(whole)} have no sample axis and are passed whole with every batch"] if whole
             else []) + ([f"samples lie on {', '.join(moved)}"] if moved else [])
    return "; ".join(parts) or None


def shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass
class Batch:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    #: input name -> sample axis (``None``: passed whole); unlisted inputs have it on axis 0 unless rank 0
    axes: dict[str, int | None] = field(default_factory=dict)

    def axis(self, name: str) -> int | None:
        return self.axes.get(name, 0 if np.ndim(self.inputs[name]) else None)

    @property
    def size(self) -> int:
        """Samples in the batch: the sample axis of the batched inputs (1 when all are passed whole)."""
        for name, value in self.inputs.items():
            axis = self.axis(name)
            if axis is not None:
                return int(np.shape(value)[axis])
        return int(bool(self.inputs))


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
        """Yield chunks holding any number of samples on the inputs' sample axes."""

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

    def feed_note(self) -> str | None:
        """What the report says about inputs passed whole (see ``feed_note``)."""
        return feed_note(self.specs)

    def _validate(self, chunk: Batch, index: int) -> Batch:
        """Check one chunk against the specs; the sample axis is free, re-batching sets it."""
        where = f"{self.description} (chunk {index})"
        expected = {s.name for s in self.specs}
        got = set(chunk.inputs)
        if got != expected:
            missing, extra = sorted(expected - got), sorted(got - expected)
            parts = ([f"missing input(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown name(s) {', '.join(extra)}"] if extra else [])
            raise DataError(f"{where}: {'; '.join(parts)}; the model's inputs are {', '.join(sorted(expected))}")
        inputs: dict[str, np.ndarray] = {}
        axes: dict[str, int | None] = {}
        sizes = {}
        for spec in self.specs:
            arr = _as_array(chunk.inputs[spec.name], f"{where}: input '{spec.name}'")
            axis = spec.sample_axis if arr.ndim else None
            if spec.scalar != (arr.ndim == 0):
                wanted = ("a scalar (rank 0, one value per chunk)" if spec.scalar else "a leading batch axis"
                          if spec.sample_axis == 0 else f"an array of shape {shape_text(spec.shape)}")
                raise DataError(f"{where}: input '{spec.name}' has shape {list(arr.shape)}; the model wants {wanted}")
            if arr.dtype != spec.dtype:
                raise DataError(f"{where}: input '{spec.name}' has dtype {arr.dtype}, the model wants {spec.dtype}; "
                                f"cast your data to {spec.dtype}")
            if spec.shape and arr.ndim != len(spec.shape):
                layout = "passed whole" if axis is None else f"with the samples on axis {axis}"
                raise DataError(f"{where}: input '{spec.name}' has shape {list(arr.shape)} (rank {arr.ndim}), "
                                f"the model wants {shape_text(spec.shape)} (rank {len(spec.shape)}) {layout}")
            for dim, (have, want) in enumerate(zip(arr.shape, spec.shape)):
                if dim != axis and isinstance(want, int) and want > 0 and have != want:
                    raise DataError(f"{where}: input '{spec.name}' has shape {list(arr.shape)}, the model wants "
                                    f"{shape_text(spec.shape)} (axis {dim} is {have}, not {want})")
            if axis is not None:
                sizes[spec.name] = arr.shape[axis]
            inputs[spec.name] = arr
            axes[spec.name] = axis
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{k}: {v} on axis {axes[k]}" for k, v in sizes.items())
            raise DataError(f"{where}: inputs have different numbers of samples ({listing})")
        batch = Batch(inputs, axes=axes)
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
    """Chunks merge only when their per-sample shapes and their whole inputs are equal."""
    key: list[object] = []
    for name, v in chunk.inputs.items():
        axis = chunk.axis(name)
        key.append((axis, v.shape[:axis] + v.shape[axis + 1:]) if axis is not None
                   else (v.dtype.str, v.shape, v.tobytes()))
    return tuple(key)


def _rebatch(chunks: Iterable[Batch], size: int) -> Iterator[Batch]:
    """Batches of ``size`` samples from chunks of any size; chunks whose per-sample shapes (or
    whole inputs) differ are not merged (the pending samples go out as a smaller batch first).
    A model without a sample axis takes one chunk per run."""
    pending: list[Batch] = []
    count = 0
    for chunk in chunks:
        if all(chunk.axis(name) is None for name in chunk.inputs):
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
    first = parts[0]
    inputs = {k: v if first.axis(k) is None else np.concatenate([p.inputs[k] for p in parts], axis=first.axis(k))
              for k, v in first.inputs.items()}
    labels = None if first.labels is None else np.concatenate([p.labels for p in parts])  # type: ignore[misc]
    return Batch(inputs, labels, first.axes)


def _take(batch: Batch, start: int, stop: int) -> Batch:
    inputs = {}
    for k, v in batch.inputs.items():
        axis = batch.axis(k)
        inputs[k] = v if axis is None else v[(slice(None),) * axis + (slice(start, stop),)]
    return Batch(inputs, None if batch.labels is None else batch.labels[start:stop], batch.axes)
