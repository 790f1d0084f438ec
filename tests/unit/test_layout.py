"""The shape of the package: no import cycle among quiesce's modules, no module too long to read at once."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import quiesce

#: The package's source tree: every module in it is checked, none is skipped.
ROOT = Path(quiesce.__file__).resolve().parent
#: The C extension: not a Python module of the tree.
NATIVE = "quiesce._native"
#: The longest a module may be, in lines: small enough to read in one sitting.
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The quiesce modules ``path`` imports, anywhere in it (functions and TYPE_CHECKING too).

    ``from quiesce.a import b`` is an edge to ``quiesce.a.b`` when that is a
    module, else to ``quiesce.a``. The C extension is ``quiesce._native``.
    """
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in modules else node.module for n in names]
        else:
            continue
        for name in names:
            if name.startswith("quiesce"):
                assert name in modules or name == NATIVE, f"{path} imports {name}: not in the package"
                edges.add(name)
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path, or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_check_finds_a_cycle():
    """The cycle finder itself: a two-module loop is found, a chain is not."""
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_quiesce_modules():
    """The import graph of every quiesce module (lazy imports included) has no cycle."""
    modules = _modules()
    graph = {name: _imports(path, modules) - {name, NATIVE} for name, path in modules.items()}
    assert len(graph) > 60  # every module was found, not a subset
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_native_extension_has_one_importer():
    """Only the bindings layer's core imports ``quiesce._native``."""
    modules = _modules()
    importers = sorted(name for name, path in modules.items() if NATIVE in _imports(path, modules))
    assert importers == ["quiesce.engine.native.core"]


def test_every_module_imports_on_its_own():
    """Each module imports first in a fresh interpreter: no import order hides a cycle."""

    def attempt(name: str) -> tuple[str, int, str]:
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120
        )
        return name, done.returncode, done.stderr[-2000:]

    names = [n for n in _modules() if not n.endswith("__main__")]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failed = [r for r in pool.map(attempt, names) if r[1] != 0]
    assert failed == []


def test_no_module_is_longer_than_the_limit():
    """Every module, subpackages included, fits in MAX_LINES lines."""
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert len(lengths) > 60
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert too_long == {}


def _layout_rows() -> list[tuple[str, str]]:
    """README's Layout table as (where, what) cells."""
    readme = (ROOT.parents[1] / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows.append((cells[0], cells[1]))
    return rows


def test_readme_layout_names_every_module_and_c_file():
    """Every module (and every C source) is named in README's Layout table, in its package's row."""
    rows = _layout_rows()
    missing = []
    for name, path in _modules().items():
        rel = path.relative_to(ROOT)
        if rel.name == "__init__.py" and len(rel.parts) > 2:
            continue  # a subpackage inside a package: its row names the package
        top = rel.parts[0]
        if len(rel.parts) == 1:
            # A top-level module: named in the first cell of some row.
            if not any(f"`{rel.name}`" in where or f"quiesce/{rel.name}`" in where for where, _ in rows):
                missing.append(name)
            continue
        row = [what for where, what in rows if where == f"`src/quiesce/{top}/`"]
        if not row or (
            rel.name != "__init__.py" and f"`{rel.name}`" not in row[0] and f"{rel.name}`" not in row[0]
        ):
            missing.append(name)
    csrc = [what for where, what in rows if where == "`csrc/`"]
    for source in sorted((ROOT.parents[1] / "csrc").glob("*.c")):
        if not csrc or f"`{source.name}`" not in csrc[0]:
            missing.append(f"csrc/{source.name}")
    assert missing == []


def test_every_package_directory_is_a_package():
    """Each directory of modules has an ``__init__.py``: the wheel's package finder skips one without."""
    directories = {path.parent for path in ROOT.rglob("*.py")}
    assert sorted(str(d.relative_to(ROOT)) for d in directories if not (d / "__init__.py").exists()) == []
