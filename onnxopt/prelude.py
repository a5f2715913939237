"""What the pipeline does on its own before the passes it was given, so that defaults never stop a
user for something the tool can do itself:

- the opset: when a pass needs a newer one (``Pass.min_opset``), the model is converted once, up
  front, to the highest opset needed (``onnxopt.opset``); only a failed conversion is refused;
- float16 models: when a pass needs float32 (``Pass.needs_float32``), the lossless ``fp32`` pass
  runs first, and calibration data is cast to the float32 inputs it then has.

Each step is reported like a pass (``PipelineResult.prelude``), so the report says what was done.
When no pass changes the model, the steps are undone: the result is the original, not a converted
copy that is larger (float32) or newer (opset) for nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Iterator, Sequence

import numpy as np
import onnx

from onnxopt.data_source import Batch, DataSource, InputSpec
from onnxopt.opset import model_opset, upgrade_opset
from onnxopt.pass_base import Pass, PassReport

logger = logging.getLogger(__name__)

#: the report name of the opset upgrade step
OPSET_STEP = "opset-upgrade"


def upgrade_for(model: onnx.ModelProto, passes: Sequence[Pass]) -> tuple[onnx.ModelProto, PassReport | None]:
    """``model`` at the highest opset ``passes`` need, and the report of the upgrade (``None``: none needed)."""
    current = model_opset(model)
    needed = max((p.min_opset() for p in passes), default=1)
    if needed <= current:
        return model, None
    who = ", ".join(p.name for p in passes if p.min_opset() > current)
    converted = upgrade_opset(model, needed, who)
    before = Counter(n.op_type for n in model.graph.node)
    after = Counter(n.op_type for n in converted.graph.node)
    report = PassReport(OPSET_STEP, changes=1, nodes_added=sum((after - before).values()),
                        nodes_removed=sum((before - after).values()),
                        details={"from": current, "to": needed, "for": who})
    report.notes.append(f"opset upgraded from {current} to {needed} with the onnx version converter ({who} needs "
                        f"opset >= {needed})")
    return converted, report


def undone(prelude: list[PassReport], reports: Sequence[PassReport]) -> bool:
    """Whether the ``prelude`` steps are to be undone because no pass changed the model; if so, their
    reports say so and count no changes."""
    if not prelude or any(r.modified for r in reports):
        return False
    for step in prelude:
        step.changes = step.nodes_added = step.nodes_removed = 0
        step.notes.append("undone: no pass changed the model, so the original is kept")
    return True


def float32_first(model: onnx.ModelProto, passes: Sequence[Pass]) -> Pass | None:
    """The ``fp32`` pass when ``model`` holds float16 tensors and a pass needs float32, else ``None``."""
    needing = [p.name for p in passes if p.needs_float32]
    found = float16_tensors(model)
    if not needing or not found:
        return None
    from onnxopt.registry import default_registry

    logger.info("%s need(s) float32; the model has %d float16 tensor(s): running fp32 first",
                ", ".join(needing), found)
    return default_registry().create("fp32")


def float32_note(passes: Sequence[Pass]) -> str:
    needing = ", ".join(p.name for p in passes if p.needs_float32)
    return (f"the model holds float16 tensors and {needing} work(s) on float32: converted to float32 first "
            "(weights exact; float32 inputs and outputs)")


def float16_tensors(model: onnx.ModelProto) -> int:
    """How many initializers, Constant values and graph inputs/outputs of ``model`` are float16."""
    fp16 = onnx.TensorProto.FLOAT16
    graph = model.graph
    count = sum(t.data_type == fp16 for t in graph.initializer)
    count += sum(vi.type.tensor_type.elem_type == fp16 for vi in [*graph.input, *graph.output])
    count += sum(a.t.data_type == fp16 for n in graph.node if n.op_type == "Constant" for a in n.attribute
                 if a.name == "value")
    return count


class RetypedSource(DataSource):
    """``inner``'s batches cast to the dtypes of ``specs`` (float16 data for a model made float32)."""

    def __init__(self, inner: DataSource, specs: list[InputSpec]) -> None:
        super().__init__(specs)
        self.inner = inner
        self.description = inner.description
        self.synthetic = inner.synthetic

    @property
    def num_samples(self) -> int | None:
        return self.inner.num_samples

    @property
    def has_labels(self) -> bool:
        return self.inner.has_labels

    def _chunks(self) -> Iterator[Batch]:
        dtypes = {s.name: s.dtype for s in self.specs}
        for batch in self.inner._validated():
            yield Batch({k: np.asarray(v, dtypes.get(k, v.dtype)) for k, v in batch.inputs.items()}, batch.labels)
