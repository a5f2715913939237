"""Benchmark of structured pruning: prune-channels and remove-blocks.

For every model and configuration: MACs and parameters (onnxopt.stats), top-1 accuracy on the
model's evaluation set where it has one (bundled models), agreement with the original, and the
latency ratio pruned/original measured paired and interleaved (CPU, 1 intra-op thread, onnxruntime
graph optimizations on). Recovery (constant-channel folding + least squares on the calibration
set) is compared against plain removal. Third-party models: ultraface-RFB-320 from
../shared/models (random inputs: latency and structure only) and onnx's light_* test models (real
topologies, placeholder weights). Writes the "pruning" section of docs/BENCHMARKS.md.

    .venv/bin/python bench/bench_pruning.py [--runs 60] [--models resnet_fmnist,light_resnet50]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (MODELS, SHARED_MODELS, WORK, bundled_eval, markdown_table, setup_logging,  # noqa: E402
                           write_section)
from onnxopt.data import open_data  # noqa: E402
from onnxopt.latency import PairedLatency, paired_latency  # noqa: E402
from onnxopt.pass_base import Pass, PassContext  # noqa: E402
from onnxopt.pipeline import Pipeline  # noqa: E402
from onnxopt.runtime import make_session  # noqa: E402
from onnxopt.stats import model_stats  # noqa: E402
from passes.pruning import PruneChannels  # noqa: E402
from passes.pruning import RemoveBlocks  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
COMMAND = ".venv/bin/python bench/bench_pruning.py"


@dataclass(frozen=True)
class Config:
    label: str
    passes: tuple[Pass, ...]
    calibrate: bool  # give the calibration set (least squares, branch means, sensitivity)


def channels(label: str, recover: bool = True, **settings: Any) -> Config:
    suffix = ", recovery" if recover else ", no recovery"
    return Config(f"channels, {label}{suffix}", (PruneChannels(recover=recover, **settings),), recover)


def macs(target: float, recover: bool = True, round_to: int = 8) -> Config:
    label = f"MACs target {target:.0%}" + ("" if round_to == 8 else f", round_to {round_to}")
    return channels(label, recover, threshold="macs", target_macs_reduction=target, round_to=round_to)


CHANNEL_CONFIGS = (
    channels("default (auto)", recover=False), channels("default (auto)"),
    macs(0.3, recover=False), macs(0.3), macs(0.5, recover=False), macs(0.5), macs(0.7),
    macs(0.5, round_to=1),
)
BLOCK_CONFIGS = (  # blocks: recovery only matters for branches with a constant output (none here)
    Config("blocks, 1 by sensitivity", (RemoveBlocks(count=1, criterion="sensitivity"),), True),
    Config("blocks, 2 by sparsity", (RemoveBlocks(count=2, criterion="sparsity"),), False),
    Config("blocks, 2 by sensitivity", (RemoveBlocks(count=2, criterion="sensitivity"),), True),
    Config("blocks 1 (sensitivity) + channels MACs 30%, recovery",
           (RemoveBlocks(count=1, criterion="sensitivity"), PruneChannels(threshold="macs", target_macs_reduction=0.3)),
           True),
)
THIRD_PARTY_CONFIGS = (
    Config("channels, default (auto)", (PruneChannels(),), False),
    Config("channels, ratio 25% per group", (PruneChannels(threshold="ratio", ratio=0.25),), False),
    Config("channels, MACs target 50%", (PruneChannels(threshold="macs", target_macs_reduction=0.5),), False),
    Config("channels, MACs target 50%, round_to 1",
           (PruneChannels(threshold="macs", target_macs_reduction=0.5, round_to=1),), False),
    Config("blocks, 4 by sparsity", (RemoveBlocks(count=4, criterion="sparsity"),), False),
)
TARGET = {"macs_removed": 30.0, "latency": 0.8, "drop": 2.0}  # the target on resnet_fmnist


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    calib: Path | None
    evaluation: Path | None
    feeds: dict[int, dict[str, np.ndarray]]  # latency inputs by batch size
    runs: int
    note: str


@dataclass
class Result:
    model: str
    config: str
    macs: float
    macs_removed: float | None = None
    params: float = 0.0
    accuracy: float | None = None
    drop: float | None = None
    agreement: float | None = None
    change: float | None = None
    latency: dict[int, PairedLatency] = field(default_factory=dict)
    seconds: float | None = None
    failed: str = ""

    def cells(self, batches: tuple[int, ...]) -> list[object]:
        if self.failed:
            return [self.model, self.config, f"failed: {self.failed}"] + ["—"] * (7 + len(batches))

        def num(v: float | None, fmt: str) -> str:
            return "—" if v is None else format(v, fmt)

        lat = [f"{self.latency[b].ratio:.2f} [{self.latency[b].ratio_p10:.2f}, {self.latency[b].ratio_p90:.2f}]"
               if b in self.latency else "—" for b in batches]
        return [self.model, self.config, f"{self.macs:.2f}", num(self.macs_removed, ".1f"), f"{self.params:.1f}",
                num(self.accuracy, ".2f"), num(self.drop, "+.2f"), num(self.agreement, ".1f"), num(self.change, ".1f"),
                *lat, num(self.seconds, ".1f")]


def bundled_case(name: str, runs: int) -> Case | None:
    path = MODELS / f"{name}.onnx"
    if not path.exists():
        return None
    x, labels, described = bundled_eval(name)
    evaluation = WORK / "pruning" / f"{name}.eval.npz"
    evaluation.parent.mkdir(parents=True, exist_ok=True)
    np.savez(evaluation, input=x, label=labels)
    return Case(name, onnx.load(str(path)), MODELS / f"{name}.calib.npz", evaluation,
                {1: {"input": x[:1]}, 32: {"input": x[:32]}}, runs,
                f"**{name}**: recovery and sensitivity on {name}.calib.npz ({_samples(MODELS / f'{name}.calib.npz')} "
                f"samples), accuracy on {described}")


def _samples(path: Path) -> int:
    with np.load(path) as npz:
        return len(npz["input"])


def third_party_case(name: str, runs: int) -> Case | None:
    path = SHARED_MODELS / f"{name}.onnx" if name.startswith("ultraface") else LIGHT / f"{name}.onnx"
    if not path.exists():
        return None
    model = onnx.load(str(path))
    init = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in init)
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    if name.startswith("ultraface"):
        x, kind = _ultraface_photo(shape), "real weights; output change and latency on the sample photo"
    else:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        kind = "onnx's test model: real topology, placeholder weights; random N(0,1) input"
    return Case(name, model, None, None, {1: {inp.name: x}}, runs, f"**{name}**: {kind}")


def _ultraface_photo(shape: list[int]) -> np.ndarray:
    from PIL import Image

    with Image.open(SHARED_MODELS / "ultraface-sample.jpg") as img:
        rgb = np.asarray(img.convert("RGB").resize((shape[3], shape[2])), dtype=np.float32)
    return ((rgb - 127.0) / 128.0).transpose(2, 0, 1)[None]


def evaluate(model: onnx.ModelProto, evaluation: Path) -> tuple[float, np.ndarray]:
    session = make_session(model, optimize=True)
    with np.load(evaluation) as npz:
        x, labels = npz["input"], npz["label"]
    preds = np.concatenate([session.run(None, {"input": x[i:i + 256]})[0].argmax(1) for i in range(0, len(x), 256)])
    return 100 * float(np.mean(preds == labels)), preds


def output_change(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest relative L2 change over the outputs, in %."""
    return max(100 * float(np.linalg.norm(y - x) / max(np.linalg.norm(x), 1e-30)) for x, y in zip(a, b))


