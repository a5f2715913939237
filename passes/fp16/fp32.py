"""fp32: a float16 model (weights, graph inputs/outputs, compute) brought back to float32.

Every float16 value is exactly a float32 value, so no weight changes. What changes is the
arithmetic: the result computes in float32 where the original rounded to float16, so outputs
differ from the original by that rounding only. Passes that work on float32 (``int8``, pruning,
``binary``) declare ``needs_float32`` and the pipeline runs this pass first on a float16 model.

Converted: initializers and Constant-node values, the element type of every float16 tensor (graph
inputs and outputs included: their names stay), Cast ``to`` and ``dtype`` attributes (EyeLike,
RandomNormal...), ConstantOfShape ``value``; inside If/Loop/Scan bodies too. A Cast that then
converts float32 to float32 is bypassed, unless it writes a graph output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.graph import rewire, subgraphs
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance

logger = logging.getLogger(__name__)

_TYPE_ATTRS = ("to", "dtype")


class _Counts:
    def __init__(self) -> None:
        self.constants = self.tensors = self.attributes = self.casts_removed = 0


def _float32(constant: gs.Constant) -> bool:
    """Make a float16 constant float32; whether it was float16."""
    if constant.dtype != np.float16:
        return False
    constant.values = np.asarray(constant.values, np.float32)
    return True


def _convert_scope(graph: gs.Graph, counts: _Counts) -> None:
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            counts.constants += _float32(tensor)
        elif tensor.dtype == np.float16:
            tensor.dtype = np.float32
            counts.tensors += 1
    for node in graph.nodes:
        for key, value in node.attrs.items():
            if isinstance(value, gs.Constant):  # Constant's value, ConstantOfShape's value
                counts.constants += _float32(value)
            elif key in _TYPE_ATTRS and value == onnx.TensorProto.FLOAT16:
                node.attrs[key] = onnx.TensorProto.FLOAT
                counts.attributes += 1


def _bypass_float_casts(graph: gs.Graph, counts: _Counts) -> None:
    outputs = {id(t) for t in graph.outputs}
    for node in [n for n in graph.nodes if n.op == "Cast"]:
        source, out = node.inputs[0], node.outputs[0]
        if node.attrs.get("to") == onnx.TensorProto.FLOAT and source.dtype == np.float32 and id(out) not in outputs:
            rewire(out, source)
            node.outputs.clear()
            counts.casts_removed += 1


@dataclass(kw_only=True)
class Fp32(Pass):
    name: ClassVar[str] = "fp32"
    summary: ClassVar[str] = ("convert a float16 model (weights, inputs/outputs, compute) to float32; weights "
                              "stay exact, so passes that need float32 apply")
    lossy: ClassVar[bool] = False
    # the weights are exact; outputs lose the float16 rounding of the original's arithmetic, which the
    # fp16 pass bounds the same way (passes.fp16.fp16.Fp16.tolerance)
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=2e-2, atol=2e-2, min_agreement=0.999)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        counts = _Counts()
        for scope in [graph, *subgraphs(graph)]:
            _convert_scope(scope, counts)
            _bypass_float_casts(scope, counts)
        report.changes = counts.constants + counts.tensors + counts.attributes
        report.details.update(constants=counts.constants, tensors=counts.tensors, type_attributes=counts.attributes,
                              casts_removed=counts.casts_removed)
        if not report.changes:
            report.notes.append("no float16 tensors: nothing to convert")
        return report
