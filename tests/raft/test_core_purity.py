"""The core stays sans-I/O: no sockets, event loops, threads, clocks, global randomness or
Django. Checked on the source (AST), so a stray import fails CI even if unused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = [
    "messages",
    "log",
    "progress",
    "quorum",
    "read_only",
    "ready",
    "raft",
    "leader",
    "rawnode",
    "storage",
    "fsm",
]
FORBIDDEN = {
    "asyncio",
    "socket",
    "threading",
    "time",
    "random",
    "django",
    "coordination",
    "selectors",
    "multiprocessing",
    "concurrent",
    "os",
    "subprocess",
}
ROOT = Path(__file__).resolve().parents[2] / "raft_node"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io(module: str) -> None:
    imported = _imports(ROOT / f"{module}.py")
    bad = {name for name in imported if name.split(".")[0] in FORBIDDEN}
    assert not bad, f"raft_node/{module}.py imports {sorted(bad)}"
    inner = {n for n in imported if n.startswith("raft_node.")}
    outside_core = {n for n in inner if n.split(".")[1] not in CORE}
    assert not outside_core, f"raft_node/{module}.py imports non-core {sorted(outside_core)}"


def test_raft_node_never_imports_django() -> None:
    for path in ROOT.rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in {"django", "coordination"}}
        assert not bad, f"{path} imports {sorted(bad)}"
