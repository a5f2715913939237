"""Data sources: every format round-trips, re-batching, labels, validation errors, random data, images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxopt.data import DataSource, IterableSource, input_specs, open_data
from onnxopt.errors import DataError
from onnxopt.images import ImagePreprocess
from onnxopt.runtime import make_session
from conftest import run_model

FLOAT, INT64, UINT8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.UINT8


def _model(*inputs: tuple[str, int, list[Any]]) -> onnx.ModelProto:
    """A model that returns each input unchanged (``<name>_out``)."""
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in inputs]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(f"{n}_out", t, s) for n, t, s in inputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


SINGLE = _model(("x", FLOAT, ["N", 3]))
PAIR = _model(("a", FLOAT, ["N", 2]), ("b", INT64, ["N"]))
FIXED = _model(("x", FLOAT, [4, 3]))


def _x(n: int = 10) -> np.ndarray:
    return np.arange(n * 3, dtype=np.float32).reshape(n, 3)


def _pair(n: int = 10) -> dict[str, np.ndarray]:
    return {"a": np.arange(n * 2, dtype=np.float32).reshape(n, 2), "b": np.arange(n, dtype=np.int64) * 7}


def _collect(source: DataSource, batch_size: int = 4) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[int]]:
    """All batches joined back together, the labels, and the batch sizes."""
    batches = list(source.batches(batch_size))
    inputs = {k: np.concatenate([b.inputs[k] for b in batches]) for k in batches[0].inputs}
    labels = None if batches[0].labels is None else np.concatenate([b.labels for b in batches])
    return inputs, labels, [b.size for b in batches]


def _write_tensor(path: Path, array: np.ndarray, name: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(numpy_helper.from_array(array, name).SerializeToString())


# -- writers: (tmp_path, inputs, labels) -> source accepted by open_data -------------------------

def _npz(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
    np.savez(tmp / "d.npz", **inputs, **({} if labels is None else {"label": labels}))
    return tmp / "d.npz"


def _npy_file(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
    np.save(tmp / "x.npy", inputs["x"])
    return tmp / "x.npy"


def _npy_per_input(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
    for name, arr in {**inputs, **({} if labels is None else {"label": labels})}.items():
        np.save(tmp / f"{name}.npy", arr)
    return tmp


def _npy_per_sample(batch_axis: bool) -> Callable[..., Any]:
    def write(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
        for i, sample in enumerate(inputs["x"]):
            np.save(tmp / f"{i:04d}.npy", sample[np.newaxis] if batch_axis else sample)
        if labels is not None:
            np.save(tmp / "label.npy", labels)
        return tmp
    return write


def _test_data_sets(named: bool) -> Callable[..., Any]:
    def write(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
        for k, (start, stop) in enumerate([(0, 3), (3, 4), (4, 10)]):
            for i, (name, arr) in enumerate(inputs.items()):
                _write_tensor(tmp / f"test_data_set_{k}" / f"input_{i}.pb", arr[start:stop], name if named else "")
            _write_tensor(tmp / f"test_data_set_{k}" / "output_0.pb", np.zeros(1, np.float32), "ignored")
        return tmp
    return write


def _list(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
    return [{**{k: v[i:i + 3] for k, v in inputs.items()}, **({} if labels is None else {"label": labels[i:i + 3]})}
            for i in range(0, 10, 3)]


def _generator(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
    return iter(_list(tmp, inputs, labels))


def _dict(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
    return {**inputs, **({} if labels is None else {"labels": labels})}


class Reader:
    """Like onnxruntime's CalibrationDataReader: one sample per get_next(), None at the end."""

    def __init__(self, inputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> None:
        n = len(next(iter(inputs.values())))
        extra = [{} if labels is None else {"label": labels[i:i + 1]} for i in range(n)]
        self.items = [{**{k: v[i:i + 1] for k, v in inputs.items()}, **extra[i]} for i in range(n)]
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.pos += 1
        return self.items[self.pos - 1] if self.pos <= len(self.items) else None


class RewindReader(Reader):
    def rewind(self) -> None:
        self.pos = 0


def _reader(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
    return Reader(inputs, labels)


def _rewind_reader(tmp: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Any:
    return RewindReader(inputs, labels)


LABELLED = {"npz": _npz, "npy-per-input": _npy_per_input, "npy-per-sample": _npy_per_sample(False),
            "npy-per-sample-batch-axis": _npy_per_sample(True), "list": _list, "generator": _generator,
            "dict": _dict, "reader": _reader, "rewind-reader": _rewind_reader}
UNLABELLED = {"npy-file": _npy_file, "test-data-sets-named": _test_data_sets(True),
              "test-data-sets-by-position": _test_data_sets(False)}
MULTI_INPUT = {"npz": _npz, "npy-per-input": _npy_per_input, "test-data-sets-named": _test_data_sets(True),
               "test-data-sets-by-position": _test_data_sets(False), "list": _list, "reader": _rewind_reader}


@pytest.mark.parametrize("write", list(LABELLED.values()) + list(UNLABELLED.values()),
                         ids=list(LABELLED) + list(UNLABELLED))
def test_format_round_trips_and_runs(tmp_path: Path, write: Callable[..., Any]) -> None:
    labelled = write in LABELLED.values()
    labels = np.arange(10, dtype=np.int64) % 3 if labelled else None
    source = open_data(write(tmp_path, {"x": _x()}, labels), SINGLE)

    inputs, got_labels, sizes = _collect(source)
    first = next(source.batches(4))

    np.testing.assert_array_equal(inputs["x"], _x())
    assert inputs["x"].dtype == np.float32
    assert sizes == [4, 4, 2]
    assert source.has_labels == labelled
    if labelled:
        np.testing.assert_array_equal(got_labels, labels)
    else:
        assert got_labels is None
    np.testing.assert_array_equal(run_model(SINGLE, first.inputs)[0], _x()[:4])


@pytest.mark.parametrize("write", list(MULTI_INPUT.values()), ids=list(MULTI_INPUT))
def test_multi_input_formats_round_trip(tmp_path: Path, write: Callable[..., Any]) -> None:
    source = open_data(write(tmp_path, _pair(), None), PAIR)

    inputs, _, sizes = _collect(source, batch_size=3)

    assert sizes == [3, 3, 3, 1]
    for name, expected in _pair().items():
        np.testing.assert_array_equal(inputs[name], expected)
        assert inputs[name].dtype == expected.dtype


def test_single_test_data_set_folder(tmp_path: Path) -> None:
    _test_data_sets(True)(tmp_path, {"x": _x()}, None)

    inputs, _, sizes = _collect(open_data(tmp_path / "test_data_set_2", SINGLE), batch_size=32)

    np.testing.assert_array_equal(inputs["x"], _x()[4:10])
    assert sizes == [6]


def test_per_input_npy_files_are_memory_mapped(tmp_path: Path) -> None:
    source = open_data(_npy_per_input(tmp_path, {"x": _x()}, None), SINGLE)

    chunk = next(source._chunks())

    assert isinstance(chunk.inputs["x"], np.memmap)
    assert source.num_samples == 10


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 32])
@pytest.mark.parametrize("chunk_sizes", [[10], [3, 1, 4, 2], [1] * 10])
def test_batches_do_not_depend_on_chunking(batch_size: int, chunk_sizes: list[int]) -> None:
    bounds = np.cumsum([0] + chunk_sizes)
    chunks = [{"x": _x()[a:b], "label": np.arange(10)[a:b]} for a, b in zip(bounds[:-1], bounds[1:])]

    batches = list(open_data(chunks, SINGLE).batches(batch_size))

    expected_sizes = [batch_size] * (10 // batch_size) + ([10 % batch_size] if 10 % batch_size else [])
    assert [b.size for b in batches] == expected_sizes
    for i, batch in enumerate(batches):
        np.testing.assert_array_equal(batch.inputs["x"], _x()[i * batch_size:(i + 1) * batch_size])
        np.testing.assert_array_equal(batch.labels, np.arange(10)[i * batch_size:(i + 1) * batch_size])


@pytest.mark.parametrize("chunk_sizes", [[10], [3, 1, 4, 2], [1] * 10])
def test_fixed_batch_model_gets_exact_batches_and_drops_the_rest(
        chunk_sizes: list[int], caplog: pytest.LogCaptureFixture) -> None:
    bounds = np.cumsum([0] + chunk_sizes)
    chunks = [{"x": _x()[a:b]} for a, b in zip(bounds[:-1], bounds[1:])]

    with caplog.at_level(logging.WARNING):
        batches = list(open_data(chunks, FIXED).batches(batch_size=3))

    assert [b.size for b in batches] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([b.inputs["x"] for b in batches]), _x()[:8])
    assert "dropped 2 sample(s)" in caplog.text


def test_chunks_of_different_shapes_are_not_merged() -> None:
    model = _model(("x", FLOAT, ["N", "T"]))
    chunks = [{"x": np.zeros((2, 5), np.float32)}, {"x": np.ones((3, 5), np.float32)},
              {"x": np.ones((2, 7), np.float32)}]

    batches = list(open_data(chunks, model).batches(4))

    assert [b.inputs["x"].shape for b in batches] == [(4, 5), (1, 5), (2, 7)]


@pytest.mark.parametrize("make", [Reader, RewindReader, lambda i: iter([{"x": i["x"][:6]}, {"x": i["x"][6:]}])],
                         ids=["reader", "rewind-reader", "generator"])
def test_one_shot_and_rewindable_readers_read_twice_identically(make: Callable[..., Any]) -> None:
    source = open_data(make({"x": _x()}), SINGLE)

    source.check()  # reads a little first, as the API does
    first, _, _ = _collect(source)
    second, _, _ = _collect(source, batch_size=3)

    np.testing.assert_array_equal(first["x"], _x())
    np.testing.assert_array_equal(second["x"], _x())


def test_random_source_is_seeded_and_synthetic() -> None:
    model = _model(("x", FLOAT, ["N", "C"]), ("i", INT64, ["N"]))

    a = open_data("random:10", model, seed=1, dim_values={"C": 5})
    b = open_data("random:10", model, seed=1, dim_values={"C": 5})
    c = open_data("random:10", model, seed=2, dim_values={"C": 5})
    ia, ib, ic = _collect(a, 3)[0], _collect(b, 7)[0], _collect(c)[0]

    assert a.synthetic and a.num_samples == 10
    assert ia["x"].shape == (10, 5) and ia["i"].dtype == np.int64
    np.testing.assert_array_equal(ia["x"], ib["x"])
    np.testing.assert_array_equal(ia["i"], ib["i"])
    assert not np.array_equal(ia["x"], ic["x"])


def test_random_source_sizes_dynamic_dims_given_observed_or_by_default() -> None:
    model = _model(("x", FLOAT, ["N", "T", None]), ("y", FLOAT, ["N", "C"]))

    source = open_data("random:2", model, dim_values={"C": 3}, observed={"x": (7, 9)})
    default = open_data("random:2", model, dim_values={"C": 3})

    assert _collect(source)[0]["x"].shape == (2, 7, 9) and _collect(source)[0]["y"].shape == (2, 3)
    assert "dynamic dims x[1]=7 (as in the calibration data), x[2]=9 (as in the calibration data), y[1]=3 (given)" \
        in source.description and source.assumed == []
    assert _collect(default)[0]["x"].shape == (2, 64, 64)
    assert default.assumed == ["'T' of input 'x'", "axis 2 of input 'x'"]


def test_random_source_fills_whole_fixed_batches() -> None:
    source = open_data("random:10", FIXED)

    assert [b.size for b in source.batches()] == [4, 4, 4]
    assert source.num_samples == 12


def _reader_empty() -> Any:
    return Reader({"x": _x(0)})


def _corrupt(name: str, content: bytes) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)
        return tmp / name if "/" not in name else tmp
    return write


