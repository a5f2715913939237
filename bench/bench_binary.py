"""Benchmark of the binary pass: size, accuracy (plain vs refit vs 2-bit) and latency.

Two size ratios, kept apart: the weight-bytes ratio (float / packed initializer payload, what the
packing itself saves) and the file ratio (float / packed serialized ``ModelProto``, what a user sees
on disk, which also counts the unpacking subgraphs' nodes, names and initializer headers).
For each bundled model: whole-model and per-layer compression (uint8, float32 and float16 scales),
top-1 accuracy on its evaluation set (``bench._common.bundled_eval``) for the float model and several binary variants (refitted on its
calib.npz), top-1 over several refit seeds for the scale storage and ``min_channel_weights``
choices, the per-layer refit errors, whether onnxruntime folds the unpacking subgraphs, and the
paired latency ratio packed vs float (CPU, 1 intra-op thread, graph optimizations on). For the real
models in ../shared/models (upgraded to opset 13 first: packing needs BitShift) it gives size,
folding and latency only (no labelled data). Writes the "binary" section of docs/BENCHMARKS.md.

    .venv/bin/python bench/bench_binary.py [--runs 50] [--seeds 16] [--models resnet_fmnist,vgg_digits] [--models-dir models]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (MODELS, SHARED_MODELS, bundled_eval, markdown_table, setup_logging,  # noqa: E402
                           write_section)
from onnxopt.data import input_specs, open_data  # noqa: E402
from onnxopt.graph import export, import_graph  # noqa: E402
from onnxopt.latency import paired_latency  # noqa: E402
from onnxopt.pass_base import PassContext, PassReport  # noqa: E402
from onnxopt.pipeline import Pipeline  # noqa: E402
from onnxopt.runtime import make_session  # noqa: E402
from passes.binary import BinaryWeights  # noqa: E402

BUNDLED = ("resnet_fmnist", "vgg_digits", "mlp_fmnist")
REAL = ("ultraface-RFB-320.onnx", "SqueezeNet_fp16.onnx")
LATENCY_BATCH = 32

#: (label, settings, refit on calibration data)
VARIANTS: list[tuple[str, dict[str, object], bool]] = [
    ("1-bit plain (alpha = mean abs W)", {"refit": False}, False),
    ("1-bit refit (default)", {}, True),
    ("1-bit refit, fp32 scales", {"alpha_dtype": "float32"}, True),
    ("2-bit plain", {"bits": 2, "refit": False}, False),
    ("2-bit refit", {"bits": 2}, True),
    ("1-bit refit + HWGQ 2-bit activations", {"hwgq": True}, True),
    ("1-bit refit, first/last binarised too", {"keep_first": False, "keep_last": False}, True),
]
#: scale storage compared in the size tables (sizes do not depend on the refit)
OTHER_SCALES = {"fp32": {"refit": False, "alpha_dtype": "float32"}, "fp16": {"refit": False, "alpha_dtype": "float16"}}
#: (label, settings) refitted with several seeds (the sampling of calibration rows); the first is the default
SEEDED: list[tuple[str, dict[str, object]]] = [
    ("uint8 scales (default)", {}),
    ("fp32 scales", {"alpha_dtype": "float32"}),
    ("uint8 scales, K < 64 float (min_channel_weights=64)", {"min_channel_weights": 64}),
]


@dataclass
class Outcome:
    label: str
    model: onnx.ModelProto
    report: PassReport
    seconds: float


def _accuracy(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    logits = make_session(model).run(None, {"input": x})[0]
    return float(np.mean(logits.argmax(1) == labels)), logits.argmax(1)


def _apply(model: onnx.ModelProto, settings: dict[str, object], calib: Path | None,
           seed: int = 0, threads: int | None = 1) -> tuple[onnx.ModelProto, PassReport, float]:
    ctx = PassContext(calibration=open_data(calib, model) if calib else None, seed=seed, threads=threads)
    start = time.perf_counter()
    result = Pipeline([BinaryWeights(**settings)]).run(model, ctx)
    return result.model, result.reports[0], time.perf_counter() - start


def _payload(model: onnx.ModelProto) -> int:
    """Bytes of the initializers' values (``raw_data``, or the typed fields when there is none)."""
    return sum(len(t.raw_data) if t.raw_data else t.ByteSize() for t in model.graph.initializer)


def _graph_bytes_per_layer(float_model: onnx.ModelProto, packed: onnx.ModelProto, layers: int) -> str:
    """What each packed layer adds to the file beyond its bit and scale bytes (serialized bytes less
    the initializer values, packed minus float, per packed layer; the bit decoding shared by all
    layers included)."""
    if not layers:
        return "-"
    added = (packed.ByteSize() - _payload(packed)) - (float_model.ByteSize() - _payload(float_model))
    return f"{added / layers:.0f}"


