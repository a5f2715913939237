"""Run an explicit list of passes on one working graph."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import onnx
import onnx_graphsurgeon as gs

from onnxopt.data_source import input_specs
from onnxopt.errors import PostconditionError, PreconditionError
from onnxopt.graph import copy_graph, export, import_graph, replace_contents
from onnxopt.model_io import skeleton
from onnxopt.pass_base import Pass, PassContext, PassReport, check_io_kept
from onnxopt.prelude import RetypedSource, float32_first, float32_note, undone, upgrade_for

logger = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    reports: list[PassReport] = field(default_factory=list)
    #: what the pipeline did on its own first (opset upgrade, fp32): ``onnxopt.prelude``
    prelude: list[PassReport] = field(default_factory=list)


@dataclass
class Pipeline:
    """Passes in order. Each pass: ``requires`` → its prerequisites (a sub-pipeline on the same graph)
    → ``run`` → cleanup/toposort → ``ensures`` → interface check; ``run`` also checks each top-level
    pass's export."""

    passes: Sequence[Pass]

    def run(self, model: onnx.ModelProto, ctx: PassContext | None = None) -> PipelineResult:
        ctx = ctx or PassContext()
        self._check_calibration(ctx)
        original = model
        model, upgraded = upgrade_for(model, self.passes)
        prelude = [upgraded] if upgraded is not None else []
        fp32 = float32_first(model, self.passes)
        graph = import_graph(model)
        model = _template(model)  # the weights stay referenced by the graph only, so conversions can free them
        reports = []
        exported = None
        for p in ([fp32] if fp32 is not None else []) + list(self.passes):
            exported = None  # the previous pass's export is not the result: let it go before this pass runs
            report = self._run_pass(p, graph, ctx)
            exported = _checked_export(graph, model, p.name)
            if p is fp32:
                report.notes.insert(0, float32_note(self.passes))
                prelude.append(report)
                if ctx.calibration is not None:  # calibration data stays float16: cast it for the float32 model
                    ctx = dataclasses.replace(ctx, calibration=RetypedSource(ctx.calibration, input_specs(exported)))
            else:
                reports.append(report)
        if undone(prelude, reports):  # the conversions served no change: the original is the result
            return PipelineResult(_checked_export(import_graph(original), original, "pipeline"), reports, prelude)
        return PipelineResult(exported if exported is not None else export(graph, model), reports, prelude)

    def run_graph(self, graph: gs.Graph, ctx: PassContext) -> list[PassReport]:
        """Run the passes on ``graph`` in place (a sub-pipeline: no export between them)."""
        self._check_calibration(ctx)
        return [self._run_pass(p, graph, ctx) for p in self.passes]

    def _check_calibration(self, ctx: PassContext) -> None:
        for p in self.passes:
            if p.needs_calibration and ctx.calibration is None:
                raise PreconditionError(
                    f"pass '{p.name}' needs calibration data; give --calib (CLI) or calibration= (API)")

    def _run_pass(self, p: Pass, graph: gs.Graph, ctx: PassContext) -> PassReport:
        input_names = [t.name for t in graph.inputs]
        output_names = [t.name for t in graph.outputs]
        logger.info("running %s", p.describe())
        p.requires(graph, ctx)
        needed = p.prerequisites(graph)
        # the prerequisites' edits are kept only if the pass then changes the graph; the copy shares
        # the weight arrays (no pass changes an array in place), so a large model is not held twice
        before_prerequisites = copy_graph(graph) if needed else None
        prepared = Pipeline(needed).run_graph(graph, ctx)
        before = _histogram(graph)
        report = p.run(graph, ctx)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        after = _histogram(graph)
        report.nodes_added = sum((after - before).values())
        report.nodes_removed = sum((before - after).values())
        check_io_kept(graph, input_names, output_names, p.name)
        p.ensures(graph, ctx, report)
        if before_prerequisites is not None and not report.modified:
            replace_contents(graph, before_prerequisites)
            for done in prepared:
                if done.modified:
                    done.notes.append(f"undone: {p.name}, which this pass prepared for, changed nothing")
        report.prerequisites = prepared
        logger.info("%s: %d change(s), +%d/-%d nodes", p.name, report.changes,
                    report.nodes_added, report.nodes_removed)
        return report


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