def _saved(writer: Callable[[Path], None], result: str = "") -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        writer(tmp)
        return tmp / result
    return write


ERRORS: dict[str, tuple[Callable[[Path], Any], onnx.ModelProto, str]] = {
    "unknown name": (lambda t: [{"y": _x()}], SINGLE, "missing input(s) x; unknown name(s) y; the model's inputs are x"),
    "float64": (lambda t: [{"x": _x().astype(np.float64)}], SINGLE,
                "input 'x' has dtype float64, the model wants float32; cast your data to float32"),
    "python list": (lambda t: [{"x": [[1.0, 2.0, 3.0]]}], SINGLE, "cast your data to float32"),
    "int dtype": (lambda t: [{"x": _x().astype(np.int32)}], SINGLE, "has dtype int32, the model wants float32"),
    "rank": (lambda t: [{"x": _x()[:, :, None]}], SINGLE, "shape [10, 3, 1] (rank 3), the model wants [N, 3] (rank 2)"),
    "scalar for batched input": (lambda t: [{"x": np.float32(1.0)}], SINGLE,
                                 "input 'x' has shape []; the model wants a leading batch axis"),
    "batch for scalar input": (lambda t: [{"x": _x(3)[:, 0]}], _model(("x", FLOAT, [])),
                               "input 'x' has shape [3]; the model wants a scalar"),
    "fixed dim": (lambda t: [{"x": np.zeros((2, 4), np.float32)}], SINGLE, "axis 1 is 4, not 3"),
    "sample counts": (lambda t: [{"a": _pair()["a"], "b": _pair(3)["b"]}], PAIR, "different numbers of samples (a: 10 on axis 0, b: 3 on axis 0)"),
    "label count": (lambda t: [{"x": _x(3), "label": np.arange(2)}], SINGLE, "2 labels for 3 samples"),
    "mixed labels": (lambda t: [{"x": _x(3), "label": np.arange(3)}, {"x": _x(3)}], SINGLE,
                     "(chunk 1): has no labels but earlier chunks have"),
    "mixed labels late": (lambda t: [{"x": _x(3)}, {"x": _x(3), "label": np.arange(3)}], SINGLE,
                          "(chunk 1): has labels but earlier chunks have none"),
    "not dicts": (lambda t: [_x()], SINGLE, "items must be dicts of input name -> array, got ndarray"),
    "empty npz": (_saved(lambda t: np.savez(t / "e.npz"), "e.npz"), SINGLE,
                  "missing input(s) x: name each array after a model input (x); the .npz holds no arrays"),
    "npz no samples": (_saved(lambda t: np.savez(t / "e.npz", x=_x(0)), "e.npz"), SINGLE,
                       "the data set is empty (array 'x' has 0 samples)"),
    "npy no samples": (_saved(lambda t: np.save(t / "x.npy", _x(0)), ""), SINGLE, "the data set is empty (0 samples)"),
    "empty folder": (lambda t: t, SINGLE, "the folder is empty"),
    "reader returns None": (lambda t: _reader_empty(), SINGLE, "get_next() reader (python object): the data set is empty"),
    "empty list": (lambda t: [], SINGLE, "the data set is empty"),
    "fewer than fixed batch": (lambda t: [{"x": _x(3)}], FIXED, "3 sample(s), fewer than the model's fixed batch size 4"),
    "unknown file": (_corrupt("d.csv", b"1,2,3"), SINGLE, "unknown data format; expected an .npz or .npy file"),
    "unknown folder": (_corrupt("sub/notes.txt", b"hi"), SINGLE, "unknown data format"),
    "missing path": (lambda t: t / "nope.npz", SINGLE, "no such file or folder"),
    "corrupt npz": (_corrupt("d.npz", b"PK\x03\x04garbage"), SINGLE, "not a readable .npz file"),
    "npz holding one array": (_saved(lambda t: np.save(t / "d.npy", _x()) or (t / "d.npy").rename(t / "d.npz"), "d.npz"),
                              SINGLE, "not an .npz archive"),
    "corrupt npy": (_corrupt("x.npy", b"garbage"), SINGLE, "not a readable .npy file"),
    "corrupt pb": (_corrupt("test_data_set_0/input_0.pb", b"\xff\xff\xff garbage"), SINGLE,
                   "not a readable TensorProto file"),
    "pb set without inputs": (_corrupt("test_data_set_0/output_0.pb", b""), SINGLE, "no input_*.pb files"),
    "pb position beyond inputs": (_saved(lambda t: [_write_tensor(t / "test_data_set_0" / f"input_{i}.pb", _x())
                                                    for i in range(2)]), SINGLE, "unnamed tensor at position 1"),
    "corrupt image": (_corrupt("0/a.png", b"not a png"), _model(("x", FLOAT, ["N", 3, 4, 4])),
                      "a.png: not a readable image"),
    "per-sample shape": (_saved(lambda t: [np.save(t / f"{i}.npy", _x(2)) for i in range(2)]), SINGLE,
                         "is not one sample of input 'x' (rank 1, or rank 2 with a batch axis of 1)"),
    "npy names for multi-input": (_saved(lambda t: np.save(t / "0.npy", _x())), PAIR,
                                  "do not match the model's inputs a, b; name them <input>.npy"),
    "random count": (lambda t: "random:lots", SINGLE, "expected random:N"),
    "python object": (lambda t: 3.5, SINGLE, "cannot read data from a float"),
}


