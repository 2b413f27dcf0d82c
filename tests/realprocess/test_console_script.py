"""The ``raftsync`` console script on a machine with no Django project, and a node process that
refuses a bad setting with one line instead of listening without ever electing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from raft_node.testing.launcher import free_port

pytestmark = [pytest.mark.realprocess]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "raftsync"  # installed by `pip install -e .` (make venv)
SECRET = "console-script-test-secret"


def _env(**extra: str) -> dict[str, str]:
    """No Django anywhere: no settings module, no RAFTSYNC_* from the caller."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAFTSYNC_") and k != "DJANGO_SETTINGS_MODULE"
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _script(*args: str, env: dict[str, str], cwd: Path, timeout: float = 30):
    return subprocess.run(
        [str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_the_commands_and_the_node_options(tmp_path: Path) -> None:
    done = _script("--help", env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "node" in done.stdout and "status" in done.stdout
    node = _script("node", "--help", env=_env(), cwd=tmp_path)
    for flag in ("--id", "--cluster", "--data-dir", "--metrics-port", "--listen", "--secret-file"):
        assert flag in node.stdout


def test_three_script_nodes_elect_and_status_reports_them(tmp_path: Path) -> None:
    ports = {f"n{i}": free_port() for i in (1, 2, 3)}
    cluster = ",".join(f"{n}=127.0.0.1:{p}" for n, p in ports.items())
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    env = _env(RAFTSYNC_CLUSTER=cluster, RAFTSYNC_TICK_INTERVAL_MS="10")
    procs = {}
    for node in ports:  # the secret from a file for one node, the environment for the others
        how = ["--secret-file", str(secret_file)] if node == "n1" else []
        node_env = env if node == "n1" else {**env, "RAFTSYNC_CLUSTER_SECRET": SECRET}
        log = open(tmp_path / f"{node}.log", "wb")  # noqa: SIM115 - owned by the child
        procs[node] = subprocess.Popen(
            [str(SCRIPT), "node", "--id", node, "--data-dir", str(tmp_path / node), *how],
            env=node_env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
    try:
        # --wait asks again until one leader answers: right after start, there is none yet.
        done = _script(
            "status", "--json", "--timeout", "1", "--wait", "20", "--secret-file",
            str(secret_file), env=env, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, (tmp_path / "n1.log").read_text()[-2000:]
        report = json.loads(done.stdout)
        assert report["leader"] in ports
        assert {n["id"] for n in report["nodes"]} == set(ports)
        table = _script("status", env={**env, "RAFTSYNC_CLUSTER_SECRET": SECRET}, cwd=tmp_path)
        assert table.returncode == 0 and f"leader: {report['leader']}" in table.stdout
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=20) for proc in procs.values()]
    assert codes == [0, 0, 0]  # a clean stop is a clean exit
    assert "event=fatal" not in "".join((tmp_path / f"{n}.log").read_text() for n in ports)


def test_status_without_a_secret_says_how_to_give_one(tmp_path: Path) -> None:
    done = _script("status", env=_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "RAFTSYNC_CLUSTER_SECRET" in done.stderr and "--secret-file" in done.stderr


def test_script_node_with_a_bad_tick_exits_with_one_line(tmp_path: Path) -> None:
    env = _env(
        RAFTSYNC_CLUSTER=f"n1=127.0.0.1:{free_port()}",
        RAFTSYNC_CLUSTER_SECRET=SECRET,
        RAFTSYNC_TICK_INTERVAL_MS="ten",
    )
    done = _script("node", "--id", "n1", "--data-dir", str(tmp_path / "n1"), env=env, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "RAFTSYNC_TICK_INTERVAL_MS='ten'" in lines[0]
    assert 'COORDINATION["TICK_INTERVAL_MS"]' in lines[0]


@pytest.mark.parametrize("where", ["environment", "settings"])
def test_run_raft_node_with_a_bad_tick_exits_non_zero_naming_the_key(
    tmp_path: Path, where: str
) -> None:
    """It used to listen and never elect: the TypeError died inside the tick task."""
    env = {
        **_env(),
        "RAFTSYNC_CLUSTER": f"n1=127.0.0.1:{free_port()}",
        "RAFTSYNC_CLUSTER_SECRET": SECRET,
        "DJANGO_SETTINGS_MODULE": "syncproject.test_settings",
    }
    if where == "environment":
        env["RAFTSYNC_TICK_INTERVAL_MS"] = "ten"
    else:
        (tmp_path / "bad_tick.py").write_text(
            "from syncproject.test_settings import *  # noqa\n"
            'COORDINATION = {**COORDINATION, "TICK_INTERVAL_MS": "ten"}\n'
        )
        env.update(DJANGO_SETTINGS_MODULE="bad_tick", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "run_raft_node", "--id", "n1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert 'COORDINATION["TICK_INTERVAL_MS"]' in done.stderr and "'ten'" in done.stderr
    assert "Traceback" not in done.stderr
