"""Canonicalisation family: shape inference, constant folding, identity elimination, BatchNorm folding, cleanup,
node naming, and the rewrites that let layers quantize whole (Sum->Add, Conv*Mul and Conv+Add folding,
MatMul+Add->Gemm), written as rules (``passes.canonical.rule``).

The pass classes are resolved on first access, so importing one helper module of the family does not
import the family's other passes."""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "ShapeInference": "passes.canonical.canonical",
    "EliminateIdentity": "passes.canonical.canonical",
    "DeadNodeCleanup": "passes.canonical.canonical",
    "ConstantFolding": "passes.canonical.fold_constants",
    "FoldBatchNorm": "passes.canonical.fold_batchnorm",
    "NameNodes": "passes.canonical.name_nodes",
    "SumToAdd": "passes.canonical.sum_to_add",
    "FoldConvMul": "passes.canonical.fold_conv_mul",
    "FoldConvAdd": "passes.canonical.fold_conv_add",
    "MatMulAddToGemm": "passes.canonical.matmul_add_to_gemm",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
