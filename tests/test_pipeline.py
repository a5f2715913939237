"""The pipeline's sub-pipelines: a pass's prerequisites run first on the same graph, with their own
checks, and their reports nest in the pass's report (JSON and terminal)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from rich.console import Console

from conftest import op_counts, parse, run_model
from onnxopt.errors import PreconditionError
from onnxopt.inspect import inspect_model
from onnxopt.pass_base import Pass, PassContext, PassReport
from onnxopt.pipeline import Pipeline
from onnxopt.registry import Registry
from onnxopt.render import render_pass_reports
from passes.canonical import EliminateIdentity, FoldBatchNorm

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2] x) => (float[2] y) { i = Identity(x)  y = Relu(i) }
"""


@dataclass(kw_only=True)
class NegateRelu(Pass):
    """Turns Relu into Neg after Identity elimination; with ``act=False`` it changes nothing."""

    name: ClassVar[str] = "negate-relu"
    summary: ClassVar[str] = "a pass with a prerequisite, for tests"
    act: bool = True
    seen: list[str] | None = None

    def prerequisites(self, graph: gs.Graph) -> list[Pass]:
        return [EliminateIdentity()]

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        if self.seen is not None:
            self.seen.extend(n.op for n in graph.nodes)
        report = PassReport(self.name)
        for node in graph.nodes:
            if self.act and node.op == "Relu":
                node.op = "Neg"
                report.changes += 1
        return report


@dataclass(kw_only=True)
class NeedsRefused(Pass):
    name: ClassVar[str] = "needs-refused"
    summary: ClassVar[str] = "declares a prerequisite whose settings its precondition refuses"

    def prerequisites(self, graph: gs.Graph) -> list[Pass]:
        return [FoldBatchNorm(max_abs_weight=-1.0)]

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        raise AssertionError("not reached: the prerequisite refused")


def test_prerequisites_run_first_and_their_reports_nest() -> None:
    # setup
    model, seen = parse(MODEL), []
    x = {"x": np.array([-1.0, 2.0], np.float32)}
    # execute
    result = Pipeline([NegateRelu(seen=seen)]).run(model)
    # assert: the pass saw the graph without the Identity; one top-level report with the nested one
    assert seen == ["Relu"] and op_counts(result.model) == {"Neg": 1}
    np.testing.assert_array_equal(run_model(result.model, x)[0], [1.0, -2.0])
    [report] = result.reports
    [nested] = report.prerequisites
    assert (nested.pass_name, nested.changes, nested.nodes_removed) == ("eliminate-identity", 1, 1)
    assert (report.changes, report.nodes_added, report.nodes_removed) == (1, 1, 1)  # Relu -> Neg
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["prerequisites"][0]["pass_name"] == "eliminate-identity"
    assert as_json["prerequisites"][0]["modified"] is True and as_json["prerequisites"][0]["prerequisites"] == []


def test_prerequisite_edits_are_undone_when_the_pass_changes_nothing() -> None:
    # setup
    model = parse(MODEL)
    # execute
    result = Pipeline([NegateRelu(act=False)]).run(model)
    # assert: the Identity is back, and the nested report says its edit was undone
    assert op_counts(result.model) == {"Identity": 1, "Relu": 1}
    [nested] = result.reports[0].prerequisites
    assert nested.notes == ["undone: negate-relu, which this pass prepared for, changed nothing"]


def test_prerequisite_preconditions_apply() -> None:
    with pytest.raises(PreconditionError, match="max_abs_weight must be > 0"):
        Pipeline([NeedsRefused()]).run(parse(MODEL))


def test_renderer_shows_prerequisites_under_their_pass() -> None:
    # setup
    result = Pipeline([NegateRelu()]).run(parse(MODEL))
    console = Console(width=200, record=True)
    # execute
    console.print(render_pass_reports(result.reports))
    text = console.export_text()
    # assert: the nested row comes first, labelled with its parent
    assert text.index("negate-relu › eliminate-identity") < text.rindex("negate-relu ")


def test_inspect_counts_what_a_pass_does_with_its_prerequisites() -> None:
    # setup: negate-relu removes the Identity through its prerequisite, and turns Relu into Neg itself
    registry = Registry([NegateRelu])
    # execute
    [preview] = inspect_model(parse(MODEL), registry).previews
    # assert: eliminate-identity's change and removed node are counted with the pass's own
    assert (preview.status, preview.changes, preview.nodes_added, preview.nodes_removed) == ("would change", 2, 1, 2)
