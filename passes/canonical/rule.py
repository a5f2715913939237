"""Canonical rewrites written as rules: which nodes a rule looks at, a check that returns what the
rewrite needs or the reason the node is left alone, and the rewrite (as onnxscript's rewrite rules).

``RulePass.run`` walks the main graph once, in node order; every node of the rule's ops that it
leaves alone is reported with the check's reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Generic, TypeVar

import onnx_graphsurgeon as gs

from onnxopt.graph import FreshNames, TypeInfo, infer_types, is_default_domain, node_label
from onnxopt.pass_base import Pass, PassContext, PassReport

logger = logging.getLogger(__name__)

#: what a rule's check found (the rewrite's input)
Match = TypeVar("Match")


class RuleScope:
    """The graph a rule runs on, with fresh names and (on first use) inferred types."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.names = FreshNames.of(graph)

    @cached_property
    def types(self) -> TypeInfo:
        return infer_types(self.graph)

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        return any(t is tensor for t in self.graph.outputs)


@dataclass(kw_only=True)
class RulePass(Pass, Generic[Match]):
    """A lossless rewrite of single nodes (and what they feed) of the default ONNX domain."""

    #: op types of the nodes the rule looks at
    ops: ClassVar[frozenset[str]]

    def check(self, node: gs.Node, scope: RuleScope) -> Match | str:
        """What ``rewrite`` needs, or the reason ``node`` is left alone (a ``str``)."""
        raise NotImplementedError

    def rewrite(self, node: gs.Node, found: Match, scope: RuleScope) -> None:
        raise NotImplementedError

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        scope = RuleScope(graph)
        for node in [n for n in graph.nodes if n.op in self.ops and is_default_domain(n)]:
            found = self.check(node, scope)
            if isinstance(found, str):
                report.skip(node_label(node), found)
                continue
            self.rewrite(node, found, scope)
            report.changes += 1
        return report
