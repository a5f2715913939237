"""The one explicit registry of passes, and parsing of pass specs (``int8:method=entropy``).

The built-in passes are listed in ``passes.BUILTIN_PASSES``; ``default_registry`` imports that
list lazily (the only import from ``onnxopt`` into ``passes``). Registering a name twice raises.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from pathlib import Path
from typing import Any, Iterable

from onnxopt.errors import RegistryError, UnknownPassError
from onnxopt.pass_base import Pass


class Registry:
    """Pass name → pass class."""

    def __init__(self, passes: Iterable[type[Pass]] = ()) -> None:
        self._passes: dict[str, type[Pass]] = {}
        for cls in passes:
            self.register(cls)

    def register(self, cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, Pass) and dataclasses.is_dataclass(cls)):
            raise RegistryError(f"{cls!r} is not a dataclass subclass of onnxopt.Pass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{cls.__name__} has no pass name")
        if not getattr(cls, "summary", ""):
            raise RegistryError(f"pass '{name}' ({cls.__name__}) has no summary")
        if name in self._passes:
            raise RegistryError(
                f"pass name '{name}' is registered twice ({self._passes[name].__name__} and {cls.__name__})")
        self._passes[name] = cls
        return cls

    def names(self) -> list[str]:
        return list(self._passes)

    def classes(self) -> list[type[Pass]]:
        return list(self._passes.values())

    def get(self, name: str) -> type[Pass]:
        try:
            return self._passes[name]
        except KeyError:
            raise UnknownPassError(
                f"unknown pass '{name}'; known passes: {', '.join(self._passes)}") from None

    def create(self, spec: str | Pass) -> Pass:
        """A pass from a spec ``name[:key=value[:key=value...]]`` (lists are comma-separated)."""
        if isinstance(spec, Pass):
            return spec
        name, *parts = spec.strip().split(":")
        values: dict[str, str] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise UnknownPassError(f"pass spec '{spec}': expected key=value, got '{part}'")
            values[key.strip()] = value.strip()
        return self.get(name.strip()).from_strings(values)

    def from_recipe(self, path: str | Path) -> list[Pass]:
        """Passes from a TOML recipe: a list of ``[[pass]]`` tables with ``name`` and settings."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UnknownPassError(f"recipe {path}: cannot read ({exc})") from exc
        entries = data.get("pass")
        if not isinstance(entries, list) or not entries:
            raise UnknownPassError(f"recipe {path}: needs at least one [[pass]] table with a name")
        passes = []
        for i, entry in enumerate(entries):
            entry = dict(entry)
            name = entry.pop("name", None)
            if not isinstance(name, str):
                raise UnknownPassError(f"recipe {path}: [[pass]] #{i + 1} has no name")
            passes.append(self.get(name).from_strings(_stringify(entry)))
        return passes


def _stringify(values: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in values.items():
        if isinstance(value, list):
            out[key] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = str(value)
    return out


@functools.cache
def default_registry() -> Registry:
    """The registry of built-in passes (imported lazily from ``passes``)."""
    from passes import BUILTIN_PASSES

    return Registry(BUILTIN_PASSES)
