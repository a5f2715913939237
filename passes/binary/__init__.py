"""Binary family: 1-bit packed weights with per-channel scales, and the unpack pass.

The pass classes are resolved on first access, so importing one helper module of the family does not
import the family's other passes."""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "BinaryWeights": "passes.binary.binary",
    "UnpackBinary": "passes.binary.unpack",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
