"""The shape of the house: no import cycle between any two modules, and importing the CLI loads no heavy library.

The layer contracts themselves (lower layers never import higher ones) are import-linter's, in
``pyproject.toml``, run by ``.ci/run``; this checks what they do not: cycles between single modules.
"""

from __future__ import annotations

import subprocess
import sys

import grimp

PACKAGES = ("console", "engine", "ingest", "schemas")
HEAVY = ("torch", "timm", "lancedb", "sklearn", "matplotlib", "faiss")


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's algorithm over the module import graph; components of more than one module are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            found.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return [c for c in found if len(c) > 1]


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph(*PACKAGES)
    assert strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    package = tmp_path / "loop_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from loop_pkg import b\n")
    (package / "b.py").write_text("from loop_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert strongly_connected(grimp.build_graph("loop_pkg")) == [{"loop_pkg.a", "loop_pkg.b"}]


def test_the_cli_parser_imports_no_heavy_library():
    code = ("import sys; from console.cli.main import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
