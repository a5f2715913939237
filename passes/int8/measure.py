"""What the int8 pass measures on data and in onnxruntime: calibration statistics, the accuracy or
agreement drop, each layer's own quantization error, and which layers onnxruntime fused."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.calibration import Observer, QParams, make_observer
from onnxopt.data import Batch, DataSource
from onnxopt.graph import export, import_graph
from onnxopt.runtime import iter_activations, make_session
from passes.int8.emit import Emitter, weight_floors
from passes.int8.op_table import FLOAT_COMPUTE_OPS, INTEGER_LAYER_OPS
from passes.int8.plan import Plan
from onnxopt.ops import INTEGER_OPS

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Budget:
    """How far the int8 model is from the float one on the calibration data (percentage points)."""

    metric: str  # "accuracy" (labels given) or "agreement"
    float_value: float
    int8_value: float
    #: top-1 decisions compared (samples, times positions for outputs with more axes)
    predictions: int

    @property
    def drop(self) -> float:
        return self.float_value - self.int8_value

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "float": round(self.float_value, 3), "int8": round(self.int8_value, 3),
                "drop": round(self.drop, 3), "predictions": self.predictions}


class Limited:
    """A data source cut to its first ``limit`` samples (``None``: all); an
    ``onnxopt.runtime.BatchStream``."""

    def __init__(self, source: DataSource, limit: int | None) -> None:
        self.source = source
        self.limit = limit
        self.description = source.description
        self.synthetic = source.synthetic
        #: samples yielded by the last (or current) pass over the data
        self.seen = 0
        #: the first batch of the last pass (a probe for the checks after calibration: no second read of the data)
        self.first: Batch | None = None

    def batches(self, batch_size: int = 32, *, progress: bool = False, description: str = "") -> Iterator[Batch]:
        self.seen = 0
        stream = self.source.batches(batch_size, progress=progress, description=description)
        try:
            for batch in stream:
                if self.limit is not None and self.seen + batch.size > self.limit:
                    keep = self.limit - self.seen
                    batch = Batch({k: v[:keep] for k, v in batch.inputs.items()},
                                  None if batch.labels is None else batch.labels[:keep])
                if batch.size:
                    if self.seen == 0:  # copied: a source may refill its buffers for the next batch
                        self.first = Batch({k: np.array(v) for k, v in batch.inputs.items()}, batch.labels)
                    self.seen += batch.size
                    yield batch
                if self.limit is not None and self.seen >= self.limit:
                    return
        finally:
            stream.close()


@dataclass(frozen=True)
class RunOptions:
    batch_size: int
    providers: tuple[str, ...]
    threads: int | None
    progress: bool


def calibrate(model: gs.Graph | onnx.ModelProto, names: Sequence[str], data: Limited, method: str,
              options: Mapping[str, float | int], run: RunOptions) -> dict[str, Observer]:
    """One streaming pass over the data (``data.seen`` then holds the samples seen), with onnxruntime's
    graph optimizations on, as in its own calibrators: ranges move by float rounding only, and the
    optimized kernels ran resnet_fmnist's calibration ~2x faster."""
    observers = {name: make_observer(method, **options) for name in names}
    stream = iter_activations(model, list(names), data, batch_size=run.batch_size,
                              providers=run.providers, threads=run.threads, progress=run.progress,
                              description=f"calibrating ({method})", optimize=True)
    for values in stream:
        for name, value in values.items():
            observers[name].update(value)
    return observers


def measure_budget(float_model: onnx.ModelProto, int8_model: onnx.ModelProto, data: Limited,
                   run: RunOptions) -> Budget:
    """Top-1 accuracy (labels present) or agreement with the float model, in percent, both in
    onnxruntime with all optimizations on (the integer kernels that will really run)."""
    reference = make_session(float_model, providers=run.providers, threads=run.threads, optimize=True)
    candidate = make_session(int8_model, providers=run.providers, threads=run.threads, optimize=True)
    agree = correct_f = correct_q = total = labelled = 0
    for batch in data.batches(run.batch_size):
        f = reference.run(None, batch.inputs)[0]
        q = candidate.run(None, batch.inputs)[0]
        pf, pq = f.argmax(-1), q.argmax(-1)
        agree += int(np.sum(pf == pq))
        total += pf.size
        if batch.labels is not None and batch.labels.shape == pf.shape:
            correct_f += int(np.sum(pf == batch.labels))
            correct_q += int(np.sum(pq == batch.labels))
            labelled += pf.size
    if labelled == total and total:
        return Budget("accuracy", 100.0 * correct_f / total, 100.0 * correct_q / total, total)
    return Budget("agreement", 100.0, 100.0 * agree / max(total, 1), total)


