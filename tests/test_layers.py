"""Dependencies flow one way: cli -> lifecycle (and the client, bench, hub) -> backends -> core.

Read from the source with `ast`, counting imports inside functions too (a lazy import is
still a dependency: it only moves the cycle from import time to run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "amlft"

# The modules every other layer may use and that use none of the layers above them.
CORE = ("amlft.config", "amlft.records", "amlft.errors", "amlft.console", "amlft.context", "amlft.outputs",
        "amlft.data", "amlft.serving", "amlft.hashing", "amlft.resources", "amlft.version", "amlft.extras",
        "amlft.scoring_errors", "amlft.percentiles", "amlft.model_refs")
ABOVE_BACKENDS = ("amlft.lifecycle", "amlft.client", "amlft.run_selection", "amlft.stale", "amlft.cli")
# Edges being removed on another branch; each must name why. The lead drops them at merge.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every amlft module `name` imports, at module level or inside a function."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            # `from pkg import submodule` depends on the submodule; the package only if a name comes from it
            targets = subs + ([mod] if len(subs) < len(node.names) else [])
        else:
            continue
        for t in targets:
            # the deepest known module the name points into (`from amlft.x import y` -> amlft.x or amlft.x.y)
            while t and t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in known and t != name and t.startswith("amlft"):
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _edges(graph: dict[str, set[str]], src: tuple[str, ...], dst: tuple[str, ...]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in graph.items() if _in(a, src) for b in deps
                  if _in(b, dst) and (a, b.split(".")[0] + "." + b.split(".")[1]) not in ALLOWED
                  and (a, b) not in ALLOWED)


def test_the_graph_sees_function_level_imports(graph: dict[str, set[str]]) -> None:
    # amlft.backends imports each backend inside get_backend(): the test must count that
    assert "amlft.backends.local.backend" in graph["amlft.backends"]


def test_no_import_cycles_inside_amlft(graph: dict[str, set[str]]) -> None:
    cycles = _cycles(graph)
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_backends_and_core_never_import_the_lifecycle_or_the_cli(graph: dict[str, set[str]]) -> None:
    assert _edges(graph, ("amlft.backends", *CORE), ABOVE_BACKENDS) == []


def test_core_never_imports_backends(graph: dict[str, set[str]]) -> None:
    assert _edges(graph, CORE, ("amlft.backends", "amlft.bench", "amlft.hub")) == []


def test_only_testing_and_cli_import_amlft_testing(graph: dict[str, set[str]]) -> None:
    outside = tuple(sorted({m.split(".")[0] + "." + m.split(".")[1] for m in graph if m.count(".") >= 1}
                           - {"amlft.testing", "amlft.cli"}))
    assert _edges(graph, outside, ("amlft.testing",)) == []


def test_the_allow_list_is_still_needed(graph: dict[str, set[str]]) -> None:
    """An allowed edge that no longer exists must leave the list, so it cannot hide a new one."""
    for (a, b), why in ALLOWED.items():
        assert any(_in(dep, (b,)) for dep in graph.get(a, ())), f"drop the allow-list entry {a} -> {b} ({why})"
