"""Opset upgrades with onnx's version converter, for passes that need a newer opset than the model's.

Exported models commonly import old opsets (9–12); QuantizeLinear's per-channel ``axis`` needs 13,
BitShift 11. The pipeline upgrades the model once, up front, to the highest opset its passes need
(``Pass.min_opset``) and says so in its report. Only a conversion that fails is refused, and the
refusal names the op that blocked it.
"""

from __future__ import annotations

import logging
import re

import onnx

from onnxopt.errors import PreconditionError

logger = logging.getLogger(__name__)

#: the default domain's names
DEFAULT_DOMAINS = ("", "ai.onnx")


class OpsetUpgradeError(PreconditionError):
    """The onnx version converter cannot take the model to the opset a pass needs."""


def model_opset(model: onnx.ModelProto) -> int:
    """The version of the default (ai.onnx) opset ``model`` imports (1 when it imports none)."""
    return next((int(o.version) for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)


def upgrade_opset(model: onnx.ModelProto, version: int, why: str) -> onnx.ModelProto:
    """``model`` converted to opset ``version`` (a new ModelProto; ``model`` is not changed).

    ``why`` says who needs the opset, for the refusal. Raises ``OpsetUpgradeError`` naming the op
    that blocked the conversion when the converter fails."""
    current = model_opset(model)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    work.ir_version = max(work.ir_version, 4)  # from IR 4 on, initializers need not be graph inputs
    try:
        converted = onnx.version_converter.convert_version(work, version)
    except (onnx.version_converter.ConvertError, RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        blocker = _blocking_op(model, str(exc), version)
        raise OpsetUpgradeError(
            f"{why} needs opset >= {version}, the model has opset {current}, and the onnx version converter "
            f"cannot convert it: {blocker}; convert that op by hand (or re-export the model at opset {version})"
        ) from exc
    logger.info("opset upgraded from %d to %d for %s", current, version, why)
    return converted


def _blocking_op(model: onnx.ModelProto, message: str, version: int) -> str:
    """The op named in the converter's message, else the first op type that fails on its own."""
    ops = sorted({(n.domain, n.op_type) for n in model.graph.node}, key=lambda o: -len(o[1]))
    for domain, op in ops:  # longest first: "Conv" must not match inside "ConvTranspose"
        if re.search(rf"(?<![A-Za-z]){re.escape(op)}(?![a-z])", message):
            return f"op {_op_text(domain, op)} has no conversion to opset {version}"
    for domain, op in ops:
        if not _converts_alone(model, domain, op, version):
            return f"op {_op_text(domain, op)} has no conversion to opset {version}"
    first = message.strip().splitlines()[0] if message.strip() else "no reason given"
    return f"the converter failed ({first})"


def _op_text(domain: str, op: str) -> str:
    return op if domain in DEFAULT_DOMAINS else f"{domain}::{op}"


def _converts_alone(model: onnx.ModelProto, domain: str, op: str, version: int) -> bool:
    """Whether a model of only the nodes of type ``op`` (untyped inputs) converts."""
    nodes = [n for n in model.graph.node if n.op_type == op and n.domain == domain]
    inputs = sorted({i for n in nodes for i in n.input if i})
    outputs = sorted({o for n in nodes for o in n.output if o} - set(inputs))
    graph = onnx.helper.make_graph(nodes, "probe", [onnx.helper.make_tensor_value_info(i, onnx.TensorProto.FLOAT, None)
                                                    for i in inputs],
                                   [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs])
    probe = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    try:
        onnx.version_converter.convert_version(probe, version)
    except (onnx.version_converter.ConvertError, RuntimeError, ValueError, onnx.checker.ValidationError):
        return False
    return True