@pytest.mark.parametrize("make, model, message", list(ERRORS.values()), ids=list(ERRORS))
def test_data_errors_say_what_and_why(tmp_path: Path, make: Callable[[Path], Any], model: onnx.ModelProto,
                                      message: str) -> None:
    source = make(tmp_path)

    with pytest.raises(DataError) as caught:
        list(open_data(source, model).batches(4))

    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_preprocess_is_refused_for_non_image_data(tmp_path: Path) -> None:
    path = _npz(tmp_path, {"x": _x()}, None)

    with pytest.raises(DataError, match="image preprocessing applies to image folders only, this is an .npz file"):
        open_data(path, SINGLE, preprocess=ImagePreprocess())


def test_check_validates_the_first_chunk_only() -> None:
    source = open_data([{"x": _x(2)}, {"y": _x(2)}], SINGLE)
    bad = open_data([{"x": _x(2).astype(np.float64)}], SINGLE)

    source.check()
    with pytest.raises(DataError, match="cast your data to float32"):
        bad.check()


def test_iterable_has_labels_does_not_lose_samples() -> None:
    source = open_data(iter([{"x": _x(4), "label": np.arange(4)}, {"x": _x(4)[::-1], "label": np.arange(4)}]), SINGLE)

    assert source.has_labels
    assert isinstance(source, IterableSource)
    assert _collect(source)[2] == [4, 4]


