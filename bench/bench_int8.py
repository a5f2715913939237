"""Benchmark of the int8 pass against onnxruntime.quantization.quantize_static.

Both tools quantize the same float32 model (third-party models upgraded to opset 13 first, since
per-channel Q/DQ needs it) with per-channel int8 weights and uint8 activations (U8S8, QDQ format),
MinMax and Entropy calibration; onnxruntime runs ``quant_pre_process`` first (with
``skip_symbolic_shape=True``: sympy is not installed). Each tool run is a subprocess that reports its
own wall time and peak RSS (``VmHWM`` of /proc/self/status), so the numbers include the interpreter
and onnxruntime (~80 MB) but nothing else. Accuracy and agreement are measured with onnxruntime's
optimizations on (the fused integer kernels); latency is the paired ratio int8/float32 (CPU, 1
intra-op thread, graph optimizations on). Writes the "int8" section of docs/BENCHMARKS.md.

    .venv/bin/python bench/bench_int8.py [--models resnet_fmnist,mnist] [--no-memory] [--runs 50]
"""

from __future__ import annotations

import argparse
import compileall
import json
import logging
import math
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (MODELS, ROOT, SHARED_MODELS, WORK, bundled_eval, fashion_mnist_test,  # noqa: E402
                           markdown_table, setup_logging, write_section)
from onnxopt.hardware import cpu_info  # noqa: E402
from onnxopt.latency import paired_latency  # noqa: E402
from onnxopt.runtime import make_session  # noqa: E402

OUT = WORK / "int8"
BUNDLED = ("resnet_fmnist", "vgg_digits", "mlp_fmnist")
LIGHT = (("light_squeezenet", 4), ("light_shufflenet", 2), ("light_inception_v1", 4), ("light_densenet121", 8),
         ("light_resnet50", 12), ("light_bvlc_alexnet", 12))  # (name, latency cost: fewer paired runs)
TOOLS = (("onnxopt", "minmax"), ("onnxopt", "entropy"), ("ort", "minmax"), ("ort", "entropy"))
#: extra rows on the bundled models: each tool with the other's weight range (see the notes below the table)
VARIANTS = (("onnxopt", "minmax", "7-bit weights"), ("ort", "minmax", "reduce_range"))
MEMORY_SAMPLES = (100, 1000, 3000)


