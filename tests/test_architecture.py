"""The import structure of ``coordination/`` and ``raft_node/``, checked on the source (AST).

- **No import circles between modules.** Every import counts: top-level, inside functions, and
  under ``TYPE_CHECKING`` (a circle hidden from the interpreter is still two modules that cannot
  be understood, tested or moved apart). ``from pkg import name`` is an edge to ``pkg.name``
  when that is a module, else to ``pkg``; importing ``a.b.c`` is not counted as importing the
  package ``a`` (Python runs ``a/__init__.py`` first either way, so that edge says nothing).
- **The product does not reach into the engine's core.** ``coordination/`` talks to the engine
  through ``raft_node.client``, ``raft_node.sim``, the host, and the state machine contract
  ``raft_node.core.fsm``; any other ``raft_node.core`` module (or a core name re-exported by the
  ``raft_node`` package itself) is refused.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("coordination", "raft_node")
ALLOWED_CORE = {"raft_node.core.fsm"}

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the first import}


def _modules(root: Path, packages: Iterable[str]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is package) for every ``.py`` file of ``packages``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join(parts)] = (path, is_package)
    return modules


def _imported_names(path: Path, module: str, is_package: bool) -> Iterable[tuple[str, str, int]]:
    """(base, name, line) for every import in the file, wherever it is; ``name`` is "" for
    ``import base``. Relative imports are resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                yield base, alias.name, node.lineno


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    modules = _modules(root, packages)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {m: {} for m in modules}
    for module, (path, is_package) in modules.items():
        for base, name, line in _imported_names(path, module, is_package):
            full = f"{base}.{name}" if name else base
            target = resolve(full if full in modules else base)
            if target is not None and target != module:
                graph[module].setdefault(target, line)
    return graph


def circles(graph: Graph) -> list[list[str]]:
    """One concrete circle (``a -> b -> ... -> a``) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)
    return [_one_circle(graph, set(c)) for c in components]


def _one_circle(graph: Graph, component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside it."""
    first = min(component)
    paths = {first: [first]}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for nxt in graph[node]:
                if nxt == first:
                    return [*paths[node], first]
                if nxt in component and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle in component {sorted(component)}")


def _describe(graph: Graph, circle: list[str]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(circle)]
    return " -> ".join([*steps, circle[-1]])


def forbidden_core_imports(graph: Graph, root: Path) -> list[str]:
    """``coordination`` modules that import the engine's core beyond the FSM contract."""
    core_names = _package_reexports(root / "raft_node" / "__init__.py")
    bad = []
    for module, targets in graph.items():
        if not module.startswith("coordination"):
            continue
        for target, line in targets.items():
            if target.startswith("raft_node.core") and target not in ALLOWED_CORE:
                bad.append(f"{module} (line {line}) imports {target}")
        path = _modules(root, ("coordination",))[module][0]
        for base, name, line in _imported_names(path, module, path.name == "__init__.py"):
            if base == "raft_node" and name in core_names:
                bad.append(f"{module} (line {line}) imports raft_node.{name} (a core re-export)")
    return bad


def _package_reexports(init: Path) -> set[str]:
    """Names the ``raft_node`` package re-exports from its submodules."""
    names = set()
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raft_node."):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


# -- the checks on this repository ---------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT, PACKAGES)


def test_the_graph_covers_both_packages(graph: Graph) -> None:
    assert "raft_node.host.node_host" in graph and "coordination.primitives.machine" in graph
    assert "raft_node.host.node_host" in graph["raft_node.server"]  # edges are found


def test_no_import_circles(graph: Graph) -> None:
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(_describe(graph, c) for c in found)


def test_coordination_uses_no_core_module_but_the_fsm_contract(graph: Graph) -> None:
    bad = forbidden_core_imports(graph, ROOT)
    assert not bad, "coordination reaches into raft_node's core:\n" + "\n".join(bad)


def test_raft_provides_what_its_role_mixins_rely_on() -> None:
    """``LeaderRole`` is typed against ``RaftState`` instead of importing ``Raft``: every field
    and method that protocol names must exist on a real ``Raft``."""
    import random

    from raft_node.core.raft import Config, Raft
    from raft_node.core.role_state import RaftState
    from raft_node.storage.memory import MemoryStorage

    raft = Raft(Config("n1", ["n1", "n2", "n3"], random.Random(0)), MemoryStorage())
    members = set(RaftState.__annotations__) | {
        name for name in vars(RaftState) if callable(vars(RaftState)[name]) and name[:2] != "__"
    }
    assert {"log", "prs", "send", "_reply", "become_follower"} <= members
    missing = sorted(m for m in members if not hasattr(raft, m))
    assert not missing, f"Raft lacks {missing}, which RaftState promises to the role mixins"


# -- the checker itself can fail ----------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_circle_through_a_function_or_type_checking_import_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "def f():\n    from pkg import c\n",
            "pkg/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
            ),
            "pkg/d.py": "import pkg.a\n",
        },
    )
    graph = import_graph(tmp_path, ["pkg"])
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert (
        _describe(graph, circles(graph)[0])
        == "pkg.a (line 1) -> pkg.b (line 2) -> pkg.c (line 3) -> pkg.a"
    )


def test_a_package_importing_its_submodules_is_not_a_circle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import thing\n",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "import os\n",
        },
    )
    assert circles(import_graph(tmp_path, ["pkg"])) == []


def test_a_core_import_from_coordination_is_refused(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "raft_node/__init__.py": "from raft_node.core.ready import Role\n",
            "raft_node/core/__init__.py": "",
            "raft_node/core/fsm.py": "",
            "raft_node/core/ready.py": "",
            "coordination/__init__.py": "",
            "coordination/ok.py": "from raft_node.core.fsm import StateMachine\n",
            "coordination/bad.py": "def f():\n    from raft_node.core.ready import Role\n",
            "coordination/sly.py": "from raft_node import Role\n",
        },
    )
    bad = forbidden_core_imports(import_graph(tmp_path, PACKAGES), tmp_path)
    assert bad == [
        "coordination.bad (line 2) imports raft_node.core.ready",
        "coordination.sly (line 1) imports raft_node.Role (a core re-export)",
    ]


def test_test_modules_have_unique_basenames() -> None:
    """tests/ has no ``__init__.py`` (pytest's rootdir-relative "prepend" import mode): two test
    files with one basename would make the second an import error, on a fresh checkout only."""
    tests = Path(__file__).resolve().parent
    seen: dict[str, Path] = {}
    for path in sorted(tests.rglob("test_*.py")):
        other = seen.setdefault(path.name, path)
        assert other == path, f"{path} and {other} share a basename"
