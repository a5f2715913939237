"""Unique node names: passes that refer to nodes by name (a quantization plan, ``exclude_nodes``)
need every node of the main graph named once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from onnxopt.graph import unique_node_names
from onnxopt.pass_base import Pass, PassContext, PassReport

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class NameNodes(Pass):
    name: ClassVar[str] = "name-nodes"
    summary: ClassVar[str] = ("Give unnamed and duplicate-named nodes of the main graph unique names "
                              "(op_index, name_1, ...).")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        for node, name in zip(graph.nodes, unique_node_names(graph)):
            if node.name != name:
                node.name = name
                report.changes += 1
        if report.changes:
            report.notes.append(f"gave {report.changes} unnamed or duplicate-named node(s) unique names")
        return report