def _latency(float_model: onnx.ModelProto, packed: onnx.ModelProto, feeds: dict[str, np.ndarray], runs: int) -> str:
    """Paired ratio packed / float. The float side goes through the same graph import/export as the
    packed one, so both reach onnxruntime in the same form (old models list their initializers as
    graph inputs, which onnxruntime may not fold; the export drops them)."""
    a = make_session(export(import_graph(float_model), float_model), threads=1, optimize=True)
    b = make_session(packed, threads=1, optimize=True)
    lat = paired_latency(a, feeds, b, feeds, runs=runs, warmup=5)
    return f"{lat.ratio:.3f} [{lat.ratio_p10:.3f}, {lat.ratio_p90:.3f}] ({lat.a_median_ms:.2f} / {lat.b_median_ms:.2f} ms)"


def bench_bundled(folder: Path, name: str, runs: int) -> tuple[list[list[object]], list[list[object]], list[list[object]]]:
    model = onnx.load(str(folder / f"{name}.onnx"))
    calib = folder / f"{name}.calib.npz"
    x, labels, _ = bundled_eval(name, folder)
    float_acc, float_pred = _accuracy(model, x, labels)
    rows: list[list[object]] = [[name, "float32", f"{float_acc:.4f}", "1.000", model.ByteSize(), "1.00", "", ""]]
    default: Outcome | None = None
    has_bn = any(node.op_type == "BatchNormalization" for node in model.graph.node)
    for label, settings, refit in VARIANTS:
        if settings.get("hwgq") and not has_bn:
            continue
        packed, report, seconds = _apply(model, settings, calib if refit else None)
        acc, pred = _accuracy(packed, x, labels)
        fits = report.details.get("refit_layers", [])
        lowered = f"{sum(f['error_after'] < f['error_before'] for f in fits)}/{len(fits)}" if fits else "-"
        rows.append([name, label, f"{acc:.4f}", f"{np.mean(pred == float_pred):.3f}", packed.ByteSize(),
                     f"{model.ByteSize() / packed.ByteSize():.2f}", lowered, f"{seconds:.1f}"])
        if label.startswith("1-bit refit (default)"):
            default = Outcome(label, packed, report, seconds)
        logging.info("%s %s: acc %.4f", name, label, acc)
    assert default is not None
    other_models, other = {}, {}
    for key, settings in OTHER_SCALES.items():
        other_models[key], other[key], _ = _apply(model, settings, None)
    ratio = {key: {row["node"]: row["compression"] for row in r.details["layers"]} for key, r in other.items()}
    fits = {f["layer"]: f for f in default.report.details.get("refit_layers", [])}

    def fit(node: str, key: str) -> str:
        return f"{fits[node][key]:.4f}" if node in fits else "-"

    layer_rows = [[name, row["node"], row["op"], row["channels"], row["k"], row["float_bytes"], row["packed_bytes"],
                   f"{row['compression']:.2f}", f"{32 * row['k'] / (row['k'] + 8):.2f}",
                   f"{ratio['fp32'][row['node']]:.2f}", f"{32 * row['k'] / (row['k'] + 32):.2f}",
                   f"{ratio['fp16'][row['node']]:.2f}", fit(row["node"], "error_before"), fit(row["node"], "error_after"),
                   fit(row["node"], "holdout_before"), fit(row["node"], "holdout_after")]
                  for row in default.report.details["layers"]]
    details = default.report.details
    size_row = [[name, details["model_bytes_before"], details["model_bytes_after"], f"{details['model_compression']:.2f}",
                 f"{other['fp32'].details['model_compression']:.2f}", f"{other['fp16'].details['model_compression']:.2f}",
                 model.ByteSize(), default.model.ByteSize(),
                 f"{model.ByteSize() / default.model.ByteSize():.2f}", f"{model.ByteSize() / other_models['fp32'].ByteSize():.2f}",
                 _graph_bytes_per_layer(model, default.model, len(details["layers"])),
                 _graph_bytes_per_layer(model, other_models["fp32"], len(other["fp32"].details["layers"])),
                 len(details["layers"]), len(default.report.skipped),
                 details["onnxruntime_unpack_nodes_left"],
                 _latency(model, default.model, {"input": x[:LATENCY_BATCH]}, runs),
                 _latency(model, default.model, {"input": x[:1]}, runs)]]
    return rows, layer_rows, size_row