# -- images ----------------------------------------------------------------------------------

def _image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


IMAGENET = "crop=4,scale=1/255,mean=0.485:0.456:0.406,std=0.229:0.224:0.225"


@pytest.mark.parametrize("spec, layout, order", [
    (IMAGENET + ",order=RGB,layout=NCHW", "NCHW", "RGB"),
    (IMAGENET + ",order=BGR", "NHWC", "BGR"),
])
def test_image_folder_gives_the_expected_tensor(tmp_path: Path, spec: str, layout: str, order: str) -> None:
    pixels = [_pixels(i, (6, 8, 3)) for i in range(3)]
    for i, p in enumerate(pixels):
        _image(tmp_path / f"img{i}.png", p)
    shape = ["N", 3, 4, 4] if layout == "NCHW" else ["N", 4, 4, 3]
    model = _model(("x", FLOAT, shape))

    inputs, labels, sizes = _collect(open_data(tmp_path, model, preprocess=ImagePreprocess.parse(spec)), batch_size=2)

    crop = np.stack(pixels)[:, 1:5, 2:6].astype(np.float32)  # centre crop: top (6-4)/2, left (8-4)/2
    if order == "BGR":
        crop = crop[..., ::-1]
    expected = (crop * np.float32(1 / 255) - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32)
    if layout == "NCHW":
        expected = expected.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(inputs["x"], expected)
    assert inputs["x"].dtype == np.float32 and labels is None and sizes == [2, 1]