def bench_case(case: Case, configs: tuple[Config, ...]) -> list[Result]:
    # the baseline is the original after an empty pipeline (the export path of the pruned models:
    # old-IR models list initializers as inputs, which alone stops onnxruntime from folding them)
    baseline = Pipeline([]).run(case.model).model
    base = model_stats(baseline)
    base_acc, base_preds = evaluate(baseline, case.evaluation) if case.evaluation else (None, None)
    results = [Result(case.name, "original", base.macs / 1e6, params=base.parameters / 1e3, accuracy=base_acc)]
    original = make_session(baseline, threads=1, optimize=True)
    small = min(case.feeds)
    base_out = original.run(None, case.feeds[small])
    for config in configs:
        ctx = PassContext(calibration=open_data(case.calib, case.model) if config.calibrate and case.calib else None)
        start = time.perf_counter()
        try:
            pruned = Pipeline(list(config.passes)).run(case.model, ctx).model
        except Exception as exc:  # a benchmark row records the failure and goes on
            results.append(Result(case.name, config.label, 0.0, failed=f"{type(exc).__name__}: {str(exc)[:100]}"))
            continue
        seconds = time.perf_counter() - start
        stats = model_stats(pruned)
        result = Result(case.name, config.label, stats.macs / 1e6, 100 * (1 - stats.macs / base.macs),
                        stats.parameters / 1e3, seconds=seconds)
        if case.evaluation is not None and base_acc is not None:
            result.accuracy, preds = evaluate(pruned, case.evaluation)
            result.drop = base_acc - result.accuracy
            result.agreement = 100 * float(np.mean(preds == base_preds))
        session = make_session(pruned, threads=1, optimize=True)
        result.change = output_change(base_out, session.run(None, case.feeds[small]))
        for batch, feeds in case.feeds.items():
            result.latency[batch] = paired_latency(original, feeds, session, feeds, runs=case.runs, warmup=3)
        logging.info("%s", " | ".join(map(str, result.cells(tuple(case.feeds)))))
        results.append(result)
    return results


