"""The package's shape: no import cycles inside segforge/, imports made anywhere in a module (a cycle
broken by an import inside a function is still a cycle)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import segforge

PACKAGE = Path(segforge.__file__).parent


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The segforge modules ``name`` imports, at the top or inside functions; not under ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(node)
        for guard in ast.walk(tree)
        if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
        for statement in guard.body
        for node in ast.walk(statement)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([node.module] if node.module else []))
            for alias in node.names:  # `from package import module` imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {module for module in found if module in modules and module != name}


def import_cycles() -> list[list[str]]:
    """The strongly connected groups of more than one module in segforge's import graph (Tarjan)."""
    modules = _module_names()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles_inside_segforge() -> None:
    assert import_cycles() == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch) -> None:
    package = tmp_path / "segforge"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "__init__.py").write_text("from segforge.inner import a\n")
    (package / "inner" / "a.py").write_text("def f():\n    from segforge.inner.b import g\n")
    (package / "inner" / "b.py").write_text("from . import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import segforge.inner.a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert import_cycles() == [["segforge.inner.a", "segforge.inner.b"]]


def test_each_entry_point_imports_first_in_a_fresh_interpreter() -> None:
    """The order of first imports can hide a cycle through a package's ``__init__`` (segforge.data registers the
    instance layouts; segforge.instances.predict builds on segforge.inference): each of these must import first."""
    import subprocess

    entry_points = ["segforge.inference", "segforge.instances.predict", "segforge.data", "segforge.training"]
    processes = {
        name: subprocess.Popen([sys.executable, "-c", f"import {name}"], stderr=subprocess.PIPE, text=True)
        for name in entry_points
    }
    failed = {name: p.communicate(timeout=120)[1][-400:] for name, p in processes.items()}
    assert {name: error for name, error in failed.items() if error} == {}