def test_grayscale_uint8_image_defaults_from_the_model(tmp_path: Path) -> None:
    pixels = _pixels(0, (5, 7))
    _image(tmp_path / "a.png", pixels)
    _image(tmp_path / "b.png", np.stack([pixels] * 3, axis=-1))  # RGB with equal channels -> same gray
    model = _model(("x", UINT8, ["N", 5, 7]))

    inputs, _, _ = _collect(open_data(tmp_path, model))

    np.testing.assert_array_equal(inputs["x"], np.stack([pixels, pixels]))
    assert inputs["x"].dtype == np.uint8


def test_short_side_resize_of_a_constant_image(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", np.full((6, 8, 3), (10, 20, 30), np.uint8))
    model = _model(("x", FLOAT, ["N", 3, "H", "W"]))

    inputs, _, _ = _collect(open_data(tmp_path, model, preprocess=ImagePreprocess(resize=3, scale=1.0)))

    assert inputs["x"].shape == (1, 3, 3, 4)
    np.testing.assert_array_equal(inputs["x"][0, :, 0, 0], [10, 20, 30])
    np.testing.assert_array_equal(inputs["x"], np.broadcast_to(np.float32([10, 20, 30])[:, None, None], (1, 3, 3, 4)))


def test_exact_resize_to_the_model_size_by_default(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", np.full((9, 5, 3), 51, np.uint8))
    model = _model(("x", FLOAT, ["N", 4, 6, 3]))

    source = open_data(tmp_path, model)
    inputs, _, _ = _collect(source)

    np.testing.assert_allclose(inputs["x"], np.full((1, 4, 6, 3), 51 / 255, np.float32), rtol=1e-6)
    assert source.preprocess.resize == (4, 6) and source.preprocess.layout == "NHWC"


@pytest.mark.parametrize("labels_txt, folders, expected", [
    ("dog\ncat\n", ["dog", "cat"], [1, 0, 0]),  # labels.txt order, not name order
    (None, ["3", "7"], [3, 7, 7]),
])
def test_class_subfolders_give_labels(tmp_path: Path, labels_txt: str | None, folders: list[str],
                                      expected: list[int]) -> None:
    if labels_txt is not None:
        (tmp_path / "labels.txt").write_text(labels_txt)
    first, second = sorted(folders)
    _image(tmp_path / first / "a.png", _pixels(0, (4, 4, 3)))
    _image(tmp_path / second / "a.png", _pixels(1, (4, 4, 3)))
    _image(tmp_path / second / "b.png", _pixels(2, (4, 4, 3)))
    model = _model(("x", FLOAT, ["N", 3, 4, 4]))

    source = open_data(tmp_path, model)
    _, labels, _ = _collect(source)

    assert source.has_labels
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("setup, model, message", [
    (lambda t: (t / "labels.txt").write_text("cat\n"), _model(("x", FLOAT, ["N", 3, 4, 4])),
     "subfolder(s) dog are not listed"),
    (lambda t: _image(t / "top.png", _pixels(0, (4, 4, 3))), _model(("x", FLOAT, ["N", 3, 4, 4])),
     "images both at the top level and in subfolders"),
    (lambda t: None, PAIR, "image folders feed single-input models"),
    (lambda t: None, _model(("x", FLOAT, ["N", 4, 4, 4])), "has 4 channels in layout NCHW"),
])
def test_image_folder_errors(tmp_path: Path, setup: Callable[[Path], Any], model: onnx.ModelProto,
                             message: str) -> None:
    _image(tmp_path / "dog" / "a.png", _pixels(0, (4, 4, 3)))
    (tmp_path / "labels.txt").write_text("dog\n")
    setup(tmp_path)

    with pytest.raises(DataError) as caught:
        list(open_data(tmp_path, model).batches())
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text, message", [
    ("size=3", "expected key=value with key one of"),
    ("resize=big", "cannot read the value 'big'"),
    ("crop=0", "expected a positive size"),
    ("order=RBG", "expected one of RGB, BGR"),
    ("std=0", "std not 0"),
])
def test_preprocess_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ImagePreprocess.parse(text)


