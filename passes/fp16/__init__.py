"""fp16 family: float32 → float16 conversion with a range guard, kernel probe and mixed precision, and
its lossless inverse ``fp32`` for float16 exports.

The pass classes are resolved on first access, so importing one helper module of the family does not
import the family's other passes."""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Fp16": "passes.fp16.fp16",
    "Fp32": "passes.fp16.fp32",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
