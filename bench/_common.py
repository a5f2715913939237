"""Helpers shared by the benchmark scripts: machine description and docs/BENCHMARKS.md sections."""

from __future__ import annotations

import gzip
import logging
import os
import platform
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"
SHARED_MODELS = ROOT.parent / "shared" / "models"
WORK = ROOT / "bench" / "_work"  # scratch space (git-ignored)
MODELS = ROOT / "models"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # the bundled models' normalisation (models/README.md)

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


def fashion_mnist_test() -> tuple[np.ndarray, np.ndarray] | None:
    """The Fashion-MNIST test split from Debian's dataset-fashion-mnist: uint8 images ``[10000, 28, 28]``
    and int64 labels; ``None`` when the package is not installed."""
    images, labels = FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        return None
    with gzip.open(images) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels) as f:
        return pixels, np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)


def bundled_eval(name: str, folder: Path = MODELS) -> tuple[np.ndarray, np.ndarray, str]:
    """A bundled model's evaluation set as (inputs, labels, description).

    For the Fashion-MNIST models this is the whole 10k test split minus the model's calibration
    samples when the Debian package is installed (9,744 samples instead of the bundled 1,000: a
    difference of a few tenths of a point between two int8 models is then more than sampling noise);
    otherwise, and for the other models, the bundled ``<name>.eval.npz``."""
    with np.load(folder / f"{name}.eval.npz") as npz:
        x, labels = npz["input"], npz["label"]
    bundled = (x, labels, f"{name}.eval.npz ({len(x)} samples)")
    split = fashion_mnist_test()
    if "fmnist" not in name or split is None:
        return bundled
    pixels, test_labels = split
    test = ((pixels[:, None].astype(np.float32) / 255 - np.float32(FASHION_MNIST_MEAN))
            / np.float32(FASHION_MNIST_STD)).astype(np.float32)
    with np.load(folder / f"{name}.calib.npz") as npz:
        calibration = {row.tobytes() for row in npz["input"]}
    held_out = np.array([row.tobytes() not in calibration for row in test])
    if len(test) - held_out.sum() != len(calibration):  # a different preprocessing: not the same images
        logging.warning("%s: Fashion-MNIST test split does not contain its calibration set; using %s",
                        name, bundled[2])
        return bundled
    return (test[held_out], test_labels[held_out],
            f"Fashion-MNIST test split minus its calib.npz ({int(held_out.sum())} samples; Debian "
            "dataset-fashion-mnist)")


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def setup_logging(*, quiet_library: bool = False) -> None:
    """Progress lines of the benchmark itself; ``quiet_library`` keeps onnxopt's and the passes' INFO logs out."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if quiet_library:
        for name in ("onnxopt", "passes"):
            logging.getLogger(name).setLevel(logging.WARNING)