def test_preprocess_parse_and_str_round_trip() -> None:
    text = "resize=256,crop=224x200,scale=1/255,mean=0.485:0.456:0.406,std=0.229:0.224:0.225,order=bgr,layout=NHWC"

    p = ImagePreprocess.parse(text)

    assert p == ImagePreprocess(resize=256, crop=(224, 200), scale=1 / 255, mean=(0.485, 0.456, 0.406),
                                std=(0.229, 0.224, 0.225), order="BGR", layout="NHWC")
    assert ImagePreprocess.parse(str(p)) == p


@pytest.mark.parametrize("spec, shape, message", [
    (ImagePreprocess(crop=5), ["N", 3, 4, 4], "preprocess makes 5x5 images; input 'x' [N, 3, 4, 4] wants 4x4"),
    (ImagePreprocess(grayscale=True), ["N", 3, 4, 4], "grayscale=True does not fit"),
    (ImagePreprocess(mean=(1.0, 2.0)), ["N", 3, 4, 4], "mean has 2 values"),
    (ImagePreprocess(dtype="float16"), ["N", 3, 4, 4], "dtype=float16 does not fit"),
    (ImagePreprocess(), ["N", 3], "rank-4 (NCHW/NHWC) or rank-3 (NHW) inputs"),
])
def test_preprocess_checked_against_the_model(spec: ImagePreprocess, shape: list[Any], message: str) -> None:
    with pytest.raises(DataError) as caught:
        spec.for_input(input_specs(_model(("x", FLOAT, shape)))[0])

    assert message in str(caught.value)


