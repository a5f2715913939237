"""The built-in passes, listed explicitly (no registration by import side effect).

``BUILTIN_PASSES`` is built on first access, so a program that imports one pass module
(``from passes.int8 import Int8``) does not import the others (~25 ms at start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxopt.pass_base import Pass


def _builtin_passes() -> tuple[type[Pass], ...]:
    from passes.binary import BinaryWeights, UnpackBinary
    from passes.canonical import (ConstantFolding, DeadNodeCleanup, EliminateIdentity, FoldBatchNorm, FoldConvAdd,
                                  FoldConvMul, MatMulAddToGemm, NameNodes, ShapeInference, SumToAdd)
    from passes.fp16 import Fp16, Fp32
    from passes.int8 import Int8
    from passes.pruning import PruneChannels, RemoveBlocks

    return (
        # canonicalisation
        ShapeInference,
        ConstantFolding,
        EliminateIdentity,
        FoldBatchNorm,
        DeadNodeCleanup,
        NameNodes,
        SumToAdd,
        FoldConvMul,
        FoldConvAdd,
        MatMulAddToGemm,
        # precision
        Fp16,
        Fp32,
        Int8,
        # structure
        PruneChannels,
        RemoveBlocks,
        # 1-bit weights
        BinaryWeights,
        UnpackBinary,
    )


def __getattr__(name: str) -> Any:
    if name == "BUILTIN_PASSES":
        value = _builtin_passes()
        globals()[name] = value
        return value
    raise AttributeError(f"module 'passes' has no attribute {name!r}")


__all__ = ["BUILTIN_PASSES"]
