"""Fold ``Conv(x, W[, b]) + c`` with a constant per-output-channel (or scalar) ``c`` into the Conv's
bias, as onnxruntime does before fusing (CNTK and Caffe2 exports write biases this way)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import constant_value
from passes.canonical.conv_affine import ConvFollower, ConvFollowerRule, bypass, has_bias
from passes.canonical.rule import RuleScope

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FoldConvAdd(ConvFollowerRule):
    name: ClassVar[str] = "fold-conv-add"
    summary: ClassVar[str] = "Fold a per-output-channel constant Add after a Conv into the Conv's bias."
    follower_op: ClassVar[str] = "Add"

    def rewrite(self, node: gs.Node, found: ConvFollower, scope: RuleScope) -> None:
        weight, value = found.weight, found.per_channel
        old = constant_value(node.inputs[2]) if has_bias(node) else np.zeros(len(value), weight.dtype)
        bias = gs.Constant(scope.names.fresh(f"{node.name}_bias_folded"), (old + value).astype(weight.dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = bias
        else:
            node.inputs.append(bias)
        bypass(node, found.follower)