def test_progress_bar_does_not_change_the_batches(tmp_path: Path) -> None:
    source = open_data(_npz(tmp_path, {"x": _x()}, None), SINGLE)

    with_bar = [b.inputs["x"] for b in source.batches(4, progress=True, description="reading")]

    np.testing.assert_array_equal(np.concatenate(with_bar), _x())
    assert [len(b) for b in with_bar] == [4, 4, 2]


# -- scalar (rank-0) inputs --------------------------------------------------------------------------

SCALED = _model(("x", FLOAT, ["N", 3]), ("t", FLOAT, []))


def test_scalar_inputs_ride_along_and_split_batches_where_they_change() -> None:
    # setup: two chunks with t = 1 and one with t = 2
    chunks = [{"x": _x(3), "t": np.float32(1.0)}, {"x": _x(2), "t": np.float32(1.0)},
              {"x": _x(4), "t": np.float32(2.0)}]
    # execute
    batches = list(open_data(chunks, SCALED).batches(4))
    # assert: t = 1 samples merge (5 = 4 + 1), t = 2 samples stay apart, t is never batched
    assert [(b.size, float(b.inputs["t"])) for b in batches] == [(4, 1.0), (1, 1.0), (4, 2.0)]
    assert all(b.inputs["t"].ndim == 0 for b in batches)


def test_scalar_inputs_from_npz_and_random_data_run_in_onnxruntime(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=_x(5), t=np.float32(3.0))
    session = make_session(SCALED)
    for source in (open_data(tmp_path / "d.npz", SCALED), open_data("random:6", SCALED)):
        batches = list(source.batches(4))
        assert sum(b.size for b in batches) == source.num_samples
        for batch in batches:
            x_out, t_out = session.run(None, batch.inputs)
            assert x_out.shape == (batch.size, 3) and t_out.shape == ()


def test_a_model_with_only_scalar_inputs_gets_one_chunk_per_run() -> None:
    model = _model(("t", FLOAT, []))
    batches = list(open_data([{"t": np.float32(v)} for v in (1.0, 1.0, 2.0)], model).batches(8))
    assert [(b.size, float(b.inputs["t"])) for b in batches] == [(1, 1.0), (1, 1.0), (1, 2.0)]


@pytest.mark.parametrize("dtype, units", [(FLOAT, "1/255 (mean/std in [0, 1] units)"),
                                          (UINT8, "1 (mean/std in pixel units 0-255)")])
def test_mean_and_std_without_scale_is_refused_naming_the_assumed_units(tmp_path: Path, dtype: int, units: str) -> None:
    _image(tmp_path / "a.png", _pixels(0, (4, 4, 3)))
    model = _model(("x", dtype, ["N", 3, 4, 4]))

    with pytest.raises(DataError) as caught:
        open_data(tmp_path, model, preprocess=ImagePreprocess.parse("mean=127,std=128"))

    assert str(caught.value) == (f"preprocess mean=127,std=128 without scale: for input 'x' [N, 3, 4, 4] the default "
                                 f"scale is {units}; say which units mean/std are in: scale=1 for pixel values 0-255, "
                                 "scale=1/255 for [0, 1]")


def test_image_source_says_which_preprocessing_defaults_it_used(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", _pixels(0, (4, 4, 3)))

    source = open_data(tmp_path, _model(("x", FLOAT, ["N", 3, 4, 4])), preprocess=ImagePreprocess.parse("order=BGR"))

    assert source.description.endswith("; defaults used: resize, scale, mean, std, layout, grayscale, dtype)")
    assert "resize=4x4,scale=0.00392156862745098,mean=0.0,std=1.0,order=BGR,layout=NCHW" in source.description


# -- sample axes -------------------------------------------------------------------------------

def _stateful() -> onnx.ModelProto:
    """x [B, 4] and a recurrent state [2, B, 8] share the batch B; a scalar rate and a weight fed as an
    input have none."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[B, 4] x, float[2, B, 8] state, float rate, float[8, 3] w2) => (float[B, 3] y) {
            h = MatMul(x, w1)
            s = ReduceMean <axes=[0], keepdims=0> (state)
            a = Add(h, s)
            r = Mul(a, rate)
            y = MatMul(r, w2)
        }""")
    model.graph.initializer.append(numpy_helper.from_array(np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8), "w1"))
    onnx.checker.check_model(model, full_check=True)
    return model


