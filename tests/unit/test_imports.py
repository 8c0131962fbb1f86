"""The import graph stays one-way: no cycle among the modules of app/, ingest/ and evals/ (imports inside
functions and under TYPE_CHECKING count too), nothing below the web layer imports `app.api` (errors
declare their kind and code where they are raised: ingest/errors.py), and evals/ never imports app/ (app
may import evals: the eval commands and the online judge score with it)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "ingest", "evals")
# Allowed to import the web layer: the web layer itself, and what builds and serves the app.
WEB_LAYER = ("app.api", "app.factory", "app.main")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None:
                yield target


GRAPH = {name: set(_imports(path)) - {name} for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    assert _cycles() == []


def test_nothing_below_the_web_layer_imports_it() -> None:
    offenders = {
        name: sorted(d for d in deps if d.startswith("app.api"))
        for name, deps in GRAPH.items()
        if not name.startswith(WEB_LAYER) and any(d.startswith("app.api") for d in deps)
    }
    assert offenders == {}


def _imported_modules(source: str) -> Iterator[str]:
    """Every module an `import` or `from ... import` statement names, anywhere in the source."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _imports_app(source: str) -> list[str]:
    return sorted({name for name in _imported_modules(source) if name == "app" or name.startswith("app.")})


def test_the_check_sees_every_kind_of_import() -> None:
    source = """
from typing import TYPE_CHECKING
import application
if TYPE_CHECKING:
    from app.container import Container
def run():
    import app.settings
    from app import cli
"""
    assert _imports_app(source) == ["app", "app.container", "app.settings"]


def test_evals_never_imports_app() -> None:
    offenders = {
        str(path.relative_to(ROOT)): _imports_app(path.read_text())
        for path in sorted((ROOT / "evals").rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}
