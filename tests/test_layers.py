"""The package's imports go one way: no cycles, nothing imports a room above it or beside it.

Every import is read, including the ones inside functions (a function-level import is still a dependency; it
only hides a cycle from Python until the function runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "so8t_core"

# Rooms from the bottom up. A module may import its own room and any room of a lower rank; never a higher rank,
# never another room of the same rank (siblings stay independent).
RANKS = {
    "so8t_core": 0,
    "so8t_core.config": 0,
    "so8t_core.artifacts": 1,
    "so8t_core.timing": 2,
    "so8t_core.text": 2,
    "so8t_core.think": 2,
    "so8t_core.stats": 2,
    "so8t_core.verdicts": 2,
    "so8t_core.show": 2,
    "so8t_core.report": 2,
    "so8t_core.progress": 2,
    "so8t_core.batching": 2,
    "so8t_core.gate": 3,
    "so8t_core.data": 3,
    "so8t_core.lm": 4,
    "so8t_core.export": 5,
    "so8t_core.vision": 5,
    "so8t_core.safety": 5,
    "so8t_core.rl": 5,
    "so8t_core.serving": 6,
    "so8t_core.studies": 6,
    "so8t_core.serve": 7,
    "so8t_core.pipeline": 7,
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(module: str) -> str:
    """The room of a module: its subpackage (``so8t_core.lm``) or top-level module (``so8t_core.think``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The package modules that ``path`` imports anywhere in its body (relative imports resolved)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in modules:  # `from so8t_core.lm import loading` -> so8t_core.lm.loading
                n = n.rpartition(".")[0]
            if n.startswith("so8t_core") and n != me:
                found.add(n)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    files = sorted(package.rglob("*.py"))
    modules = {module_name(f, package) for f in files}
    return {module_name(f, package): imports_of(f, modules, package) for f in files}


def layer_violations(graph: dict[str, set[str]], ranks: dict[str, int] = RANKS) -> list[str]:
    """One message per import that goes up or sideways, or touches a module of no known room."""
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            a, b = room(mod), room(dep)
            if a not in ranks or b not in ranks:
                out.append(f"{mod} -> {dep}: room {a if a not in ranks else b} has no rank in tests/test_layers.py")
            elif a != b and (ranks[b] > ranks[a] or (ranks[b] == ranks[a] and b != "so8t_core")):
                out.append(f"{mod} -> {dep}: {a} (rank {ranks[a]}) may not import {b} (rank {ranks[b]})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (one path per strongly connected component with more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_imports_go_down_the_layers_only() -> None:
    assert layer_violations(import_graph()) == []


def test_the_real_tree_is_read() -> None:
    graph = import_graph()
    assert "so8t_core.serving.answer" in graph["so8t_core.serving.server"]
    assert "so8t_core.safety.heads" in graph["so8t_core.serving.models"]  # a function-level import


def test_every_room_of_the_package_has_a_rank() -> None:
    rooms = {room(m) for m in import_graph()}
    assert rooms <= set(RANKS), sorted(rooms - set(RANKS))


def test_function_level_imports_are_read(tmp_path: Path) -> None:
    pkg = tmp_path / "so8t_core"
    (pkg / "gate").mkdir(parents=True)
    (pkg / "lm").mkdir()
    for f in ("__init__.py", "gate/__init__.py", "lm/__init__.py", "lm/corpus.py"):
        (pkg / f).write_text("")
    (pkg / "gate" / "soul.py").write_text("def f():\n    from so8t_core.lm import corpus\n    return corpus\n")
    graph = import_graph(pkg)
    assert graph["so8t_core.gate.soul"] == {"so8t_core.lm", "so8t_core.lm.corpus"}
    assert layer_violations(graph) == [
        f"so8t_core.gate.soul -> {m}: so8t_core.gate (rank 3) may not import so8t_core.lm (rank 4)"
        for m in ("so8t_core.lm", "so8t_core.lm.corpus")
    ]


@pytest.mark.parametrize(
    ("graph", "bad"),
    [
        (
            {"so8t_core.safety.cli": {"so8t_core.serving.models"}},
            "so8t_core.safety (rank 5) may not import so8t_core.serving",
        ),
        ({"so8t_core.vision.model": {"so8t_core.safety.heads"}}, "may not import so8t_core.safety (rank 5)"),
        ({"so8t_core.think": {"so8t_core.safety.heads"}}, "so8t_core.think (rank 2)"),
        ({"so8t_core.newroom.x": {"so8t_core.config"}}, "room so8t_core.newroom has no rank"),
    ],
)
def test_upward_sideways_and_unknown_imports_are_reported(graph: dict[str, set[str]], bad: str) -> None:
    assert any(bad in v for v in layer_violations(graph)), layer_violations(graph)


def test_downward_and_same_room_imports_pass() -> None:
    graph = {
        "so8t_core.serving.server": {"so8t_core.serving.answer", "so8t_core.safety.heads", "so8t_core.config"},
        "so8t_core.gate.soul": {"so8t_core.gate.alpha", "so8t_core.config"},
    }
    assert layer_violations(graph) == []


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