def _stateful_dict(rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((b, 4)).astype(np.float32),
            "state": rng.standard_normal((2, b, 8)).astype(np.float32),
            "rate": np.float32(0.5), "w2": np.ones((8, 3), np.float32)}


@pytest.mark.parametrize("shapes, expected", [
    ({"x": ["B", 4], "state": [2, "B", 8], "rate": [], "w2": [8, 3]}, {"x": 0, "state": 1, "rate": None, "w2": None}),
    ({"x": ["N", 3], "y": ["N"]}, {"x": 0, "y": 0}),
    ({"x": [4, 3], "y": [4]}, {"x": 0, "y": 0}),
    ({"x": [None, 3], "y": ["N", 2]}, {"x": 0, "y": 0}),
    ({"x": [3, 4, 5], "y": [5]}, {"x": None, "y": None}),
    ({"x": [2, "T"], "y": [3, "T"]}, {"x": 1, "y": 1}),
    ({"tokens": ["B", "T"], "mask": [1, "T"]}, {"tokens": 0, "mask": None}),
])
def test_sample_axes_come_from_the_declared_shapes(shapes: dict[str, list[Any]], expected: dict[str, Any]) -> None:
    # setup
    model = _model(*((name, FLOAT, shape) for name, shape in shapes.items()))
    # execute
    axes = {s.name: s.sample_axis for s in input_specs(model)}
    # assert
    assert axes == expected


def test_a_stateful_model_batches_its_state_on_axis_1_and_passes_the_rest_whole() -> None:
    # setup: three dicts of 5, 7 and 2 samples
    rng = np.random.default_rng(0)
    dicts = [_stateful_dict(rng, b) for b in (5, 7, 2)]
    source = open_data(dicts, _stateful())
    # execute
    batches = list(source.batches(4))
    # assert: samples regrouped in 4s along each input's own axis; the whole inputs ride along unchanged
    assert [b.size for b in batches] == [4, 4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.inputs["x"] for b in batches]),
                                  np.concatenate([d["x"] for d in dicts]))
    np.testing.assert_array_equal(np.concatenate([b.inputs["state"] for b in batches], axis=1),
                                  np.concatenate([d["state"] for d in dicts], axis=1))
    assert all(b.inputs["w2"].shape == (8, 3) and b.inputs["rate"].shape == () for b in batches)
    assert source.feed_note() == ("input(s) rate, w2 have no sample axis and are passed whole with every batch; "
                                  "samples lie on state (axis 1)")
    session = make_session(_stateful())
    assert all(session.run(None, b.inputs)[0].shape == (b.size, 3) for b in batches)


def test_without_a_sample_axis_each_dict_is_one_run() -> None:
    # setup: a single-op test whose inputs share no batch dimension
    model = _model(("x", FLOAT, [3, 4, 5]), ("y", FLOAT, [5]))
    dicts = [{"x": np.zeros((3, 4, 5), np.float32), "y": np.full(5, float(i), np.float32)} for i in range(3)]
    # execute
    batches = list(open_data(dicts, model).batches(32))
    random = list(open_data("random:2", model).batches(32))
    # assert
    assert [b.inputs["y"][0] for b in batches] == [0.0, 1.0, 2.0]
    assert [b.size for b in batches] == [1, 1, 1]
    assert [b.inputs["x"].shape for b in random] == [(3, 4, 5), (3, 4, 5)]
    assert not np.array_equal(random[0].inputs["y"], random[1].inputs["y"])


def test_random_data_for_a_stateful_model() -> None:
    # execute
    batches = list(open_data("random:6", _stateful()).batches(4))
    # assert
    assert [b.inputs["state"].shape for b in batches] == [(2, 4, 8), (2, 2, 8)]
    assert all(b.inputs["w2"] is batches[0].inputs["w2"] for b in batches)
