"""The plugin as a user gets it: an sdist and a wheel built from this checkout, and a fresh venv
with the wheel installed (no checkout on ``sys.path``), shared by the plugin tests.

``RAFTSYNC_PLUGIN_CONSTRAINTS`` picks the dependency versions installed with it: the pinned,
newest set by default (requirements.txt), or requirements-lowest.txt (``nox -s lowest``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import venv
from collections.abc import Callable
from pathlib import Path

import pytest
from plugin_helpers import ROOT, pip_for, run


def _once_per_run(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """A directory made once per test run, also when xdist workers both need it (the first one
    makes it under a lock, the other waits and reuses it)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = factory.getbasetemp()
    if run_id:  # every worker's basetemp shares this parent; the run id keeps runs apart
        base = base.parent / f"shared-{run_id}"
        base.mkdir(exist_ok=True)
    path = base / name
    with (base / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / ".made").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            make(path)
            (path / ".made").touch()
    return path


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build``: the sdist, then the wheel built from that sdist (so a file missing
    from the sdist breaks the wheel too)."""

    def build(out: Path) -> None:
        source = _snapshot(out / "source")
        run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)])

    out = _once_per_run(tmp_path_factory, "dist", build)
    wheel = next(out.glob("raftsync-*.whl"))
    sdist = next(out.glob("raftsync-*.tar.gz"))
    return {"wheel": wheel, "sdist": sdist}


def _snapshot(into: Path) -> Path:
    """A copy of the checkout's files (tracked, plus new ones not ignored): the build then never
    sees files that tests running alongside create and delete in the tree."""
    listed = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


@pytest.fixture(scope="session")
def plugin_venv(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``raftsync[all]`` from the wheel; returns its ``bin`` directory."""
    constraints = ROOT / os.environ.get("RAFTSYNC_PLUGIN_CONSTRAINTS", "requirements.txt")

    def install(home: Path) -> None:
        venv.create(home, with_pip=False)  # pip runs from outside (pip_for): no ensurepip
        spec = f"raftsync[all] @ {dists['wheel'].as_uri()}"
        run([*pip_for(home / "bin"), "install", "-q", "-c", str(constraints), spec], cwd=home)

    return _once_per_run(tmp_path_factory, "venv", install) / "bin"
