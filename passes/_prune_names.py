"""Settings that name parts of the graph (``exclude_nodes``, ``exclude_ops``, ``layer_ratios``).

A name the model does not have is almost always a typo, and ignoring it would change the very node
the user meant to protect; so a pass refuses it in ``requires``, naming the unknown entries and
what the model does have. Used by prune-channels, remove-blocks and int8.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from onnxopt.errors import PreconditionError

#: names listed in full before the list is cut short
_SHOWN = 12


def require_known(pass_name: str, setting: str, given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise ``PreconditionError`` if an entry of ``given`` is not in ``known`` (``what`` says what they are)."""
    choices = list(dict.fromkeys(known))
    present = set(choices)
    unknown = [name for name in dict.fromkeys(given) if name not in present]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, choices, n=1)
        hints.append(f"'{name}' (did you mean '{close[0]}'?)" if close else f"'{name}'")
    raise PreconditionError(f"{pass_name}: {setting}: {', '.join(hints)} not found among the {what} "
                            f"({abbreviate(choices)})")


def abbreviate(names: list[str]) -> str:
    """The first names, then how many there are in all."""
    if not names:
        return "none"
    shown = ", ".join(names[:_SHOWN])
    return shown if len(names) <= _SHOWN else f"{shown}, ... ({len(names)} in all)"
