"""The core stays sans-I/O: no sockets, event loops, threads, clocks, global randomness or
Django. Checked on the source (AST), so a stray import fails CI even if unused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "raft_node"
# The core room, found by listing it, so a new core module is covered without editing this test;
# plus the two storage modules the core and the simulator read (the contract and its memory twin).
PURE = [
    *sorted(p.relative_to(ROOT) for p in (ROOT / "core").glob("*.py")),
    Path("storage/protocol.py"),
    Path("storage/memory.py"),
]
PURE_MODULES = {"raft_node." + str(p.with_suffix("")).replace("/", ".") for p in PURE}
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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_room_is_not_empty() -> None:
    assert len(PURE) >= 12, PURE


@pytest.mark.parametrize("path", PURE, ids=str)
def test_core_module_imports_no_io(path: Path) -> None:
    imported = _imports(ROOT / path)
    bad = {name for name in imported if name.split(".")[0] in FORBIDDEN}
    assert not bad, f"raft_node/{path} imports {sorted(bad)}"
    inner = {n for n in imported if n.startswith("raft_node.") or n == "raft_node"}
    outside = {n for n in inner if n not in PURE_MODULES}
    assert not outside, f"raft_node/{path} imports modules outside the pure core {sorted(outside)}"


def test_raft_node_never_imports_django() -> None:
    for path in ROOT.rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in {"django", "coordination"}}
        assert not bad, f"{path} imports {sorted(bad)}"
