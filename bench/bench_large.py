"""A model over protobuf's 2 GB limit, end to end: time and peak memory of inspect, compare and optimize.

Generates (once, in bench/_work/large) 9 MatMul layers of 8192 x 8192 float32 weights, 2.42 GB, in
external data, the form every large export takes, and runs the CLI on it in a fresh process per
command: ``inspect``, ``optimize`` with ``fp16`` and with ``int8`` (32 random calibration samples),
each without the comparison (``--no-eval``), and ``compare`` of the original with the fp16 result on
32 random samples. Peak memory is the command's maximum resident set (``wait4``), against the weight
bytes. Needs about 6 GB of free disk and 14 GB of memory (inspect's peak).

    python bench/bench_large.py [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import WORK, markdown_table, setup_logging, write_section  # noqa: E402

LAYERS, WIDTH = 9, 8192
FOLDER = WORK / "large"


def generate(path: Path) -> int:
    """Write the model and its external data layer by layer (one layer in memory at a time); the bytes."""
    import onnx

    data_name = path.name + ".data"
    rng = np.random.default_rng(0)
    weights, offset = [], 0
    with open(path.with_name(data_name), "wb") as data:
        for i in range(LAYERS):
            layer = (rng.standard_normal((WIDTH, WIDTH), np.float32) / np.float32(WIDTH ** 0.5))
            data.write(layer.tobytes())
            tensor = onnx.TensorProto(name=f"w{i}", data_type=onnx.TensorProto.FLOAT, dims=[WIDTH, WIDTH],
                                      data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(layer.nbytes))):
                tensor.external_data.add(key=key, value=value)
            offset += layer.nbytes
            weights.append(tensor)
    names = ["x", *(f"h{i}" for i in range(1, LAYERS)), "y"]
    nodes = [onnx.helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]]) for i in range(LAYERS)]
    graph = onnx.helper.make_graph(
        nodes, "large", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", WIDTH])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", WIDTH])], weights)
    onnx.save_model(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    return offset


def measure(args: list[str]) -> tuple[float, int, int]:
    """(seconds, peak RSS in bytes, exit code) of ``onnxopt <args>`` in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "onnxopt.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(f"onnxopt {' '.join(args)} exited {code}: {err.strip()[-500:]}", file=sys.stderr)
    return elapsed, usage.ru_maxrss * 1024, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/BENCHMARKS.md")
    args = parser.parse_args()
    setup_logging()
    FOLDER.mkdir(parents=True, exist_ok=True)
    model = FOLDER / "large.onnx"
    weight_bytes = LAYERS * WIDTH * WIDTH * 4
    if not model.with_name("large.onnx.data").is_file() or model.with_name("large.onnx.data").stat().st_size != weight_bytes:
        generate(model)
    calib = FOLDER / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((32, WIDTH)).astype(np.float32))
    fp16, int8 = FOLDER / "large.fp16.onnx", FOLDER / "large.int8.onnx"
    commands = {
        "inspect": ["inspect", str(model), "--json"],
        "optimize fp16": ["optimize", str(model), "-o", str(fp16), "--pass", "fp16", "--no-eval", "--json",
                          "--no-progress"],
        "optimize int8": ["optimize", str(model), "-o", str(int8), "--pass", "int8", "--calib", str(calib),
                          "--no-eval", "--json", "--no-progress"],
        "compare (original vs fp16)": ["compare", str(model), str(fp16), "--data", "random:32", "--latency-runs", "5",
                                       "--json", "--no-progress"],
    }
    rows = []
    for label, command in commands.items():
        seconds, peak, code = measure(command)
        rows.append([label, "ok" if code == 0 else f"exit {code}", f"{seconds:.0f}", f"{peak / 1e9:.2f}",
                     f"{peak / weight_bytes:.2f}"])
        print(json.dumps(rows[-1]))
    sizes = {p.name: p.stat().st_size for p in FOLDER.iterdir() if p.is_file()}
    body = "\n".join([
        "## A model over 2 GB (external data)",
        "",
        f"{LAYERS} MatMul layers of {WIDTH} x {WIDTH} float32 weights: {weight_bytes / 1e9:.2f} GB in external data "
        "(generated by the script). Each command runs in a fresh process; peak memory is its maximum resident set, "
        "also as a multiple of the weight bytes. `optimize` runs without the comparison (`--no-eval`); "
        "`int8` calibrates on 32 random samples; `compare` runs 32 random samples and 5 latency runs. Written: "
        f"fp16 {sizes.get('large.fp16.onnx.data', 0) / 1e9:.2f} GB, int8 "
        f"{(sizes.get('large.int8.onnx.data', 0) or sizes.get('large.int8.onnx', 0)) / 1e9:.2f} GB of external data.",
        "",
        markdown_table(["command", "result", "time (s)", "peak RSS (GB)", "peak / weights"], rows),
    ])
    print(body)
    if not args.no_write:
        write_section("large", "python bench/bench_large.py", body)


if __name__ == "__main__":
    main()