# -- models and data ------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    title: str
    model_path: Path
    calib_path: Path
    eval_path: Path
    input_name: str
    batch: int
    dynamic_batch: bool
    metric: str  # "top1", "detection" or "none" (placeholder weights)
    cost: int
    data_note: str
    bundled: bool = False
    #: seconds of the calibration floor (see ``_worker``), measured in ``bench_case``
    floor_seconds: float | None = None

    def tiled(self, samples: int) -> Path:
        """The calibration set tiled to ``samples`` samples, each copy with N(0, 0.02) noise added."""
        path = OUT / self.name / f"calib_tiled_{samples}.npz"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with np.load(self.calib_path) as npz:
                x = npz[self.input_name]
            rng = np.random.default_rng(samples)
            reps = -(-samples // len(x))
            tiled = np.concatenate([x] * reps)[:samples]
            noise = rng.normal(0.0, 0.02, tiled.shape).astype(np.float32)
            noise[: len(x)] = 0.0
            np.savez(path, **{self.input_name: (tiled + noise).astype(np.float32)})
        return path


def _opset13(src: Path, dest: Path) -> Path:
    """The model at opset 13, with initializers no longer listed as graph inputs (old IR style that
    onnxruntime's calibrator would otherwise ask to be fed)."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        model = onnx.version_converter.convert_version(onnx.load(str(src)), 13)
        inits = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        model.ir_version = max(model.ir_version, 7)
        onnx.save(model, str(dest))
    return dest


def _save(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _digits_28() -> tuple[np.ndarray, np.ndarray | None, str]:
    """Digits as [N, 1, 28, 28] in 0..255 with labels: scikit-learn's (8x8), else the bundled vgg_digits
    eval set (16x16); without either, Fashion-MNIST test images (real, but not digits: no labels)."""
    from PIL import Image

    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels, note = digits.images / 16.0, digits.target, "scikit-learn digits (1797)"
    except ImportError:
        path = MODELS / "vgg_digits.eval.npz"
        split = None if path.exists() else fashion_mnist_test()
        if split is not None:
            return (split[0][:1000].astype(np.float32)[:, None], None,
                    "Fashion-MNIST test images (1000; no digit data installed: agreement only)")
        with np.load(path) as npz:
            images, labels = npz["input"][:, 0], npz["label"]
        note = f"bundled vgg_digits eval images ({len(labels)}; scikit-learn not installed)"
    # MNIST's layout: the digit scaled to 20x20 and centred in 28x28, ink 255 on 0
    digits = np.stack([np.asarray(Image.fromarray(im.astype(np.float32)).resize((20, 20), Image.BILINEAR))
                       for im in images])
    x = np.zeros((len(digits), 1, 28, 28), np.float32)
    x[:, 0, 4:24, 4:24] = np.clip(digits, 0, 1) * 255
    return x, labels.astype(np.int64), note + ", scaled to 20x20 and centred in 28x28 as in MNIST"


def _face_images(count: int, seed: int) -> np.ndarray:
    """Random crops / flips / brightness of the one real photo, as [N, 3, 240, 320], (x - 127) / 128."""
    from PIL import Image

    photo = Image.open(SHARED_MODELS / "ultraface-sample.jpg").convert("RGB")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        scale = rng.uniform(0.6, 1.0)
        w, h = int(photo.width * scale), int(photo.height * scale)
        left, top = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
        crop = photo.crop((left, top, left + w, top + h)).resize((320, 240), Image.BILINEAR)
        arr = np.asarray(crop, np.float32) * rng.uniform(0.7, 1.3)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out.append(((np.clip(arr, 0, 255) - 127.0) / 128.0).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def prepare_cases(subset: list[str]) -> list[Case]:
    def wanted(name: str) -> bool:
        return not subset or name in subset

    cases = []
    for name in BUNDLED:
        if wanted(name) and (MODELS / f"{name}.onnx").exists():
            x, labels, evaluation = bundled_eval(name)
            with np.load(MODELS / f"{name}.calib.npz") as c:
                note = f"calibrate on its calib.npz ({len(c['input'])}), evaluate on {evaluation}"
            cases.append(Case(name, f"{name} (bundled)", MODELS / f"{name}.onnx", MODELS / f"{name}.calib.npz",
                              _save(OUT / name / "eval.npz", input=x, label=labels), "input", 8, True, "top1", 1,
                              note, bundled=True))
    if wanted("mnist"):
        x, y, note = _digits_28()
        d = OUT / "mnist"
        evaluation = {"Input3": x[128:]} if y is None else {"Input3": x[128:], "label": y[128:]}
        cases.append(Case("mnist", "mnist.onnx", _opset13(SHARED_MODELS / "mnist.onnx", d / "model.onnx"),
                          _save(d / "calib.npz", Input3=x[:128]), _save(d / "eval.npz", **evaluation),
                          "Input3", 1, False, "top1", 1, f"{note}: first 128 calibrate, the rest evaluate"))
    d = OUT / "ultraface"
    if wanted("ultraface"):
        cases.append(Case("ultraface", "ultraface-RFB-320 (photo crops)",
                          _opset13(SHARED_MODELS / "ultraface-RFB-320.onnx", d / "model.onnx"),
                          _save(d / "calib.npz", input=_face_images(32, 1)),
                          _save(d / "eval.npz", input=_face_images(32, 2)), "input", 1, False, "detection", 6,
                          "32 calibration / 32 evaluation random crops, flips and brightness changes of the photo"))
    light_dir = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    for name, cost in LIGHT:
        if not wanted(name):
            continue
        d, rng, key = OUT / name, np.random.default_rng(0), _input(light_dir / f"{name}.onnx")
        cases.append(Case(name, f"{name} (random inputs)", _opset13(light_dir / f"{name}.onnx", d / "model.onnx"),
                          _save(d / "calib.npz", **{key: rng.standard_normal((8, 3, 224, 224)).astype(np.float32)}),
                          _save(d / "eval.npz", **{key: rng.standard_normal((4, 3, 224, 224)).astype(np.float32)}),
                          key, 1, False, "none", cost,
                          "onnx's light test model: real topology, placeholder weights; random N(0,1) inputs, "
                          "8 calibrate / 4 evaluate (latency, time and memory only)"))
    return cases


def _input(path: Path) -> str:
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def memory_cases() -> list[Case]:
    """The models of the 3000-sample runs: the bundled vgg_digits and resnet_fmnist (the issue measured
    quantize_static's growth on a small ResNet), else mnist.onnx."""
    return prepare_cases(["vgg_digits", "resnet_fmnist"]) or prepare_cases(["mnist"])


# -- one tool run, in its own process -------------------------------------------------------------

def _worker(job: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    if job["tool"] == "onnxopt":
        from onnxopt.data import open_data
        from onnxopt.pass_base import PassContext
        from onnxopt.pipeline import Pipeline
        from passes.int8 import Int8

        model = onnx.load(job["model"])
        ctx = PassContext(calibration=open_data(job["calib"], model))
        settings = {"reduce_range": True} if job["variant"] else {}
        result = Pipeline([Int8(method=job["method"], batch_size=job["batch"], **settings)]).run(model, ctx)
        onnx.save(result.model, job["out"])
        fusion = result.reports[0].details["fusion"]
        extra = {"integer_layers": fusion["integer_layers"], "layers": fusion["layers"]}
    elif job["tool"] == "floor":  # the calibration inference alone, with what quantize_static's calibrators fetch
        import onnxruntime as ort

        model = onnx.load(job["model"])
        existing = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=name) for node in model.graph.node
                                  for name in node.output if name and name not in existing)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        with np.load(job["calib"]) as npz:
            x = npz[job["input"]]
        for i in range(0, len(x), job["batch"]):
            session.run(None, {job["input"]: x[i:i + job["batch"]]})
        extra = {}
    else:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                with np.load(job["calib"]) as npz:
                    self.x = npz[job["input"]]
                self.i = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self.i >= len(self.x):
                    return None
                self.i += job["batch"]
                return {job["input"]: self.x[self.i - job["batch"]:self.i]}

        pre = job["out"].replace(".onnx", ".pre.onnx")
        quant_pre_process(job["model"], pre, skip_symbolic_shape=True)
        method = CalibrationMethod.MinMax if job["method"] == "minmax" else CalibrationMethod.Entropy
        quantize_static(pre, job["out"], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=bool(job["variant"]), activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method)
        extra = {}
    return {"seconds": time.perf_counter() - start, "peak_mb": _peak_rss_mb(), **extra}


def _peak_rss_mb() -> float:
    """This process's peak RSS. ``VmHWM`` belongs to the address space created by exec, whereas
    ``ru_maxrss`` survives exec and would include the parent's RSS at fork time."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_tool(tool: str, method: str, case: Case, calib: Path, tag: str, repeats: int = 1,
             variant: str = "") -> dict[str, Any]:
    """Quantize in a fresh process ``repeats`` times: the fastest time and the highest peak RSS."""
    out = OUT / case.name / f"{tool}-{method}{'-' + variant.replace(' ', '-') if variant else ''}{tag}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    job = {"tool": tool, "method": method, "model": str(case.model_path), "calib": str(calib), "out": str(out),
           "input": case.input_name, "batch": case.batch, "variant": variant}
    runs = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True,
                              text=True, cwd=ROOT)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            logging.warning("%s %s on %s failed: %s", tool, method, case.name, tail)
            return {"error": tail[:120]}
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result = min(runs, key=lambda r: r["seconds"])
    return {**result, "peak_mb": max(r["peak_mb"] for r in runs), "path": out}


# -- measurements in this process ---------------------------------------------------------------

@dataclass
class Result:
    case: Case
    tool: str
    method: str
    variant: str = ""
    error: str = ""
    accuracy: float | None = None  # %
    float_accuracy: float | None = None
    agreement: float | None = None  # %
    latency_b1: str = "—"
    latency_b8: str = "—"
    ratio_b1: float | None = None
    seconds: float = float("nan")
    peak_mb: float = float("nan")
    size: str = "—"
    fused: str = "—"
    path: Path | None = None
    #: per-sample correctness of the int8 model (labelled data only), for the paired test against theirs
    correct: np.ndarray | None = None
    #: onnxopt rows: latency of this model / onnxruntime's with the same method, paired, batch 1
    vs_theirs: str = "—"
    vs_theirs_ratio: float | None = None

    def row(self) -> list[object]:
        tool = f"{self.tool} ({self.variant})" if self.variant else self.tool
        if self.error:
            return [self.case.title, tool, self.method, f"failed: {self.error}"] + ["—"] * 8
        acc = "—" if self.accuracy is None else f"{self.float_accuracy:.2f} → {self.accuracy:.2f}"
        agree = "—" if self.agreement is None else f"{self.agreement:.2f}"
        if self.agreement is not None and self.case.metric == "detection":
            agree += " (anchor IoU)"
        return [self.case.title, tool, self.method, acc, agree, self.latency_b1, self.latency_b8, self.vs_theirs,
                f"{self.seconds:.2f}", f"{self.peak_mb:.0f}", self.size, self.fused]


def _outputs(model: onnx.ModelProto | Path, x: np.ndarray, name: str, batch: int) -> np.ndarray:
    session = make_session(model if isinstance(model, onnx.ModelProto) else str(model), optimize=True)
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _quality(result: Result, float_out: np.ndarray, x: np.ndarray, labels: np.ndarray | None, path: Path) -> None:
    case = result.case
    if case.metric == "none":
        return
    q = _outputs(path, x, case.input_name, case.batch)
    if case.metric == "detection":  # face anchors (score > 0.7): IoU of the two sets
        a, b = float_out[..., 1] > 0.7, q[..., 1] > 0.7
        result.agreement = 100 * np.sum(a & b) / max(np.sum(a | b), 1)
        return
    result.agreement = 100 * float(np.mean(float_out.argmax(-1) == q.argmax(-1)))
    if labels is not None:
        result.float_accuracy = 100 * float(np.mean(float_out.argmax(-1) == labels))
        result.correct = q.argmax(-1) == labels
        result.accuracy = 100 * float(np.mean(result.correct))


def _latency(case: Case, float_model: onnx.ModelProto, path: Path, x: np.ndarray, batch: int,
             runs: int) -> tuple[str, float | None]:
    if batch > 1 and not case.dynamic_batch:
        return "n/a (fixed batch)", None
    feeds = {case.input_name: x[:batch]}
    lat = paired_latency(make_session(float_model, threads=1, optimize=True), feeds,
                         make_session(str(path), threads=1, optimize=True), feeds,
                         runs=max(30, runs // case.cost), warmup=3)
    return f"{lat.ratio:.2f} [{lat.ratio_p10:.2f}, {lat.ratio_p90:.2f}]", lat.ratio


def bench_case(case: Case, runs: int, repeats: int) -> list[Result]:
    float_model = onnx.load(str(case.model_path))
    with np.load(case.eval_path) as npz:
        x = npz[case.input_name]
        labels = npz["label"] if "label" in npz.files else None
    float_out = _outputs(float_model, x, case.input_name, case.batch)
    floor = run_tool("floor", "minmax", case, case.calib_path, "", repeats)
    case.floor_seconds = floor.get("seconds")
    results = []
    runs_here = [(tool, method, "") for tool, method in TOOLS] + (list(VARIANTS) if case.bundled else [])
    for tool, method, variant in runs_here:
        outcome = run_tool(tool, method, case, case.calib_path, "", repeats, variant)
        result = Result(case, tool, method, variant, error=outcome.get("error", ""))
        if not result.error:
            path = result.path = outcome["path"]
            _quality(result, float_out, x, labels, path)
            result.latency_b1, result.ratio_b1 = _latency(case, float_model, path, x, 1, runs)
            result.latency_b8, _ = _latency(case, float_model, path, x, 8, runs)
            result.seconds, result.peak_mb = outcome["seconds"], outcome["peak_mb"]
            if case.metric != "none":
                result.size = f"{path.stat().st_size / case.model_path.stat().st_size:.2f}"
            else:
                result.size = "— (weights generated)"
            if "layers" in outcome:
                result.fused = f"{outcome['integer_layers']}/{outcome['layers']}"
        results.append(result)
        logging.info("%s", result.row())
    _head_to_head(case, results, x, runs)
    return results


def _head_to_head(case: Case, results: list[Result], x: np.ndarray, runs: int) -> None:
    """onnxopt's int8 model against onnxruntime's (same method) in one interleaved run: the two
    int8/float ratios come from separate runs and differ by a few % from drift alone."""
    theirs = {r.method: r for r in results if r.tool == "ort" and not r.variant and r.path is not None}
    feeds = {case.input_name: x[:1]}
    for r in results:
        other = theirs.get(r.method)
        if r.tool != "onnxopt" or r.variant or r.path is None or other is None:
            continue
        lat = paired_latency(make_session(str(other.path), threads=1, optimize=True), feeds,
                             make_session(str(r.path), threads=1, optimize=True), feeds,
                             runs=max(30, runs // case.cost), warmup=3)
        r.vs_theirs, r.vs_theirs_ratio = f"{lat.ratio:.2f} [{lat.ratio_p10:.2f}, {lat.ratio_p90:.2f}]", lat.ratio


def bench_memory(case: Case) -> list[list[object]]:
    rows = []
    for tool, method in TOOLS:
        cells, peaks = [], []
        for n in MEMORY_SAMPLES:
            outcome = run_tool(tool, method, case, case.tiled(n), f"-mem{n}")
            if "error" in outcome:
                cells.append(f"failed: {outcome['error'][:60]}")
                continue
            peaks.append(outcome["peak_mb"])
            cells.append(f"{outcome['peak_mb']:.0f} MB / {outcome['seconds']:.1f} s")
        ratio = f"{peaks[-1] / peaks[0]:.2f}" if len(peaks) == len(MEMORY_SAMPLES) else "—"
        rows.append([tool, method] + cells + [ratio])
        logging.info("%s", rows[-1])
    return rows


def _mcnemar(ours: np.ndarray | None, theirs: np.ndarray | None) -> str:
    """The samples only one model gets right, and the exact two-sided McNemar p-value: whether the
    accuracy difference is more than chance on this evaluation set."""
    if ours is None or theirs is None:
        return ""
    only_ours, only_theirs = int(np.sum(ours & ~theirs)), int(np.sum(~ours & theirs))
    n, k = only_ours + only_theirs, min(only_ours, only_theirs)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return f" (right only with onnxopt {only_ours}, only with onnxruntime {only_theirs}: McNemar p={p:.2f})"


def targets(results: list[Result]) -> str:
    """Per model and method: tool time, accuracy (or agreement) and latency of onnxopt against onnxruntime."""
    lines = []
    by_key = {(r.case.name, r.tool, r.method): r for r in results if not r.variant}
    for r in results:
        theirs = by_key.get((r.case.name, "ort", r.method))
        if r.tool != "onnxopt" or r.error or r.variant:
            continue
        if theirs is None or theirs.error:
            lines.append(f"- {r.case.title}, {r.method}: onnxruntime failed, onnxopt quantized it")
            continue
        parts = [f"time {r.seconds / theirs.seconds:.2f}x theirs"
                 + (f" (calibration floor alone {r.case.floor_seconds / theirs.seconds:.2f}x)"
                    if r.case.floor_seconds else "")]
        if r.accuracy is not None and theirs.accuracy is not None:
            parts.append(f"accuracy {r.accuracy - theirs.accuracy:+.2f} pp{_mcnemar(r.correct, theirs.correct)}")
        if r.agreement is not None and theirs.agreement is not None:
            parts.append(f"agreement {r.agreement - theirs.agreement:+.2f} pp")
        if r.vs_theirs_ratio is not None:
            parts.append(f"latency b1 {r.vs_theirs_ratio:.2f}x theirs (paired)")
        lines.append(f"- {r.case.title}, {r.method}: " + ", ".join(parts))
    return "\n".join(["onnxopt against onnxruntime, same method (targets: time <= 0.5x, accuracy and latency "
                      "no worse). Calibration floor: a fresh process that imports onnxruntime, builds one optimized "
                      "session of the float model with every tensor as an output (what quantize_static's "
                      "calibrators fetch) and runs the calibration set through it, fastest of the same number of "
                      "runs: the inference both tools do, before any graph work, as a fraction of their time."]
                     + lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="", help="comma-separated subset of case names")
    parser.add_argument("--runs", type=int, default=50, help="paired latency runs for small models")
    parser.add_argument("--repeats", type=int, default=2, help="tool runs per cell (fastest time is kept)")
    parser.add_argument("--no-memory", action="store_true", help="skip the 100/1000/3000-sample memory runs")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    setup_logging()
    started = time.perf_counter()
    # pip compiles an installed package's modules; an editable checkout (or PYTHONDONTWRITEBYTECODE)
    # would make every onnxopt run recompile its sources, which onnxruntime's never do
    for package in ("onnxopt", "passes", "bench"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    cases = prepare_cases([m for m in args.models.split(",") if m])
    results = [r for case in cases for r in bench_case(case, args.runs, args.repeats)]
    body = [
        "### int8: onnxopt `int8` vs onnxruntime `quantize_static`",
        "",
        "Both: QDQ, per-channel int8 weights, uint8 activations (U8S8); onnxruntime after `quant_pre_process`. "
        "Accuracy (float → int8) and agreement with float are in %, measured with onnxruntime's optimizations "
        "on (the integer kernels). Latency: int8/float32 paired ratio, median [p10, p90] of "
        f"max(30, {args.runs} / model cost) interleaved pairs after 3 warm-up, CPU, 1 intra-op "
        "thread, graph optimizations on (< 1: int8 faster). Tool time (fastest of "
        f"{args.repeats}) and peak RSS are per tool run in its own process (interpreter and onnxruntime "
        "included, ~80 MB; both tools' modules load from compiled bytecode, as after `pip install`). vs ort b1: "
        "onnxopt's int8 latency / onnxruntime's int8 latency with the same method, paired in one interleaved run "
        "(batch 1; the two int8/float ratios come from separate runs and drift by a few %). Size: int8 file / "
        "float32 file. Fused: layers onnxruntime turned into integer kernels / layers quantized (onnxopt reports it).",
        "",
        markdown_table(["model (data)", "tool", "method", "accuracy %", "agreement %", "latency b1", "latency b8",
                        "vs ort b1", "tool s", "peak MB", "size", "fused"], [r.row() for r in results]),
        "",
        "Data: " + "; ".join(f"**{c.title}**: {c.data_note}" for c in cases),
        "",
        f"Weight range: onnxopt decides `reduce_range` for the CPU it runs on (here: int8 dot-product "
        f"{cpu_info().int8_dot_text}): 7-bit weights in [-63, 63] only on x86 without VNNI/AMX, where "
        "onnxruntime's U8S8 kernels add uint8 x int8 products pairwise in saturating int16 (vpmaddubsw) that "
        "full-range weights can overflow (the fused model then differs from its own Q/DQ definition); full "
        "[-127, 127] elsewhere. onnxruntime's default is always full range. The rows marked \"7-bit weights\" "
        "(onnxopt with reduce_range=true) and \"reduce_range\" (onnxruntime with it) show the other choice.",
        "",
        targets(results),
    ]
    for case in [] if args.no_memory else memory_cases():
        body += ["", f"#### Calibration memory vs samples ({case.title})", "",
                 "Calibration sets of 100, 1000 and 3000 samples are the real calibration set tiled, with "
                 f"Gaussian noise (sigma 0.02) added to every copy after the first; batch {case.batch}. "
                 "Cells: peak RSS / tool time (one run each). Target: peak at 3000 <= 1.2x peak at 100.",
                 "",
                 markdown_table(["tool", "method"] + [f"{n} samples" for n in MEMORY_SAMPLES] + ["peak 3000 / 100"],
                                bench_memory(case))]
    body += ["", f"Total benchmark time: {time.perf_counter() - started:.0f} s."]
    command = ".venv/bin/python bench/bench_int8.py" + (f" --models {args.models}" if args.models else "") + (
        " --no-memory" if args.no_memory else "")
    write_section("int8", command, "\n".join(body))


if __name__ == "__main__":
    main()
