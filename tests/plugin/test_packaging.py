"""What ``pip install raftsync`` gives: the right files, metadata that twine accepts, a clean
``pip check``, the version, the entry points, and nothing of the example project or tests."""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from plugin_helpers import ROOT, clean_env, pip_for, run

pytestmark = [pytest.mark.realprocess]


def test_the_wheel_holds_the_two_packages_and_their_data_only(dists: dict[str, Path]) -> None:
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("raftsync-")}
    assert tops == {"coordination", "raft_node"}
    for required in (
        "coordination/py.typed",
        "raft_node/py.typed",
        "coordination/templates/admin/coordination/nodes.html",
        "coordination/migrations/0001_initial.py",
        "coordination/management/commands/run_raft_node.py",
        "coordination/celery/transport.py",
        "raft_node/sim/__main__.py",
    ):
        assert required in names, required
    assert not [n for n in names if n.startswith(("syncproject/", "bench/", "tests/"))]
    metadata = zipfile.ZipFile(dists["wheel"]).read(
        next(n for n in names if n.endswith("dist-info/METADATA"))
    )
    assert b"License-Expression: Apache-2.0" in metadata
    entry_points = (
        zipfile.ZipFile(dists["wheel"])
        .read(next(n for n in names if n.endswith("dist-info/entry_points.txt")))
        .decode()
    )
    assert "raft = coordination.celery.backend:RaftBackend" in entry_points
    assert "raftsync = coordination.cli:main" in entry_points
    assert "raftsync = coordination.celery.command:raftsync" in entry_points


def test_every_template_and_module_of_the_tree_is_in_the_wheel(dists: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    for package in ("coordination", "raft_node"):
        for path in (ROOT / package).rglob("*"):
            if path.suffix in (".py", ".html") and "__pycache__" not in path.parts:
                assert path.relative_to(ROOT).as_posix() in names, path


def test_the_sdist_carries_licence_changelog_and_readme(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"} <= names


def test_twine_accepts_both(dists: dict[str, Path]) -> None:
    done = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dists.values())])
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_installed_in_a_fresh_venv(plugin_venv: Path, tmp_path: Path) -> None:
    python = str(plugin_venv / "python")
    env = clean_env()
    run([*pip_for(plugin_venv), "check"], cwd=tmp_path, env=env)
    version = run(
        [python, "-c", "import coordination, raft_node; print(coordination.__version__)"],
        cwd=tmp_path,
        env=env,
    ).stdout.strip()
    expected = next(
        line.split('"')[1]
        for line in (ROOT / "pyproject.toml").read_text().splitlines()
        if line.startswith("version =")
    )
    assert version == expected
    where = run(
        [python, "-c", "import coordination; print(coordination.__file__)"], cwd=tmp_path, env=env
    )
    assert "site-packages" in where.stdout and str(ROOT) not in where.stdout
    assert (
        "raftsync" in run([str(plugin_venv / "raftsync"), "--help"], cwd=tmp_path, env=env).stdout
    )
    celery_help = run([str(plugin_venv / "celery"), "--help"], cwd=tmp_path, env=env).stdout
    assert "raftsync" in celery_help
