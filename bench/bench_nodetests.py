"""onnx's backend node tests as a robustness benchmark: fp16 and int8 against the reference tools.

Reads the backend test models of Debian's ``libonnx-testdata`` (``apt-get install libonnx-testdata``;
read from the OS package, never vendored): the single-op node tests plus the pytorch-converted,
pytorch-operator and simple ones. On every model with a float32 tensor whose original runs in
onnxruntime and matches its expected outputs, it runs:

- ``fp16`` with defaults, and onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``;
- ``int8`` with the test's inputs as calibration, and onnxruntime's ``quantize_static`` on the same inputs.

Each result is sorted into one outcome: converted and matches the expected outputs (fp16: within the
pass's tolerance) / converted, mismatch / unchanged / clean refusal (an onnxopt error, with a reason
histogram) / written but fails the checker or onnxruntime's load / loads but fails at run time /
internal error (an exception that is not a clean refusal, a crash or a timeout). Each model runs in a
worker process, so a crash is counted and not fatal.

    python bench/bench_nodetests.py [--limit N] [--only SUBSTRING] [--no-write]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import markdown_table, setup_logging, write_section  # noqa: E402

logger = logging.getLogger("bench_nodetests")

DATA_DIR = Path("/usr/share/libonnx-testdata/data")
SUITES = ("node", "pytorch-converted", "pytorch-operator", "simple")
TOOLS = ("fp16", "onnxconverter-common", "int8", "quantize_static")
OUTCOMES = ("converted, matches", "converted, mismatch", "unchanged", "refused", "invalid or fails to load",
            "fails at run time", "internal error")
TIMEOUT_S = 120


def _read_tensors(folder: Path, prefix: str) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    out = []
    for path in sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[1])):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        out.append(numpy_helper.to_array(tensor))
    return out


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    source = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(str(source) if isinstance(source, Path) else source, options,
                                providers=["CPUExecutionProvider"])


def _matches(got: list, expected: list[np.ndarray], rtol: float, atol: float) -> bool:
    for g, e in zip(got, expected):
        g, e = np.asarray(g), np.asarray(e)
        if g.shape != e.shape:
            return False
        if e.dtype.kind in "fc":
            if not np.allclose(g.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True):
                return False
        elif not np.array_equal(g, e):
            return False
    return True


def _judge(model, feeds: dict, expected: list[np.ndarray], changed: bool, check_match: bool,
           tolerance: tuple[float, float], full_check: bool) -> str:
    """The outcome of a written model (a ModelProto): the full check applies where the original passes it
    (onnx cannot type-check MeanVarianceNormalization's function body strictly, in any type)."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=full_check)
        session = _session(model)
    except Exception:  # noqa: BLE001 - any failure here is the outcome being counted
        return "invalid or fails to load"
    try:
        got = session.run(None, feeds)
    except Exception:  # noqa: BLE001
        return "fails at run time"
    if not changed:
        return "unchanged"
    if check_match and not _matches(got, expected, *tolerance):
        return "converted, mismatch"
    return "converted, matches"


def _reason(exc: BaseException) -> str:
    """A refusal's message with names and numbers taken out, for the histogram."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\d+", "N", text)
    return text[:110]


def _has_float32(model) -> bool:
    import onnx

    f32 = onnx.TensorProto.FLOAT
    if any(t.data_type == f32 for t in model.graph.initializer):
        return True
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    return any(v.type.tensor_type.elem_type == f32 for v in values)


def run_model(folder: str) -> dict[str, tuple[str, str]]:
    """Every tool on one test model: ``tool -> (outcome, reason)``; empty when the model is not applicable."""
    import onnx
    import onnxruntime as ort

    import onnxopt
    from onnxopt.errors import OnnxoptError

    ort.set_default_logger_severity(4)
    from passes.fp16 import Fp16

    path = Path(folder) / "model.onnx"
    data = Path(folder) / "test_data_set_0"
    try:
        model = onnx.load(str(path))
        inputs = _read_tensors(data, "input")
        expected = _read_tensors(data, "output")
    except (OSError, ValueError, TypeError, onnx.checker.ValidationError):
        return {}  # a test numpy cannot hold (segmented tensors, sequences, optionals): not applicable
    if not _has_float32(model) or not data.is_dir():
        return {}
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(names) != len(inputs):
        return {}
    feeds = dict(zip(names, inputs))
    try:
        if not _matches(_session(model).run(None, feeds), expected, 1e-3, 1e-5):
            return {}
    except Exception:  # noqa: BLE001 - the original does not run in onnxruntime: not applicable
        return {}
    fp16_tol = (Fp16.tolerance.rtol, Fp16.tolerance.atol)
    try:
        onnx.checker.check_model(model, full_check=True)
        full = True
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        full = False
    out: dict[str, tuple[str, str]] = {}
    for tool in TOOLS:
        try:
            if tool in ("fp16", "int8"):
                calib = [feeds] if tool == "int8" else None
                result = onnxopt.optimize(str(path), [tool], calibration=calib)
                changed = result.report.passes[-1].modified
                out[tool] = (_judge(result.model, feeds, expected, changed, tool == "fp16", fp16_tol, full), "")
            elif tool == "onnxconverter-common":
                from onnxconverter_common import float16

                converted = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
                changed = converted.SerializeToString() != model.SerializeToString()
                out[tool] = (_judge(converted, feeds, expected, changed, True, fp16_tol, full), "")
            else:
                out[tool] = _quantize_static(path, feeds, expected, full)
        except OnnxoptError as exc:
            out[tool] = ("refused", _reason(exc))
        except Exception as exc:  # noqa: BLE001 - an internal error of the tool, counted
            out[tool] = ("internal error", f"{type(exc).__name__}: {_reason(exc)}")
    return out


def _quantize_static(path: Path, feeds: dict, expected: list[np.ndarray], full: bool) -> tuple[str, str]:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([feeds])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_static(str(path), str(out), Reader())
        quantized = onnx.load(str(out))
    changed = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in quantized.graph.node)
    return _judge(quantized, feeds, expected, changed, False, (0, 0), full), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="first N test folders only")
    parser.add_argument("--only", default="", help="test folders whose name contains this")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/BENCHMARKS.md")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    setup_logging(quiet_library=True)
    if not (DATA_DIR / "node").is_dir():
        raise SystemExit(f"{DATA_DIR / 'node'} not found: apt-get install libonnx-testdata")
    folders = [p for suite in SUITES for p in sorted((DATA_DIR / suite).iterdir())
               if (p / "model.onnx").is_file() and args.only in p.name]
    folders = folders[: args.limit] if args.limit else folders
    start = time.perf_counter()
    results: dict[str, dict[str, tuple[str, str]]] = {}
    pending = list(folders)
    while pending:
        with cf.ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {pool.submit(run_model, str(f)): f for f in pending}
            pending = []
            for future, folder in futures.items():
                try:
                    results[_key(folder)] = future.result(timeout=TIMEOUT_S)
                except cf.TimeoutError:
                    results[_key(folder)] = {t: ("internal error", "timeout") for t in TOOLS}
                    for proc in pool._processes.values():  # a hung worker: kill it, resubmit the rest
                        proc.kill()
                    pending = [f for f in futures.values() if _key(f) not in results]
                    break
                except cf.process.BrokenProcessPool:
                    results[_key(folder)] = {t: ("internal error", "worker crashed") for t in TOOLS}
                    pending = [f for f in futures.values() if _key(f) not in results]
                    break
                except Exception as exc:  # noqa: BLE001 - a harness error on one model: logged, not fatal
                    logger.warning("%s: the benchmark cannot run this test (%s)", _key(folder), exc)
                    results[_key(folder)] = {}
                    continue
                logger.info("%s: %s", _key(folder), {t: o for t, (o, _) in results[_key(folder)].items()})
    elapsed = time.perf_counter() - start
    applicable = {name: r for name, r in results.items() if r}
    body = _tables(applicable, len(folders), elapsed)
    print(body)
    if not args.no_write and not args.limit and not args.only:
        write_section("nodetests", "python bench/bench_nodetests.py", body)


def _key(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def _tables(results: dict[str, dict[str, tuple[str, str]]], total: int, elapsed: float) -> str:
    counts = {tool: collections.Counter(r[tool][0] for r in results.values() if tool in r) for tool in TOOLS}
    rows = [[outcome, *(counts[tool][outcome] for tool in TOOLS)] for outcome in OUTCOMES]
    lines = [
        "## onnx backend tests (libonnx-testdata)",
        "",
        f"{len(results)} of the {total} backend test models of Debian's `libonnx-testdata` ({', '.join(SUITES)}; "
        f"{sum(k.startswith('node/') for k in results)} of them node tests) have a float32 tensor and "
        "an original that runs in onnxruntime (CPU, graph optimizations off) and matches its expected outputs. "
        "fp16 outputs are compared with the expected outputs at the pass's tolerance (rtol = atol = 2e-2); "
        "int8 results only need to load and run (int8 error on single ops is not a robustness question). "
        "`int8` and `quantize_static` calibrate on the test's own inputs. A run of the written model uses the "
        f"test's inputs. Wall time {elapsed / 60:.0f} min.",
        "",
        markdown_table(["outcome", *TOOLS], rows),
    ]
    for tool in ("fp16", "int8"):
        reasons = collections.Counter(r[tool][1] for r in results.values()
                                      if tool in r and r[tool][0] in ("refused", "internal error"))
        if reasons:
            lines += ["", f"`{tool}` refusals and errors by reason:", "",
                      markdown_table(["reason", "models"], [[k, v] for k, v in reasons.most_common()])]
    bad = {tool: sorted(n for n, r in results.items() if r.get(tool, ("",))[0] in OUTCOMES[4:])
           for tool in ("fp16", "int8")}
    for tool, names in bad.items():
        if names:
            lines += ["", f"`{tool}` results that fail to load or run, or errors: {', '.join(names)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
