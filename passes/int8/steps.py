"""The int8 pass's own preparation steps, declared as its prerequisites when their settings ask for
it (``requantize``): passes of the int8 family, not offered on their own."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from onnxopt.pass_base import Pass, PassContext, PassReport
from passes.int8.prepare import strip_qdq

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StripQdq(Pass):
    name: ClassVar[str] = "strip-qdq"
    summary: ClassVar[str] = ("Remove the Q/DQ pairs of a QDQ model and dequantize its quantized constants, "
                              "so that it can be quantized again.")
    lossy: ClassVar[bool] = True  # the float values are the dequantized ones, not the original model's

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        if any(n.op == "DequantizeLinear" for n in graph.nodes):
            report.changes = strip_qdq(graph)
            report.notes.append(f"requantize: removed {report.changes} Q/DQ pair(s) of the input model")
        return report
