"""The int8 pass's own preparation steps, declared as its prerequisites when their settings ask for
them (``upgrade_opset``, ``requantize``): passes of the int8 family, not offered on their own."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from onnxopt.graph import default_opset
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
from passes.int8.prepare import strip_qdq, upgrade_opset

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class UpgradeOpset(Pass):
    name: ClassVar[str] = "upgrade-opset"
    summary: ClassVar[str] = "Convert the model to a newer default opset with the onnx version converter."
    # the converter rewrites ops into their newer forms, which compute the same in float
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=1e-5, atol=1e-6)

    version: int

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        before = default_opset(graph)
        note = upgrade_opset(graph, self.version)
        if note:
            report.notes.append(note)
            report.details["opset"] = {"from": before, "to": default_opset(graph)}
            report.changes = 1
        return report


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
