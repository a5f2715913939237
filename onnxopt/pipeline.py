"""Run an explicit list of passes on one working graph."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import PostconditionError, PreconditionError
from onnxopt.graph import export, import_graph
from onnxopt.model_io import skeleton
from onnxopt.pass_base import Pass, PassContext, PassReport, check_io_kept

logger = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    reports: list[PassReport] = field(default_factory=list)


@dataclass
class Pipeline:
    """Passes in order. Each pass: ``requires`` → ``run`` → cleanup/toposort → ``ensures`` → check."""

    passes: Sequence[Pass]

    def run(self, model: onnx.ModelProto, ctx: PassContext | None = None) -> PipelineResult:
        ctx = ctx or PassContext()
        for p in self.passes:
            if p.needs_calibration and ctx.calibration is None:
                raise PreconditionError(
                    f"pass '{p.name}' needs calibration data; give --calib (CLI) or calibration= (API)")
        graph = import_graph(model)
        model = _template(model)  # the weights stay referenced by the graph only, so conversions can free them
        input_names = [t.name for t in graph.inputs]
        output_names = [t.name for t in graph.outputs]
        reports = []
        exported = None
        for p in self.passes:
            exported = None  # the previous pass's export is not the result: let it go before this pass runs
            logger.info("running %s", p.describe())
            p.requires(graph, ctx)
            before = _histogram(graph)
            report = p.run(graph, ctx)
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            after = _histogram(graph)
            report.nodes_added = sum((after - before).values())
            report.nodes_removed = sum((before - after).values())
            check_io_kept(graph, input_names, output_names, p.name)
            p.ensures(graph, ctx, report)
            exported = _checked_export(graph, model, p.name)
            logger.info("%s: %d change(s), +%d/-%d nodes", p.name, report.changes,
                        report.nodes_added, report.nodes_removed)
            reports.append(report)
        return PipelineResult(exported if exported is not None else export(graph, model), reports)


def _template(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without its graph: what ``export`` copies to the result (IR version, metadata, functions)."""
    template = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name == "graph":
            continue
        target = getattr(template, descriptor.name)
        if hasattr(target, "extend"):  # a repeated field
            target.extend(value)
        elif descriptor.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(template, descriptor.name, value)
    return template


def _histogram(graph: gs.Graph) -> Counter[str]:
    return Counter(node.op for node in graph.nodes)


def _checked_export(graph: gs.Graph, template: onnx.ModelProto, pass_name: str) -> onnx.ModelProto:
    """``graph`` exported (the last pass's export is the pipeline's result) and checked."""
    exported = export(graph, template)
    try:  # checked without its large weights: no 2 GB limit, no serialised copy of the weights
        onnx.checker.check_model(skeleton(exported), full_check=False)
        return exported
    except (onnx.checker.ValidationError, ValueError, TypeError) as exc:
        text = str(exc).strip().splitlines()
        raise PostconditionError(
            f"pass '{pass_name}' produced an invalid model: {text[0] if text else type(exc).__name__}") from exc
