"""Benchmark of the fp16 pass against onnxconverter-common's converter.

For every model: ours (``Fp16()``), ours with calibration data where the model has some, and
``onnxconverter_common.float16.convert_float_to_float16(model, keep_io_types=True)``. Columns:
whether the conversion succeeds and the result passes the full checker and loads in onnxruntime
(CPU), the number of Cast nodes, the file size against float32, top-1 agreement with float32 (and
accuracy where labels exist) as onnxruntime's CPU provider computes it and with every float16
activation rounded to float16 (what a float16 runtime such as CUDA stores), the largest relative
output error, and the paired latency ratio float16/float32 on CPU (1 intra-op thread, graph
optimizations on, batch 1). Models: the bundled models (their eval/calib data), the real models of
../shared/models (real inputs as described), the onnx package's backend-test "light" models
(placeholder weights, seeded random inputs: structure, loading and latency only), and small graphs
with the constructs converters are known to break (Resize scales, If/Loop bodies, a Cast to float,
an op without a float16 kernel). Writes the "fp16" section of docs/BENCHMARKS.md.

    .venv/bin/python bench/bench_fp16.py [--runs 30] [--skip-light]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, MODELS, SHARED_MODELS,  # noqa: E402
                           bundled_eval, fashion_mnist_test, markdown_table, setup_logging, write_section)
from onnxopt.data import DataSource, input_specs, open_data  # noqa: E402
from onnxopt.graph import export, import_graph  # noqa: E402
from onnxopt.latency import paired_latency  # noqa: E402
from onnxopt.pass_base import PassContext  # noqa: E402
from onnxopt.pipeline import Pipeline  # noqa: E402
from onnxopt.runtime import make_session  # noqa: E402
from passes.fp16.calib import materialise_float16  # noqa: E402
from passes.fp16 import Fp16  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
COMMAND = ".venv/bin/python bench/bench_fp16.py"


def _fashion_mnist_images(count: int) -> tuple[np.ndarray, str]:
    """``count`` Fashion-MNIST test images as 0-255 float32 ``[count, 1, 1, 28, 28]``: from the Debian
    package when installed, else from the bundled resnet_fmnist evaluation set (the same test split,
    normalisation undone)."""
    split = fashion_mnist_test()
    if split is not None:
        return split[0][:count].reshape(-1, 1, 1, 28, 28).astype(np.float32), "Debian dataset-fashion-mnist"
    with np.load(MODELS / "resnet_fmnist.eval.npz") as npz:
        x = npz["input"][:count]
    pixels = np.clip(np.round((x * FASHION_MNIST_STD + FASHION_MNIST_MEAN) * 255), 0, 255).astype(np.float32)
    return pixels.reshape(-1, 1, 1, 28, 28), "bundled resnet_fmnist.eval.npz"


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    samples: list[dict[str, np.ndarray]]  # evaluation batches
    data: str  # what the samples are
    labels: np.ndarray | None = None
    calibration: DataSource | None = None


@dataclass
class Row:
    converter: str
    error: str = ""
    checker: str = "–"
    casts: int = 0
    size: float = 0.0
    agree_cpu: float = float("nan")
    agree_fp16: float = float("nan")
    accuracy: str = ""
    max_err: float = float("nan")
    max_err_fp16: float = float("nan")
    latency: str = ""
    seconds: float = 0.0


# -- cases ------------------------------------------------------------------------------------
def bundled_cases() -> list[Case]:
    cases = []
    for path in sorted(MODELS.glob("*.onnx")):
        eval_path, calib_path = path.with_suffix(".eval.npz"), path.with_suffix(".calib.npz")
        if not eval_path.exists():
            continue
        model = onnx.load(str(path))
        x, labels, described = bundled_eval(path.stem)
        calib = open_data(calib_path, model) if calib_path.exists() else None
        cases.append(Case(path.stem, model, [{"input": x[i:i + 256]} for i in range(0, len(x), 256)],
                          described, labels, calib))
    return cases


def shared_cases() -> list[Case]:
    from PIL import Image

    cases = []
    mnist = onnx.load(str(SHARED_MODELS / "mnist.onnx"))
    images, origin = _fashion_mnist_images(300)
    name = input_specs(mnist)[0].name
    cases.append(Case("mnist.onnx", mnist, [{name: im} for im in images],
                      f"300 Fashion-MNIST test images ({origin}), 0-255 (real images, not digits: agreement only)",
                      calibration=open_data([{name: im} for im in images[:32]], mnist)))

    squeeze = upcast_float16(onnx.load(str(SHARED_MODELS / "SqueezeNet_fp16.onnx")))
    kitten = np.asarray(Image.open(SHARED_MODELS / "kitten_224.png").convert("RGB"), np.float32)[:, :, ::-1]
    base = (kitten - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1)
    variants = [base, base[:, :, ::-1], np.roll(base, 8, 1), np.roll(base, -8, 2), base * 0.8, base * 1.2,
                np.roll(base[:, :, ::-1], 16, 2), np.roll(base, 16, 1) * 0.9]
    name = input_specs(squeeze)[0].name
    samples = [{name: np.ascontiguousarray(v[None], np.float32)} for v in variants]
    cases.append(Case("SqueezeNet (float16 upcast to float32)", squeeze, samples,
                      "kitten_224.png and 7 flips/shifts/brightness variants (BGR - mean)",
                      calibration=open_data(samples, squeeze)))

    face = onnx.load(str(SHARED_MODELS / "ultraface-RFB-320.onnx"))
    photo = Image.open(SHARED_MODELS / "ultraface-sample.jpg").convert("RGB")
    crops = [photo.resize((320, 240)), photo.transpose(Image.FLIP_LEFT_RIGHT).resize((320, 240)),
             photo.crop((0, 0, photo.width // 2, photo.height // 2)).resize((320, 240)),
             photo.crop((photo.width // 2, photo.height // 2, photo.width, photo.height)).resize((320, 240))]
    name = input_specs(face)[0].name
    samples = [{name: ((np.asarray(c, np.float32) - 127) / 128).transpose(2, 0, 1)[None].copy()} for c in crops]
    cases.append(Case("ultraface-RFB-320.onnx", face, samples,
                      "ultraface-sample.jpg: whole, flipped, two quarter crops (agreement = face/background per anchor)",
                      calibration=open_data(samples, face)))
    return cases


def light_cases() -> list[Case]:
    cases = []
    for path in sorted(LIGHT.glob("*.onnx")):
        model = onnx.load(str(path))
        data = open_data("random:2", model, seed=0)
        samples = [b.inputs for b in data.batches(1)]
        cases.append(Case(path.name, model, samples, "2 seeded random inputs (placeholder weights)",
                          calibration=open_data("random:2", model, seed=1)))
    return cases


def synthetic_cases() -> list[Case]:
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    graphs: dict[str, tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]] = {
        "Resize with roi/scales": ("""
            g (float[1,2,4,4] x) => (float[1,2,8,8] y) { r = Relu(x)  y = Resize <mode="linear"> (r, roi, scales) }""",
            {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)}, {"x": f32(1, 2, 4, 4)}),
        "If with outer-scope weights": ("""
            g (float[N,4] x, bool c) => (float[N,4] y) {
                y = If(c) <then_branch = t () => (float[N,4] a) { a = MatMul(x, w) },
                           else_branch = e () => (float[N,4] b) { b = Mul(x, v) }> }""",
            {"w": f32(4, 4), "v": f32(4)}, {"x": f32(3, 4), "c": np.array(True)}),
        "Loop with float state": ("""
            g (float[N,4] x, int64 n) => (float[N,4] y) {
                cond = Constant <value = bool {1}> ()
                y = Loop(n, cond, x) <body = b (int64 i, bool ci, float[N,4] s) => (bool co, float[N,4] so) {
                    co = Identity(ci)  m = MatMul(s, w)  so = Tanh(m) }> }""",
            {"w": f32(4, 4) / 2}, {"x": f32(3, 4), "n": np.array(3)}),
        "Cast int64 -> float": ("""
            g (int64[N,4] k) => (float[N,4] y) { kf = Cast <to=1> (k)  y = Mul(kf, w) }""",
            {"w": f32(4)}, {"k": rng.integers(-50, 50, (3, 4))}),
        "RandomNormal (no CPU float16 kernel)": ("""
            g (float[N,4] x) => (float[N,4] y) {
                r = RandomNormal <dtype=1, shape=[4], seed=1.0> ()  z = Mul(r, zero)  y = Add(x, z) }""",
            {"zero": np.zeros(4, np.float32)}, {"x": f32(3, 4)}),
    }
    cases = []
    for name, (text, inits, feeds) in graphs.items():
        model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n' + text)
        model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items())
        onnx.checker.check_model(model, full_check=True)
        cases.append(Case(name, model, [feeds], "seeded random inputs"))
    return cases


def upcast_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of a float16 model: initializers and value types (SOURCES.md says this gives a
    working float32 SqueezeNet)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for vi in [*out.graph.input, *out.graph.output, *out.graph.value_info]:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.checker.check_model(out)
    return out


# -- converters -------------------------------------------------------------------------------
def ours(case: Case, calibrated: bool) -> onnx.ModelProto:
    ctx = PassContext(calibration=case.calibration if calibrated else None, threads=1)
    return Pipeline([Fp16()]).run(case.model, ctx).model


def theirs(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common.float16 import convert_float_to_float16

    with warnings.catch_warnings():  # it warns once per truncated value
        warnings.simplefilter("ignore")
        return convert_float_to_float16(model, keep_io_types=True)


def rounded(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every float16 activation forced through float16 storage (see _fp16_calib)."""
    graph = import_graph(model)
    materialise_float16(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return export(graph, model)


# -- measuring --------------------------------------------------------------------------------
def outputs(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = make_session(model)
    runs = [session.run(None, s) for s in samples]
    return [np.concatenate([r[k] for r in runs]).astype(np.float32) for k in range(len(runs[0]))]


def first_line(exc: Exception) -> str:
    """The informative part of an error: onnxruntime's last "[ONNXRuntimeError] : n : KIND :" message."""
    text = str(exc.__cause__ or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.split(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", text)[-1]
    text = re.sub(r"^/\S+:\d+ \S+\(.*?\) ", "", text)
    return text[:110]


def count_casts(graph: onnx.GraphProto) -> int:
    """Cast nodes in ``graph`` and its subgraphs."""
    return sum(1 if n.op_type == "Cast" else 0 for n in graph.node) + sum(
        count_casts(a.g) for n in graph.node for a in n.attribute if a.HasField("g"))


def top1(out: np.ndarray) -> np.ndarray:
    squeezed = out.reshape(out.shape[:2] + tuple(d for d in out.shape[2:] if d != 1))
    return squeezed.reshape(-1, squeezed.shape[-1]).argmax(-1)


def compare(ref: list[np.ndarray], new: list[np.ndarray]) -> tuple[float, float]:
    agree = float(np.mean(top1(ref[0]) == top1(new[0])))
    errs = [float(np.nanmax(np.abs(a - b)) / max(float(np.nanmax(np.abs(a))), 1e-12)) if np.isfinite(b).all()
            else float("inf") for a, b in zip(ref, new)]
    return agree, max(errs)


def measure(case: Case, label: str, convert: Callable[[], onnx.ModelProto], ref: list[np.ndarray],
            baseline: onnx.ModelProto, runs: int) -> Row:
    row = Row(label)
    start = time.perf_counter()
    try:
        model = convert()
        row.seconds = time.perf_counter() - start
    except Exception as exc:  # a converter's failure is a result here, whatever its type
        row.error = f"conversion fails: {first_line(exc)}"
        return row
    try:
        onnx.checker.check_model(model, full_check=True)
        row.checker = "pass"
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row.checker = f"fails: {first_line(exc)}"
    try:
        new = outputs(model, case.samples)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row.error = f"onnxruntime: {first_line(exc)}"
        return row
    row.casts = count_casts(model.graph)
    row.size = model.ByteSize() / case.model.ByteSize()
    row.agree_cpu, row.max_err = compare(ref, new)
    if case.labels is not None:
        acc = lambda out: float(np.mean(top1(out) == case.labels))  # noqa: E731
        row.accuracy = f"{acc(ref[0]):.4f} → {acc(new[0]):.4f}"
    try:
        row.agree_fp16, row.max_err_fp16 = compare(ref, outputs(rounded(model), case.samples))
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        logging.warning("%s / %s: the fp16-rounded run failed: %s", case.name, label, first_line(exc))
    if runs:
        feeds = {k: v[:1] for k, v in case.samples[0].items()}
        lat = paired_latency(make_session(baseline, threads=1, optimize=True), feeds,
                             make_session(model, threads=1, optimize=True), feeds, runs=runs, warmup=3)
        row.latency = f"{lat.ratio:.2f} ({lat.ratio_p10:.2f}–{lat.ratio_p90:.2f})"
    return row


def run_case(case: Case, runs: int) -> list[Row]:
    logging.info("%s", case.name)
    ref = outputs(case.model, case.samples)
    # latency baseline: the float32 model through an empty pipeline, so initializers that the original
    # also lists as graph inputs (IR >= 4) no longer stop onnxruntime's constant folding and fusions
    baseline = Pipeline([]).run(case.model).model
    rows = [measure(case, "ours", lambda: ours(case, False), ref, baseline, runs)]
    if case.calibration is not None:
        rows.append(measure(case, "ours + calibration", lambda: ours(case, True), ref, baseline, runs))
    rows.append(measure(case, "onnxconverter-common", lambda: theirs(case.model), ref, baseline, runs))
    if len(baseline.graph.input) != len(case.model.graph.input):  # initializers listed as inputs
        rows.append(measure(case, "onnxconverter-common, re-exported input", lambda: theirs(baseline), ref,
                            baseline, runs))
    return rows


def fmt(v: float, spec: str = ".4f") -> str:
    return "–" if v != v else format(v, spec)


def table(results: list[tuple[Case, list[Row]]], with_accuracy: bool) -> str:
    headers = ["model", "converter", "convert s", "full checker", "loads in ORT", "Casts", "size ×",
               "top-1 agree (CPU)", "top-1 agree (fp16-rounded)", "max rel. err (CPU / fp16-rounded)",
               "latency fp16/fp32 (p10–p90)"]
    if with_accuracy:
        headers.insert(9, "accuracy fp32 → fp16")
    rows = []
    for case, case_rows in results:
        for r in case_rows:
            head = [case.name, r.converter, f"{r.seconds:.2f}" if r.seconds else "–", r.checker]
            if r.error:
                cells = head + [f"no: {r.error}"] + ["–"] * (len(headers) - len(head) - 1)
            else:
                cells = head + ["yes", r.casts, f"{r.size:.3f}", fmt(r.agree_cpu), fmt(r.agree_fp16),
                                f"{fmt(r.max_err, '.1e')} / {fmt(r.max_err_fp16, '.1e')}", r.latency or "–"]
                if with_accuracy:
                    cells.insert(9, r.accuracy or "–")
            rows.append(cells)
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="paired latency runs per model (0: skip latency)")
    parser.add_argument("--light-runs", type=int, default=10, help="paired latency runs per light model")
    parser.add_argument("--skip-light", action="store_true", help="leave out the onnx backend-test light models")
    args = parser.parse_args()
    setup_logging(quiet_library=True)

    real = [(c, run_case(c, args.runs)) for c in bundled_cases() + shared_cases()]
    light = [] if args.skip_light else [(c, run_case(c, args.light_runs)) for c in light_cases()]
    synthetic = [(c, run_case(c, 0)) for c in synthetic_cases()]
    command = f"{COMMAND} --runs {args.runs} " + (
        "--skip-light" if args.skip_light else f"--light-runs {args.light_runs}")
    write_section("fp16", command, report(real, light, synthetic, args.runs, args.light_runs))


def report(real: list[tuple[Case, list[Row]]], light: list[tuple[Case, list[Row]]],
           synthetic: list[tuple[Case, list[Row]]], runs: int, light_runs: int) -> str:
    data_lines = "\n".join(f"- **{c.name}**: {c.data}" for c, _ in real + light[:1] + synthetic[:1])
    parts = [
        "## fp16: float16 conversion vs onnxconverter-common",
        "",
        "Ours is `Fp16()` with its defaults (keep_io_types, BatchNormalization folded first, provider probe on CPUExecutionProvider); "
        "\"+ calibration\" adds the model's calibration data (range guard and per-node error check). "
        "Theirs is `onnxconverter_common.float16.convert_float_to_float16(model, keep_io_types=True)`; where "
        "the original lists its initializers as graph inputs (IR 3/4 exports), theirs is also run on the model "
        "re-exported by an empty onnxopt pipeline (\"re-exported input\"), its best chance. "
        "*loads in ORT*: the conversion succeeded and the result loads and runs in onnxruntime "
        "(CPU); *full checker*: `onnx.checker.check_model(full_check=True)` (strict type inference). *Casts*: Cast nodes, "
        "subgraphs included. *size ×*: serialized size / float32. *top-1 agree (CPU)*: argmax agreement with float32 as "
        "onnxruntime's CPU provider computes the float16 model; *(fp16-rounded)*: the same with every float16 "
        "activation forced through float16 storage (an Identity after each node), which is what a float16 "
        "runtime computes. *max rel. err*: largest |fp16 − fp32| / max|fp32| over all outputs, for the CPU run and the "
        "fp16-rounded run (inf: non-finite outputs, i.e. float16 overflow).",
        "",
        f"Latency: paired, interleaved runs (`onnxopt.latency.paired_latency`, {runs} pairs for the real models, "
        f"{light_runs} for the light ones, 3 warm-up), "
        "CPUExecutionProvider, 1 intra-op thread, graph optimizations on, batch 1; median ratio of "
        "float16/float32 per pair with the 10th–90th percentile. The float32 side is the model re-exported by "
        "an empty onnxopt pipeline: models that list their initializers as graph inputs (ultraface) stop "
        "onnxruntime from folding BatchNormalization into Conv, and any converter that drops those inputs "
        "would otherwise look ~2× faster for a reason unrelated to float16. **On CPU float16 is a size "
        "optimisation, not a speed one**: onnxruntime has no native float16 kernels for Conv, MatMul, Gemm, "
        "Relu, pooling or most elementwise ops on x86 CPUs, so it wraps them in Casts to float32 at load "
        "time and runs them in float32 (which is also why the CPU agreement reflects weight rounding only). "
        "No GPU was available in this session: CUDA latency was not measured.",
        "",
        "Data:",
        data_lines,
        "",
        "### Real models",
        "",
        table(real, with_accuracy=True),
    ]
    if light:
        parts += ["", "### onnx backend-test light models (placeholder weights, random inputs)", "",
                  "The placeholder weights (constants generated by ConstantOfShape) make activations grow past "
                  "the float16 range (up to ~1e20): outputs are constant, so top-1 agreement says nothing here; "
                  "what matters is whether the float16 outputs stay finite (max rel. err not inf) and the Cast "
                  "count. The files hold no weights, so the size ratio only reflects type annotations.", "", table(light, with_accuracy=False)]
    parts += ["", "### Constructs converters are known to break (tiny graphs, random inputs)", "",
              table(synthetic, with_accuracy=False)]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
