"""Every ```python block in the README runs as written (docs are part of the product).

Blocks that start with ``# needs a running cluster`` run against a real 3-node cluster started
for the purpose, with ``RAFTSYNC_CLUSTER``/``RAFTSYNC_CLUSTER_SECRET`` pointing at it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raft_node.testing.launcher import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
NEEDS_CLUSTER = "# needs a running cluster"


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory: pytest.TempPathFactory):
    cluster = LocalCluster(  # what ``make run`` hosts
        tmp_path_factory.mktemp("readme"),
        ROOT / "manage.py",
        settings={"STATE_MACHINE": "coordination.primitives.machine.CoordinationMachine"},
    )
    cluster.start()
    try:
        cluster.wait_for_leader()
        spec = ",".join(f"{h}:{p}" for h, p in cluster.addresses.values())
        yield {"RAFTSYNC_CLUSTER": spec, "RAFTSYNC_CLUSTER_SECRET": cluster.secret}
    finally:
        cluster.stop()


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(
    code: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # As a user would: saved anywhere, with raftsync installed (no checkout on the path, and not
    # inside this repository's Django project, whose settings module pytest-django exports).
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")
    }
    if code.startswith(NEEDS_CLUSTER):
        env.update(request.getfixturevalue("cluster_env"))
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr  # not even in a thread
    assert "False" not in done.stdout.split(), done.stdout


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3