def bench_seeds(folder: Path, name: str, seeds: int) -> list[list[object]]:
    """Top-1 of the ``SEEDED`` variants over ``seeds`` refits that sample different calibration rows,
    and each variant's paired difference to the first (the default)."""
    model = onnx.load(str(folder / f"{name}.onnx"))
    calib = folder / f"{name}.calib.npz"
    x, labels, _ = bundled_eval(name, folder)
    accuracy: dict[str, np.ndarray] = {}
    rows = []
    for label, settings in SEEDED:
        runs = [_apply(model, settings, calib, seed=seed, threads=None) for seed in range(seeds)]
        accuracy[label] = np.array([_accuracy(packed, x, labels)[0] for packed, _, _ in runs])
        diff = accuracy[label] - accuracy[SEEDED[0][0]]
        report, packed = runs[0][1], runs[0][0]
        acc = accuracy[label]
        rows.append([name, label, f"{acc.mean():.4f}", f"{acc.std():.4f}", f"{acc.min():.4f}", f"{acc.max():.4f}",
                     f"{100 * diff.mean():+.2f} ± {100 * diff.std() / np.sqrt(seeds):.2f}" if label != SEEDED[0][0] else "",
                     len(report.details["layers"]), report.details["model_bytes_after"],
                     f"{report.details['model_compression']:.2f}", packed.ByteSize(), f"{model.ByteSize() / packed.ByteSize():.2f}"])
        logging.info("%s %s over %d seeds: %.4f ± %.4f", name, label, seeds, acc.mean(), acc.std())
    return rows