def layer_errors(float_model: onnx.ModelProto, plan: Plan, params: Mapping[str, QParams], data: Limited,
                 run: RunOptions) -> dict[str, float]:
    """Each quantized layer's own error: a copy of the layer reading Q/DQ'd float inputs and int8
    weights runs beside the float layer; the result is NMSE = sum((y8 - y)^2) / sum(y^2)."""
    graph = import_graph(float_model)
    emitter = Emitter(graph, plan.weight_bound, weight_floors(graph, plan, params))
    nodes = {n.name: n for n in graph.nodes}
    weights = {w.node: w for w in plan.weights}
    biases = {b.node: b for b in plan.biases}
    pairs: dict[str, tuple[str, str]] = {}
    for layer in plan.layers:
        node = nodes[layer]
        inputs = list(node.inputs)
        for i, tensor in enumerate(node.inputs):
            if tensor.name in plan.tensors:
                source = plan.tensors[tensor.name]
                inputs[i] = emitter.qdq(tensor, params[source], source)
        scale = None
        if layer in weights:
            use = weights[layer]
            inputs[use.index], scale = emitter.weight(node.inputs[use.index], use.axis)
        if layer in biases and scale is not None:
            use_b = biases[layer]
            inputs[use_b.index] = emitter.bias(node, node.inputs[use_b.index],
                                               params[plan.tensors[use_b.activation]].scale, scale, [])
        shadow = gs.Variable(emitter.name(f"{layer}_int8_output"))
        graph.nodes.append(gs.Node(node.op, emitter.name(f"{layer}_int8"), attrs=dict(node.attrs),
                                   inputs=inputs, outputs=[shadow]))
        pairs[layer] = (node.outputs[0].name, shadow.name)
    graph.toposort()
    model = export(graph)
    names = [n for pair in pairs.values() for n in pair]
    err = dict.fromkeys(pairs, 0.0)
    ref = dict.fromkeys(pairs, 0.0)
    for values in iter_activations(model, names, data, batch_size=run.batch_size,
                                   providers=run.providers, threads=run.threads):
        for layer, (a, b) in pairs.items():
            y, y8 = values[a].astype(np.float64), values[b].astype(np.float64)
            err[layer] += float(np.sum((y8 - y) ** 2))
            ref[layer] += float(np.sum(y ** 2))
    return {layer: err[layer] / ref[layer] if ref[layer] > 0 else 0.0 for layer in pairs}


@dataclass(frozen=True)
class Fusion:
    """The ops of onnxruntime's optimized int8 graph and how far its fused kernels are from the Q/DQ
    reference (``details["fusion"]`` of the report, in this order)."""

    #: quantized compute layers in the plan
    layers: int
    #: integer kernels that replace one compute layer each
    integer_layers: int
    integer_kernels: dict[str, int]
    float_compute_ops: dict[str, int]
    quantize_linear: int
    dequantize_linear: int
    #: planned layers onnxruntime left in float
    unfused_layers: list[str]
    #: max |fused - reference| / max |reference| over the outputs, on the first calibration batch
    kernel_deviation: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fusion_report(graph: gs.Graph, plan: Plan, providers: Sequence[str], probe: Batch) -> Fusion:
    """The ops of onnxruntime's optimized graph (integer kernels it fused, layers left in float), and
    how far its outputs on ``probe`` are from the Q/DQ reference (optimizations off)."""
    reference = make_session(graph, providers=providers, threads=1)
    # the two runs overlap (onnxruntime releases the GIL): the reference runs while the fused session is built
    with ThreadPoolExecutor(max_workers=1) as pool:
        expected = pool.submit(reference.run, None, probe.inputs)
        with tempfile.TemporaryDirectory(prefix="onnxopt-int8-") as tmp:
            path = Path(tmp) / "optimized.onnx"
            fused = make_session(graph, providers=providers, threads=1, optimize=True,
                                 optimized_model_path=str(path))
            optimized = onnx.load(str(path), load_external_data=False)
        got = fused.run(None, probe.inputs)
        expected_outputs = expected.result()
    deviation = 0.0
    for a, b in zip(got, expected_outputs):
        deviation = max(deviation, float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-12))
    counts = Counter(n.op_type for n in optimized.graph.node)
    layer_names = set(plan.layers)
    unfused = sorted(n.name for n in optimized.graph.node
                     if n.op_type in FLOAT_COMPUTE_OPS and n.name in layer_names)
    return Fusion(
        layers=len(plan.layers),
        integer_layers=sum(c for op, c in counts.items() if op in INTEGER_LAYER_OPS),
        integer_kernels={op: c for op, c in sorted(counts.items()) if op in INTEGER_OPS},
        float_compute_ops={op: c for op, c in sorted(counts.items()) if op in FLOAT_COMPUTE_OPS},
        quantize_linear=counts.get("QuantizeLinear", 0),
        dequantize_linear=counts.get("DequantizeLinear", 0),
        unfused_layers=unfused,
        kernel_deviation=float(f"{deviation:.3g}"),
    )
