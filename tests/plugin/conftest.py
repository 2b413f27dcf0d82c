"""The plugin as a user gets it: an sdist and a wheel built from this checkout, and a fresh venv
with the wheel installed (no checkout on ``sys.path``), shared by the plugin tests.

``RAFTSYNC_PLUGIN_CONSTRAINTS`` picks the dependency versions installed with it: the pinned,
newest set by default (requirements.txt), or requirements-lowest.txt (``nox -s lowest``).
"""

from __future__ import annotations

import os
import shutil
import sys
import venv
from pathlib import Path

import pytest
from plugin_helpers import ROOT, pip_for, run


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build``: the sdist, then the wheel built from that sdist (so a file missing
    from the sdist breaks the wheel too)."""
    out = tmp_path_factory.mktemp("dist")
    source = _snapshot(tmp_path_factory.mktemp("source"))
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)])
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
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=False)  # pip runs from outside (pip_for): no ensurepip per run
    bin_dir = home / "bin"
    constraints = ROOT / os.environ.get("RAFTSYNC_PLUGIN_CONSTRAINTS", "requirements.txt")
    run(
        [
            *pip_for(bin_dir),
            "install",
            "-q",
            "-c",
            str(constraints),
            f"raftsync[all] @ {dists['wheel'].as_uri()}",
        ],
        cwd=home,
    )
    return bin_dir
