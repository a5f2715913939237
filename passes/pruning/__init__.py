"""Pruning family: channel graph and rules, importance, thresholds, surgery, recovery, block removal.

The pass classes are resolved on first access, so importing one helper module of the family does not
import the family's other passes."""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "PruneChannels": "passes.pruning.prune_channels",
    "RemoveBlocks": "passes.pruning.remove_blocks",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