def bench_real(file: str, runs: int) -> list[object] | None:
    path = SHARED_MODELS / file
    if not path.exists():
        return None
    original = onnx.load(str(path))
    model = onnx.version_converter.convert_version(original, 13)
    packed, report, _ = _apply(model, {}, None)
    rng = np.random.default_rng(0)
    feeds = {spec.name: rng.standard_normal([d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]).astype(spec.dtype)
             for spec in input_specs(model)}
    d = report.details
    return [file, f"{[o.version for o in original.opset_import]} -> 13", d["model_bytes_before"], d["model_bytes_after"],
            f"{d['model_compression']:.2f}", model.ByteSize(), packed.ByteSize(), f"{model.ByteSize() / packed.ByteSize():.2f}",
            _graph_bytes_per_layer(export(import_graph(model), model), packed, len(d["layers"])), len(d["layers"]),
            d["onnxruntime_unpack_nodes_left"],
            _latency(model, packed, feeds, runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="paired latency runs per model")
    parser.add_argument("--seeds", type=int, default=16, help="refit seeds per variant in the seed table")
    parser.add_argument("--models", default=",".join(BUNDLED), help="bundled models to run")
    parser.add_argument("--models-dir", type=Path, default=MODELS, help="folder holding the bundled models")
    args = parser.parse_args()
    setup_logging()
    acc_rows, layer_rows, size_rows, seed_rows = [], [], [], []
    names = [m for m in args.models.split(",") if (args.models_dir / f"{m}.onnx").exists()]
    for name in names:
        rows, layers, size = bench_bundled(args.models_dir, name, args.runs)
        acc_rows += rows
        layer_rows += layers
        size_rows += size
        seed_rows += bench_seeds(args.models_dir, name, args.seeds)
    real_rows = [r for r in (bench_real(f, args.runs) for f in REAL) if r is not None]
    body = "\n\n".join([
        "## binary: 1-bit weights packed 8 per byte (`binary`)",
        "Bit order: little-endian within a byte; bit j of byte i is the sign of flat element 8i+j of the "
        "weight (row-major), 1 = +1, 0 = -1. Defaults: first and last compute layers float, layers with "
        "fewer than 512 weights float, per-channel scales as uint8 log-scale codes (alpha = exp(lo + code*step), "
        "lo/step float32 per layer and bit-plane: C + 8 bytes), refit on the model's calib.npz "
        "(4096 rows per layer, 3 iterations, ridge weight chosen from 0.01/0.1/1 on held-out samples; the "
        "scales are coded after the last scale solve and one more sign sweep runs with the coded scales).",
        "### Size and latency (default settings, refitted)",
        "Two ratios. Weight bytes: the initializers' values; 'weight-bytes x' is float / packed weight bytes "
        "with the default uint8 scales, then with fp32 and fp16 scales (what the packing saves). File: the "
        "serialized model (`ModelProto.ByteSize()`, the .onnx file); 'file x' is float / packed file bytes, "
        "which also counts the unpacking subgraphs' nodes, names and initializer headers (no value_info). "
        "'graph bytes / layer' is that part per packed layer: file less weight bytes, packed minus float, "
        "divided by the packed layers (the bit decoding shared by all layers, ~750 bytes, included); uint8 "
        "scales add 3 nodes and 2 scalars per layer (~145 bytes), which the 3C - 8 bytes they save pay for "
        "above ~50 channels. "
        "Latency: packed / float32 median of per-pair ratios [p10, p90] over "
        f"{args.runs} paired runs, CPUExecutionProvider, 1 intra-op thread, ORT_ENABLE_ALL, batch "
        f"{LATENCY_BATCH} and batch 1 of eval inputs. 'ORT unpack nodes left' = unpacking-subgraph nodes left in the "
        "model onnxruntime writes after its session-start optimizations (0: folded into float initializers).",
        markdown_table(["model", "float weight bytes", "packed weight bytes", "weight-bytes x",
                        "weight-bytes x (fp32 scales)", "weight-bytes x (fp16 scales)", "float file bytes",
                        "packed file bytes", "file x", "file x (fp32 scales)", "graph bytes / layer",
                        "graph bytes / layer (fp32 scales)", "packed layers", "layers left float",
                        "ORT unpack nodes left", f"latency ratio (batch {LATENCY_BATCH})", "latency ratio (batch 1)"],
                       size_rows),
        "### Accuracy (top-1 on the evaluation set; agreement = top-1 agreement with the float model)",
        "Evaluation sets: " + "; ".join(f"**{name}**: {bundled_eval(name, args.models_dir)[2]}" for name in names) + ".",
        "File bytes and 'file x' are the serialized model (`ByteSize`), float / variant. 'refit lowered' counts "
        "layers whose relative output error on the calibration rows went down.",
        markdown_table(["model", "variant", "top-1", "agreement", "file bytes", "file x", "refit lowered", "pass s"],
                       acc_rows),
        f"### Scale storage and small-K layers over {args.seeds} refit seeds",
        "Top-1 on the evaluation set of the refitted 1-bit model for seeds 0.."
        f"{args.seeds - 1} (the seed picks the calibration rows each layer's refit samples): mean, standard "
        "deviation, min, max, and the paired difference to the default in points (mean ± standard error). "
        "A single seed's top-1 moves by up to a point or two (the accuracy table above is seed 0). "
        "Bytes as in the size table (weight bytes, and the file).",
        markdown_table(["model", "variant", "top-1 mean", "sd", "min", "max", "variant - default (points)", "packed layers",
                        "packed weight bytes", "weight-bytes x", "packed file bytes", "file x"], seed_rows),
        "### Per-layer compression and refit error (default settings)",
        "Ratio = float32 bytes / (bit bytes + scale bytes), measured, with the default uint8 scales "
        "(C codes + 8 bytes of lo/step per layer; formula 32K/(K+8), which leaves out those 8 bytes), then with "
        "`alpha_dtype=float32` (formula 32K/(K+32)) and `alpha_dtype=float16` (formula 32K/(K+16)). "
        "Errors (of the default, as stored) are "
        "relative output errors ||Y_float - X_bin W_bin^T||^2 / ||Y_float||^2 before (alpha = mean|W|) and "
        "after the alternating update, on all sampled calibration rows and on the held-out rows "
        "(1 calibration sample in 4) that chose the ridge weight.",
        markdown_table(["model", "layer", "op", "C", "K", "float bytes", "packed bytes", "ratio", "32K/(K+8)",
                        "ratio fp32 scales", "32K/(K+32)", "ratio fp16 scales", "error before", "error after",
                        "held-out before", "held-out after"],
                       layer_rows),
    ])
    if real_rows:
        body += "\n\n" + "\n\n".join([
            "### Real models (../shared/models; size, folding, latency; random input)",
            "Converted with onnx.version_converter to opset 13 first (they import opset 7/9; BitShift is "
            "opset 11). No refit (no calibration data), no accuracy (no labelled data). The float side of "
            "the latency pair went through the same graph import/export (these files list initializers as "
            "graph inputs, which keeps onnxruntime from folding BatchNormalization; the export drops them). "
            "Weight bytes, file bytes and graph bytes / layer as in the size table; the float file is the "
            "converted model, graph bytes / layer compare with it after the same import/export (which drops "
            "the initializers' graph-input entries).",
            markdown_table(["model", "opset", "float weight bytes", "packed weight bytes", "weight-bytes x",
                            "float file bytes", "packed file bytes", "file x", "graph bytes / layer", "packed layers",
                            "ORT unpack nodes left", "latency ratio (batch 1)"], real_rows)])
    where = "" if args.models_dir == MODELS else f" --models-dir {args.models_dir}"
    write_section("binary", f".venv/bin/python bench/bench_binary.py --runs {args.runs} --seeds {args.seeds}{where}", body)


if __name__ == "__main__":
    main()
