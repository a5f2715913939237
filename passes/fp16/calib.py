"""Automatic mixed precision from calibration data: which nodes must stay float32.

Two measurements, both streaming the calibration data batch by batch (nothing kept between
batches); tensors inside subgraphs cannot be fetched as outputs, so only the main graph is measured:
a node with a subgraph (If/Loop/Scan) is judged by its inputs and outputs, and when it is blocked
its whole body stays float32.

1. *Range*: the largest finite ``|x|`` of every float32 activation of the float32 model
   (``onnxopt.runtime.iter_activations``). A node with an input or output beyond
   ``max_abs_activation`` stays float32 (float16 overflows to inf at 65504; its consumers also see
   the large value, so they stay float32 too).
2. *Error*: a converted copy runs side by side with the float32 model; each tensor gets its relative
   L2 error ``||fp16 - fp32|| / ||fp32||`` over all samples (``inf`` when float16 gives inf/NaN where
   float32 is finite). A node's *added* error is its output error minus its largest input error.
   A converted node (or a node with a subgraph) that adds more than ``max_node_error`` stays
   float32; a node already kept for that reason that still adds too much is hurt by the rounding
   of its float16 inputs, so their producers stay float32 too (e.g. ``(x + 2048) - 2048``: the Sub
   is blocked first, then the Add).
   This repeats, one conversion and one pass over the data per round, until a round blocks nothing
   (at most ``MAX_ROUNDS``).

   onnxruntime's CPU provider runs most float16 nodes in float32 between Casts it inserts, and
   drops the Cast pairs between two such nodes, so on CPU a float16 tensor is often never rounded
   to float16. It also moves its Casts across "precision-free" nodes such as Identity, so an
   Identity alone rounds nothing (onnxruntime 1.32). The measured copy therefore passes every
   float16 node output, in the main graph and in subgraphs, through ``Identity -> Cast(to=float16)``:
   the Cast is the model's own and stays, and each output is rounded as a float16 runtime would
   round it (``tests/test_fp16.py`` checks this against numpy float16).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.data import DataSource
from onnxopt.graph import FreshNames, export, import_graph, node_label, subgraphs
from onnxopt.runtime import iter_activations, make_session
from passes.fp16.convert import F16, F32, node_key

logger = logging.getLogger(__name__)

BATCH_SIZE = 32
MAX_ROUNDS = 4

#: converts a graph in place with the given blocked nodes (key -> reason); returns converted keys
ConvertFn = Callable[[gs.Graph, dict[str, str]], set[str]]


@dataclass(frozen=True)
class Limits:
    max_abs_activation: float
    max_node_error: float | None


@dataclass(frozen=True)
class Runner:
    """Where calibration runs: providers, threads, progress bars."""

    providers: Sequence[str]
    threads: int | None
    progress: bool


def calibration_blocks(graph: gs.Graph, data: DataSource, limits: Limits, convert: ConvertFn,
                       runner: Runner) -> tuple[dict[str, str], dict[str, Any]]:
    """Nodes of ``graph`` (float32, types known) that must stay float32 (key -> reason), and the
    numbers behind the decision for the report."""
    reference = export(graph)
    names = [t.name for t in _measurable(graph)]
    peaks, samples = activation_peaks(reference, names, data, runner)
    blocked: dict[str, str] = {}
    overflow: dict[str, float] = {}
    for node in graph.nodes:
        worst = max((peaks[t.name] for t in [*node.inputs, *node.outputs] if t.name in peaks), default=0.0)
        if worst > limits.max_abs_activation:
            blocked[node_key(node)] = (f"float32 activation reaches {worst:.4g} on calibration data "
                                       f"(> max_abs_activation {limits.max_abs_activation:g})")
            overflow[node_label(node)] = worst
    details: dict[str, Any] = {"samples": samples, "max_activation": max(peaks.values(), default=0.0),
                               "overflow": overflow}
    if limits.max_node_error is not None:
        details.update(_error_rounds(graph, reference, names, data, limits.max_node_error, convert, blocked, runner))
    return blocked, details


def _error_rounds(graph: gs.Graph, reference: onnx.ModelProto, names: list[str], data: DataSource,
                  threshold: float, convert: ConvertFn, blocked: dict[str, str], runner: Runner) -> dict[str, Any]:
    by_key = {node_key(n): n for n in graph.nodes}
    containers = {node_key(n) for n in graph.nodes if any(isinstance(v, gs.Graph) for v in n.attrs.values())}
    for_error: dict[str, str] = {}
    added: dict[str, tuple[str, float]] = {}
    rounds = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        trial = import_graph(reference)
        converted = convert(trial, dict(blocked))
        materialise_float16(trial)
        trial.cleanup(remove_unused_graph_inputs=False)
        errors = relative_errors(reference, export(trial), names, data, runner)
        added = _added_errors(graph, converted | containers | set(for_error), errors)
        new: dict[str, str] = {}
        for key, (label, err) in added.items():
            if err <= threshold:
                continue
            if key in converted or (key in containers and key not in blocked):  # a body converted in float16
                new[key] = (f"float16 adds {err:.3g} relative L2 error on calibration data "
                            f"(> max_node_error {threshold:g})")
                continue
            for t in by_key[key].inputs:
                producer = t.inputs[0] if isinstance(t, gs.Variable) and t.inputs else None
                if producer is not None and node_key(producer) in converted and node_key(producer) not in blocked:
                    new[node_key(producer)] = (f"its float16 output costs {label} {err:.3g} relative L2 error "
                                               f"(> max_node_error {threshold:g})")
        if not new:
            break
        blocked.update(new)
        for_error.update(new)
    return {"error_rounds": rounds,
            "error_blocked": {node_label(by_key[k]): reason for k, reason in for_error.items()},
            "node_error": {label: round(err, 6) for label, err in added.values()}}


def materialise_float16(graph: gs.Graph) -> None:
    """Make the runtime round each float16 node output of ``graph`` and its subgraphs to float16:
    ``node -> raw -> Identity -> Cast(to=float16) -> out``."""
    scopes = [graph, *subgraphs(graph)]
    names = FreshNames.of(graph)

    def fresh(base: str) -> gs.Variable:
        return gs.Variable(names.fresh(base), dtype=F16)

    for g in scopes:
        for node in list(g.nodes):
            for k, out in enumerate(node.outputs):
                if out.dtype != F16 or any(out is t for t in g.outputs):
                    continue
                raw, held = fresh(f"{out.name}_unrounded"), fresh(f"{out.name}_held")
                raw.shape = held.shape = out.shape
                node.outputs[k] = raw
                g.nodes.append(gs.Node("Identity", inputs=[raw], outputs=[held]))
                g.nodes.append(gs.Node("Cast", attrs={"to": onnx.TensorProto.FLOAT16}, inputs=[held], outputs=[out]))
    graph.toposort()


def _added_errors(graph: gs.Graph, keys: set[str], errors: dict[str, float]) -> dict[str, tuple[str, float]]:
    """For the nodes ``keys``: (label, output error minus the largest input error)."""
    out: dict[str, tuple[str, float]] = {}
    for node in graph.nodes:
        key = node_key(node)
        if key not in keys:
            continue
        out_err = max((errors[t.name] for t in node.outputs if t.name in errors), default=0.0)
        in_err = max((errors[t.name] for t in node.inputs if t.name in errors), default=0.0)
        out[key] = (node_label(node), out_err - in_err if math.isfinite(in_err) else 0.0)
    return out


def _measurable(graph: gs.Graph) -> list[gs.Tensor]:
    """float32 activations of the main graph that can be fetched: graph inputs and node outputs."""
    found = {t.name: t for t in graph.inputs if t.dtype == F32}
    for node in graph.nodes:
        if node.op != "Constant":
            found.update({t.name: t for t in node.outputs if t.name and t.dtype == F32})
    return list(found.values())


def activation_peaks(model: onnx.ModelProto, names: Sequence[str], data: DataSource,
                     runner: Runner) -> tuple[dict[str, float], int]:
    """Largest finite magnitude of each tensor over ``data``, and the number of samples seen."""
    peaks = dict.fromkeys(names, 0.0)
    samples = 0
    for values in iter_activations(model, list(names), data, batch_size=BATCH_SIZE, providers=runner.providers,
                                   threads=runner.threads, progress=runner.progress,
                                   description="fp16: activation ranges"):
        for name, value in values.items():
            finite = np.abs(value[np.isfinite(value)])
            if finite.size:
                peaks[name] = max(peaks[name], float(finite.max()))
        samples += len(next(iter(values.values()))) if values else 0
    return peaks, samples


def relative_errors(reference: onnx.ModelProto, candidate: onnx.ModelProto, names: Sequence[str],
                    data: DataSource, runner: Runner) -> dict[str, float]:
    """Relative L2 error of each tensor of ``candidate`` against ``reference`` over ``data``."""
    wanted = list(dict.fromkeys(names))
    ref_session = make_session(reference, providers=runner.providers, threads=runner.threads, outputs=wanted)
    cand_session = make_session(candidate, providers=runner.providers, threads=runner.threads, outputs=wanted)
    diff = dict.fromkeys(wanted, 0.0)
    norm = dict.fromkeys(wanted, 0.0)
    broken: set[str] = set()
    for batch in data.batches(BATCH_SIZE, progress=runner.progress, description="fp16: float16 error"):
        ref_values = ref_session.run(wanted, batch.inputs)
        cand_values = cand_session.run(wanted, batch.inputs)
        for name, ref, cand in zip(wanted, ref_values, cand_values):
            ref = np.asarray(ref, np.float64)
            cand = np.asarray(cand, np.float64)
            ok = np.isfinite(ref)
            if not np.isfinite(cand[ok]).all():
                broken.add(name)
            delta = np.where(ok & np.isfinite(cand), cand - ref, 0.0)
            diff[name] += float(np.sum(delta ** 2))
            norm[name] += float(np.sum(np.where(ok, ref, 0.0) ** 2))
    return {name: math.inf if name in broken else math.sqrt(diff[name] / norm[name]) if norm[name] > 0
            else (0.0 if diff[name] == 0 else math.inf) for name in wanted}
