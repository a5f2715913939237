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


class KernelProbe:
    """Probes one execution provider; caches results for the lifetime of the object (one run)."""

    def __init__(self, provider: str, opsets: dict[str, int]) -> None:
        self.provider = provider
        self.opsets = opsets
        self._cache: dict[tuple[str, str, TypeSig, TypeSig], ProbeResult] = {}

    def check(self, node: gs.Node, input_types: list[np.dtype | None], output_types: list[np.dtype | None],
              attrs: dict[str, Any]) -> ProbeResult:
        """Can the provider run ``node`` with these types and attributes (``attrs`` as rewritten)?"""
        key = (node.domain, node.op, _sig(input_types), _sig(output_types))
        if key not in self._cache:
            self._cache[key] = self._probe(node, input_types, output_types, attrs)
            logger.debug("probe %s %s on %s: %s", node.op, key[2:], self.provider, self._cache[key])
        return self._cache[key]

    @property
    def results(self) -> dict[str, str]:
        """``op(input types -> output types): status`` for every signature probed, for the report."""
        return {f"{op}({', '.join(i)} -> {', '.join(o)})": r.status for (_, op, i, o), r in self._cache.items()}

    def _probe(self, node: gs.Node, input_types: list[np.dtype | None], output_types: list[np.dtype | None],
               attrs: dict[str, Any]) -> ProbeResult:
        slots = list(zip(node.inputs, input_types)) + list(zip(node.outputs, output_types))
        if not all(isinstance(t, np.dtype) for tensor, t in slots if tensor.name):
            return ProbeResult("unknown", "a tensor type is unknown or not a numpy type")
        loaded = self._load(_one_node_model(node, input_types, output_types, attrs, self.opsets))
        if not isinstance(loaded, str):
            return (ProbeResult("emulated", "onnxruntime wraps it in Casts to float32 at load time") if loaded
                    else ProbeResult("native"))
        as_float = [np.dtype(np.float32) if t == np.float16 else t for t in input_types]
        out_float = [np.dtype(np.float32) if t == np.float16 else t for t in output_types]
        if isinstance(self._load(_one_node_model(node, as_float, out_float, _float_attrs(attrs), self.opsets)), str):
            return ProbeResult("unknown", "the float32 node does not load either")
        return ProbeResult("missing", loaded)

    def _load(self, model: onnx.ModelProto) -> int | str:
        """The number of Casts onnxruntime added (always 0 off CPU) when it loads, else the error."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4
        cpu = self.provider == "CPUExecutionProvider"
        if not cpu:
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        with tempfile.TemporaryDirectory(prefix="onnxopt-probe-") as tmp:
            saved = Path(tmp) / "probe.onnx"
            if cpu:
                options.optimized_model_filepath = str(saved)
            try:
                ort.InferenceSession(model.SerializeToString(), options, providers=[self.provider])
            except Exception as exc:  # onnxruntime's exception types are not public API
                text = str(exc).strip().splitlines()
                return text[0] if text else type(exc).__name__
            if not cpu:
                return 0
            added = sum(n.op_type == "Cast" for n in onnx.load(str(saved)).graph.node)
        return added - sum(n.op_type == "Cast" for n in model.graph.node)


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
