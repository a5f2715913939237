"""The layout rules of ../shared/STYLE.md, checked on the source: no import cycle (function-level
imports included), the core imports ``passes`` only through the one lazy import of the built-in
list, and a pass family reaches another family only through its package (its public pass classes),
never a private module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("onnxopt", "passes")
#: the one sanctioned import from the core into the passes (the built-in list, imported lazily)
CORE_TO_PASSES = {("onnxopt.registry", "passes")}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its body (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``); imports for type annotations only (under
    ``if TYPE_CHECKING:``) do not run, so they are not edges."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in known else base)
    return {m for m in out if m in known and m != module}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def test_no_import_cycles() -> None:
    # setup
    graph = _graph()
    # execute: depth-first search for a back edge
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # assert
    assert cycles == []


def test_core_imports_passes_only_for_the_builtin_list() -> None:
    graph = _graph()
    found = {(m, t) for m, targets in graph.items() if m.startswith("onnxopt") for t in targets
             if t.split(".")[0] == "passes"}
    assert found == CORE_TO_PASSES


def test_families_reach_each_other_only_through_their_packages() -> None:
    graph = _graph()
    private = sorted((m, t) for m, targets in graph.items() if m.count(".") >= 2 for t in targets
                     if t.startswith("passes.") and t.split(".")[1] != m.split(".")[1] and t.count(".") >= 2)
    assert private == []