def target_summary(results: list[Result]) -> str:
    """Which resnet_fmnist configurations meet the issue's target, measured at batch 1 and 32."""
    met, lines = [], []
    for r in results:
        if r.model != "resnet_fmnist" or r.failed or r.macs_removed is None or r.drop is None:
            continue
        worst = max(lat.ratio for lat in r.latency.values())
        if r.macs_removed >= TARGET["macs_removed"] and worst <= TARGET["latency"] and r.drop <= TARGET["drop"]:
            met.append(f"{r.config} ({r.macs_removed:.1f}% MACs, latency ratio {worst:.2f} at worst batch, "
                       f"drop {r.drop:+.2f} points)")
    if not any(r.model == "resnet_fmnist" for r in results):
        return "Target (resnet_fmnist): not measured, the model is not built."
    lines.append(f"Target on resnet_fmnist — ≥ {TARGET['macs_removed']:.0f}% MACs removed, latency ratio ≤ "
                 f"{TARGET['latency']} (both batch sizes), accuracy drop ≤ {TARGET['drop']:.0f} points: "
                 + ("**met** by " + "; ".join(met) if met else "**not met** by any configuration") + ".")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60, help="paired latency runs for the bundled models")
    parser.add_argument("--models", default="", help="comma-separated subset of model names")
    args = parser.parse_args()
    setup_logging(quiet_library=True)
    wanted = set(filter(None, args.models.split(",")))
    started = time.perf_counter()
    results: list[Result] = []
    notes: list[str] = []
    plan = [("resnet_fmnist", CHANNEL_CONFIGS + BLOCK_CONFIGS), ("vgg_digits", CHANNEL_CONFIGS),
            ("mlp_fmnist", CHANNEL_CONFIGS)]
    for name, configs in plan:
        if (not wanted or name in wanted) and (case := bundled_case(name, args.runs)) is not None:
            results += bench_case(case, configs)
            notes.append(case.note)
    for name, runs in (("ultraface-RFB-320", 30), ("light_resnet50", 8), ("light_densenet121", 8),
                       ("light_squeezenet", 20), ("light_shufflenet", 20)):
        if (not wanted or name in wanted) and (case := third_party_case(name, runs)) is not None:
            results += bench_case(case, THIRD_PARTY_CONFIGS)
            notes.append(case.note)
    headers = ["model", "configuration", "MMACs", "MACs removed %", "params (k)", "accuracy %", "drop (points)",
               "agreement %", "output change %", "latency b1", "latency b32", "pass s"]
    body = (
        "### Structured pruning: prune-channels and remove-blocks\n\n"
        "MACs: Conv/Gemm/MatMul multiply-accumulates per sample (onnxopt.stats). Accuracy: top-1 on the "
        "evaluation set; drop = original − pruned, in points; agreement = same top-1 as the original; output "
        "change = largest relative L2 change of an output on the batch-1 latency input. Latency: pruned/original "
        "paired ratio at batch 1 and 32, median [p10, p90], CPUExecutionProvider, 1 intra-op thread, graph "
        "optimizations on (< 1: pruned faster); the original is timed after an empty pipeline, i.e. exported "
        "the same way as the pruned model. \"recovery\": constant-channel folding plus least-squares refit of the "
        "layers that lost inputs, on the calibration set; \"no recovery\": plain removal. Block removal "
        "uses the calibration set only to measure sensitivity. Channel counts are rounded to multiples of 8 (the default) unless the row "
        "says round_to 1: compare those rows to see why (unaligned counts leave onnxruntime's blocked NCHWc "
        "Conv kernels, and fewer MACs can run slower). Third-party models have no calibration data here, so "
        "their recovery is the constant-channel fold only. \"pass s\": time of the passes.\n\n"
        + markdown_table(headers, [r.cells((1, 32)) for r in results])
        + "\n\n" + target_summary(results)
        + "\n\nData: " + "; ".join(notes)
        + f"\n\nTotal benchmark time: {time.perf_counter() - started:.0f} s."
    )
    command = COMMAND + (f" --models {args.models}" if args.models else "") + (
        f" --runs {args.runs}" if args.runs != 60 else "")
    write_section("pruning", command, body)


if __name__ == "__main__":
    main()
