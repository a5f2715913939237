"""The check shared by the rules that fold a per-channel constant after a Conv into its weight or
bias (``fold-conv-mul``, ``fold-conv-add``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import constant_value
from onnxopt.pass_base import Tolerance
from passes.canonical.rule import RulePass, RuleScope


@dataclass(frozen=True)
class ConvFollower:
    """A Conv's only consumer ``follower`` applies ``per_channel`` (one value per output channel)."""

    follower: gs.Node
    weight: np.ndarray
    per_channel: np.ndarray


@dataclass(kw_only=True)
class ConvFollowerRule(RulePass[ConvFollower]):
    """A rule on each Conv whose only consumer is a ``follower_op`` with a per-channel constant."""

    ops: ClassVar[frozenset[str]] = frozenset({"Conv"})
    follower_op: ClassVar[str]
    # the folded values are rounded once more in the weight's dtype (as when BatchNormalization is folded)
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=1e-4, atol=1e-5)

    def check(self, node: gs.Node, scope: RuleScope) -> ConvFollower | str:
        return conv_then_constant(node, self.follower_op, scope)


def conv_then_constant(node: gs.Node, op: str, scope: RuleScope) -> ConvFollower | str:
    """The Conv ``node`` with constant weight (and bias) whose output only feeds an ``op`` whose other
    operand is a constant per output channel (shape [1, M, 1, 1], [M, 1, 1] or a scalar, in the
    weight's dtype); else why not."""
    out = node.outputs[0]
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return "weight is computed at run time (not a constant)"
    if len(out.outputs) != 1 or scope.is_graph_output(out):
        return f"output '{out.name}' has {len(out.outputs) + scope.is_graph_output(out)} consumers, not one {op}"
    follower = out.outputs[0]
    if follower.op != op or len(follower.inputs) != 2:
        return f"output feeds {follower.op} with {len(follower.inputs)} input(s), not a two-input {op}"
    operand = follower.inputs[1] if follower.inputs[0] is out else follower.inputs[0]
    value = constant_value(operand)
    if value is None:
        return f"the other operand '{operand.name}' of {op} is computed at run time"
    if value.dtype != weight.dtype or value.ndim > weight.ndim:
        return f"the {op} operand '{operand.name}' ({value.dtype}, rank {value.ndim}) does not match the weight"
    channels = weight.shape[0]
    if value.size == 1:
        per_channel = np.full(channels, value.reshape(()), weight.dtype)
    elif (1,) * (weight.ndim - value.ndim) + value.shape == (1, channels) + (1,) * (weight.ndim - 2):
        per_channel = value.reshape(-1)
    else:
        return f"the {op} operand '{operand.name}' of shape {list(value.shape)} is not one value per output channel"
    if has_bias(node) and constant_value(node.inputs[2]) is None:
        return "bias is computed at run time (not a constant)"
    return ConvFollower(follower, weight, per_channel)


def has_bias(node: gs.Node) -> bool:
    return len(node.inputs) > 2 and bool(node.inputs[2].name)


def bypass(node: gs.Node, follower: gs.Node) -> None:
    """``node`` now writes ``follower``'s output; ``follower`` is left unconnected."""
    node.outputs[0] = follower.outputs[0]
    follower.outputs.clear()
