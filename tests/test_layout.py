"""The layout's rules, checked statically (``ast``; nothing is imported): reimpl never imports parity, no import
cycle inside reimpl/ or parity/ (function-level imports count: they are cycles deferred to call time), no function
in reimpl/ or parity/ over 100 lines, and only ``reimpl/paths.py`` knows where the repository is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from reimpl.paths import ROOT

PACKAGES = ("reimpl", "parity")
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, Path]:
    """``{dotted name: file}`` for every module of the packages (a package is named by its ``__init__``)."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (``from a import b`` -> ``a.b`` where that is a
    module, else ``a``)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: resolve against this module's package
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:   # `import a.b.c` of a non-module attribute: nearest module above
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_import_graph_sees_known_edges():
    g = _graph()
    assert "reimpl.paths" in g["reimpl.baselines.data"]
    assert "parity.case" in g["parity.run"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_reimpl_never_imports_parity():
    bad = {m: sorted(t for t in deps if t.split(".")[0] == "parity")
           for m, deps in _graph().items() if m.split(".")[0] == "reimpl"}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"reimpl modules importing the harness: {bad}"


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (module groups that import each other): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name (n lines)`` for every function or method longer than ``limit`` lines."""
    out = []
    for f in _modules().values():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_over_100_lines():
    long = long_functions()
    assert not long, "split these functions: " + ", ".join(long)


def test_only_paths_module_locates_the_repository():
    pattern = re.compile(r"^(ROOT|SHARED)\s*=|Path\(__file__\)\.resolve\(\)\.parents\[", re.M)
    found = [str(f.relative_to(ROOT)) for pkg in (*PACKAGES, "benchmarks", "tests")
             for f in sorted((ROOT / pkg).rglob("*.py")) if pattern.search(f.read_text())]
    assert found == ["reimpl/paths.py"], f"derive paths from reimpl.paths instead: {found}"
