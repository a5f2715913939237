"""Two-input ``Sum`` (Caffe2 residuals) becomes ``Add``, which has an integer kernel and which the
fusions of onnxruntime recognise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from passes.canonical.rule import RulePass, RuleScope

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SumToAdd(RulePass[None]):
    name: ClassVar[str] = "sum-to-add"
    summary: ClassVar[str] = "Turn two-input Sum nodes into Add (same result; Add has integer kernels and fusions)."
    ops: ClassVar[frozenset[str]] = frozenset({"Sum"})

    def check(self, node: gs.Node, scope: RuleScope) -> None | str:
        if len(node.inputs) != 2:
            return f"Sum of {len(node.inputs)} inputs (Add takes two)"
        return None

    def rewrite(self, node: gs.Node, found: None, scope: RuleScope) -> None:
        node.op = "Add"
