"""Ask onnxruntime whether an execution provider runs a node in float16.

How we find out: for each distinct (domain, op, input types, output types) the pass would create,
a one-node model with exactly that signature (the node's own attributes, inputs as graph inputs
with the node's shapes) is loaded in an ``InferenceSession`` on the target provider alone:

- on a non-CPU provider the CPU fallback is switched off (session config
  ``session.disable_cpu_ep_fallback = 1``), so the session only loads when the provider itself
  claims the float16 node; a node it cannot claim would fall back to the CPU, so it stays float32;
- on the CPU provider, onnxruntime's ``InsertCastTransformer`` makes a float16 node without a CPU
  float16 kernel load anyway, by wrapping it in Casts to float32 at load time (it runs even with
  graph optimizations disabled). We save the model onnxruntime actually runs
  (``optimized_model_filepath``) and call the kernel *emulated* when Casts appear in it. Such nodes
  still load and the file still halves, so they are converted and listed in the report; on CPU
  float16 is a size optimisation, not a speed one.

A node whose float16 model fails to load while the same node in float32 loads has no float16
kernel (``missing``) and stays float32. When the float32 model does not load either, the probe
proves nothing (``unknown``) and does not block. Results are cached in the probe object, which the
pass creates once per run (no global state), so a newer onnxruntime is asked afresh.

Some kernels load and then refuse float16 when they run, depending on an attribute (the CPU
ScatterND with ``reduction=add``). ``RUN_TIME_UNSUPPORTED`` lists the known (provider, op,
attribute, values) combinations, so they are missing without a session; as the safety net for the
ones not listed, a one-node model that loads is also run once, on all-zero inputs (zero is a valid
index, so gathers and scatters run), and a float16 run that fails where the float32 run of the same
node succeeds is ``missing`` too.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

logger = logging.getLogger(__name__)

KernelStatus = Literal["native", "emulated", "missing", "unknown"]


@dataclass(frozen=True)
class ProbeResult:
    status: KernelStatus
    detail: str = ""


TypeSig = tuple[str, ...]

#: (provider, op) -> (attribute, values for which its float16 kernel fails at run time): it loads
#: and raises "MLFloat16 data type is not supported ... when reduction is 'add'" (onnxruntime 1.32)
RUN_TIME_UNSUPPORTED: dict[tuple[str, str], tuple[str, frozenset[str]]] = {
    ("CPUExecutionProvider", "ScatterND"): ("reduction", frozenset({"add", "mul", "min", "max"})),
    ("CPUExecutionProvider", "ScatterElements"): ("reduction", frozenset({"add", "mul"})),
}
#: unknown dimensions of a probe run's inputs are this long; a probe input above this many elements
#: is not run (the load check alone decides)
PROBE_DIM = 1
PROBE_RUN_ELEMENTS = 1 << 22


class KernelProbe:
    """Probes one execution provider; caches results for the lifetime of the object (one run)."""

    def __init__(self, provider: str, opsets: dict[str, int]) -> None:
        self.provider = provider
        self.opsets = opsets
        self._cache: dict[tuple[str, str, TypeSig, TypeSig, str], ProbeResult] = {}

    def check(self, node: gs.Node, input_types: list[np.dtype | None], output_types: list[np.dtype | None],
              attrs: dict[str, Any]) -> ProbeResult:
        """Can the provider run ``node`` with these types and attributes (``attrs`` as rewritten)?"""
        key = (node.domain, node.op, _sig(input_types), _sig(output_types), _attr_sig(attrs))
        if key not in self._cache:
            self._cache[key] = self._probe(node, input_types, output_types, attrs)
            logger.debug("probe %s %s on %s: %s", node.op, key[2:], self.provider, self._cache[key])
        return self._cache[key]

    @property
    def results(self) -> dict[str, str]:
        """``op(input types -> output types): status`` for every signature probed, for the report."""
        return {f"{op}({', '.join(i)} -> {', '.join(o)})": r.status for (_, op, i, o, _), r in self._cache.items()}

    def _probe(self, node: gs.Node, input_types: list[np.dtype | None], output_types: list[np.dtype | None],
               attrs: dict[str, Any]) -> ProbeResult:
        slots = list(zip(node.inputs, input_types)) + list(zip(node.outputs, output_types))
        if not all(isinstance(t, np.dtype) for tensor, t in slots if tensor.name):
            return ProbeResult("unknown", "a tensor type is unknown or not a numpy type")
        known = _known_run_failure(self.provider, node.op, attrs)
        if known is not None:
            return ProbeResult("missing", known)
        half = _one_node_model(node, input_types, output_types, attrs, self.opsets)
        as_float = [np.dtype(np.float32) if t == np.float16 else t for t in input_types]
        out_float = [np.dtype(np.float32) if t == np.float16 else t for t in output_types]
        single = _one_node_model(node, as_float, out_float, _float_attrs(attrs), self.opsets)
        loaded = self._load(half)
        if isinstance(loaded, str):
            if isinstance(self._load(single), str):
                return ProbeResult("unknown", "the float32 node does not load either")
            return ProbeResult("missing", loaded)
        failed = self._run(half)
        if failed is not None and self._run(single) is None:
            return ProbeResult("missing", f"loads but fails at run time: {failed}")
        return (ProbeResult("emulated", "onnxruntime wraps it in Casts to float32 at load time") if loaded
                else ProbeResult("native"))

    def _session(self, model: onnx.ModelProto, saved: Path | None = None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4
        if self.provider != "CPUExecutionProvider":
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if saved is not None:
            options.optimized_model_filepath = str(saved)
        return ort.InferenceSession(model.SerializeToString(), options, providers=[self.provider])

    def _run(self, model: onnx.ModelProto) -> str | None:
        """The error of one run on all-zero inputs, else ``None`` (also when the inputs are too large
        to be worth a run, or the float32 twin is what fails: the caller compares)."""
        feeds = {}
        for value in model.graph.input:
            tensor_type = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else PROBE_DIM for d in tensor_type.shape.dim]
            if not tensor_type.HasField("shape") or int(np.prod(shape)) > PROBE_RUN_ELEMENTS:
                return None
            feeds[value.name] = np.zeros(shape, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        try:
            self._session(model).run(None, feeds)
        except Exception as exc:  # onnxruntime's exception types are not public API
            return _first_line(exc)
        return None

    def _load(self, model: onnx.ModelProto) -> int | str:
        """The number of Casts onnxruntime added (always 0 off CPU) when it loads, else the error."""
        cpu = self.provider == "CPUExecutionProvider"
        with tempfile.TemporaryDirectory(prefix="onnxopt-probe-") as tmp:
            saved = Path(tmp) / "probe.onnx"
            try:
                self._session(model, saved if cpu else None)
            except Exception as exc:  # onnxruntime's exception types are not public API
                return _first_line(exc)
            if not cpu:
                return 0
            added = sum(n.op_type == "Cast" for n in onnx.load(str(saved)).graph.node)
        return added - sum(n.op_type == "Cast" for n in model.graph.node)


def _known_run_failure(provider: str, op: str, attrs: dict[str, Any]) -> str | None:
    """Why ``RUN_TIME_UNSUPPORTED`` says the float16 kernel fails at run time, else ``None``."""
    entry = RUN_TIME_UNSUPPORTED.get((provider, op))
    if entry is None:
        return None
    name, values = entry
    value = attrs.get(name)
    value = value.decode() if isinstance(value, bytes) else value
    if value not in values:
        return None
    return f"its float16 kernel fails at run time with {name}={value} (listed in RUN_TIME_UNSUPPORTED)"


def _attr_sig(attrs: dict[str, Any]) -> str:
    """The scalar and list attributes, for the cache key: a run can depend on them (a reduction)."""
    return repr(sorted((k, v) for k, v in attrs.items() if isinstance(v, (int, float, str, bytes, tuple, list))))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _sig(types: list[np.dtype | None]) -> TypeSig:
    return tuple(t.name if isinstance(t, np.dtype) else str(t) for t in types)


def _float_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = dict(attrs)
    for name, value in attrs.items():
        if name in ("to", "dtype") and value == onnx.TensorProto.FLOAT16:
            out[name] = onnx.TensorProto.FLOAT
        elif isinstance(value, gs.Constant) and value.values.dtype == np.float16:
            out[name] = gs.Constant(value.name, value.values.astype(np.float32))
    return out


def _one_node_model(node: gs.Node, input_types: list[np.dtype | None], output_types: list[np.dtype | None],
                    attrs: dict[str, Any], opsets: dict[str, int]) -> onnx.ModelProto:
    inputs = [gs.Variable(f"in{i}", dtype=t, shape=_shape(x)) if x.name else gs.Variable.empty()
              for i, (x, t) in enumerate(zip(node.inputs, input_types))]
    outputs = [gs.Variable(f"out{i}", dtype=t) if y.name else gs.Variable.empty()
               for i, (y, t) in enumerate(zip(node.outputs, output_types))]
    proto = OnnxExporter.export_node(gs.Node(node.op, "probe", dict(attrs), inputs, outputs, domain=node.domain))
    graph = onnx.helper.make_graph(
        [proto], "probe",
        [onnx.helper.make_tensor_value_info(v.name, _elem(v.dtype), v.shape) for v in inputs if v.name],
        [onnx.helper.make_tensor_value_info(v.name, _elem(v.dtype), None) for v in outputs if v.name])
    imports = [onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]
    model = onnx.helper.make_model(graph, opset_imports=imports)
    model.ir_version = max(4, onnx.helper.find_min_ir_version_for(imports, ignore_unknown=True))
    return model


def _shape(tensor: gs.Tensor) -> list[int | str | None] | None:
    if tensor.shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else None for d in tensor.shape]


def _elem(dtype: np.dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(dtype)
