"""The built-in passes, listed explicitly (no registration by import side effect)."""

from __future__ import annotations

from onnxopt.pass_base import Pass
from passes.canonical import (
    ConstantFolding,
    DeadNodeCleanup,
    EliminateIdentity,
    FoldBatchNorm,
    ShapeInference,
)

BUILTIN_PASSES: tuple[type[Pass], ...] = (
    ShapeInference,
    ConstantFolding,
    EliminateIdentity,
    FoldBatchNorm,
    DeadNodeCleanup,
)

__all__ = ["BUILTIN_PASSES"]
