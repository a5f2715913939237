"""Fold ``Conv(x, W[, b]) * s`` with a constant per-output-channel (or scalar) ``s`` into the Conv's
weight and bias, as onnxruntime does before fusing (Caffe2 exports write a SpatialBN's scale this
way: Conv, BatchNormalization, Mul, Add). The Conv gets new constants; a shared weight stays."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from onnxopt.graph import constant_value
from passes.canonical.conv_affine import ConvFollower, ConvFollowerRule, bypass, has_bias
from passes.canonical.rule import RuleScope

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FoldConvMul(ConvFollowerRule):
    name: ClassVar[str] = "fold-conv-mul"
    summary: ClassVar[str] = ("Fold a per-output-channel constant Mul after a Conv into the Conv's weight and "
                              "bias.")
    follower_op: ClassVar[str] = "Mul"

    def rewrite(self, node: gs.Node, found: ConvFollower, scope: RuleScope) -> None:
        weight, scale = found.weight, found.per_channel
        node.inputs[1] = gs.Constant(scope.names.fresh(f"{node.name}_weight_scaled"),
                                     (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype))
        if has_bias(node):
            bias = constant_value(node.inputs[2])
            node.inputs[2] = gs.Constant(scope.names.fresh(f"{node.name}_bias_scaled"),
                                         (bias * scale).astype(weight.dtype))
        bypass(node, found.follower)
