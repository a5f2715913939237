"""The built-in passes, listed explicitly (no registration by import side effect)."""

from __future__ import annotations

from onnxopt.pass_base import Pass
from passes.binary import BinaryWeights
from passes.canonical import DeadNodeCleanup, EliminateIdentity, ShapeInference
from passes.fold_batchnorm import FoldBatchNorm
from passes.fold_constants import ConstantFolding
from passes.fp16 import Fp16
from passes.int8 import Int8
from passes.prune_channels import PruneChannels
from passes.remove_blocks import RemoveBlocks
from passes.unpack import UnpackBinary

BUILTIN_PASSES: tuple[type[Pass], ...] = (
    # canonicalisation
    ShapeInference,
    ConstantFolding,
    EliminateIdentity,
    FoldBatchNorm,
    DeadNodeCleanup,
    # precision
    Fp16,
    Int8,
    # structure
    PruneChannels,
    RemoveBlocks,
    # 1-bit weights
    BinaryWeights,
    UnpackBinary,
)

__all__ = ["BUILTIN_PASSES"]
