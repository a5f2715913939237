"""Validation of pass settings that name parts of the graph (node names, op types, layers).

A name the model does not have is almost always a typo, and ignoring it would change the very node
the user meant to protect; so passes refuse it in ``requires``, naming the unknown entries, close
matches and what the model does have.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from onnxopt.errors import PreconditionError

#: names listed in full before the list is cut short
_SHOWN = 12


def unknown_entries(setting: str, given: Iterable[str], known: Iterable[str], what: str) -> str | None:
    """A message naming the entries of ``given`` not in ``known`` (``what`` says what they are), or ``None``."""
    choices = list(dict.fromkeys(known))
    present = set(choices)
    unknown = [name for name in dict.fromkeys(given) if name not in present]
    if not unknown:
        return None
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, choices, n=1)
        hints.append(f"'{name}' (did you mean '{close[0]}'?)" if close else f"'{name}'")
    return f"{setting}: {', '.join(hints)} not found among the {what} ({abbreviate(choices)})"


def require_known(pass_name: str, setting: str, given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise ``PreconditionError`` if an entry of ``given`` is not in ``known``."""
    problem = unknown_entries(setting, given, known, what)
    if problem is not None:
        raise PreconditionError(f"{pass_name}: {problem}")


def abbreviate(names: list[str]) -> str:
    """The first names, then how many there are in all."""
    if not names:
        return "none"
    shown = ", ".join(names[:_SHOWN])
    return shown if len(names) <= _SHOWN else f"{shown}, ... ({len(names)} in all)"
