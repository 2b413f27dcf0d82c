"""``raft_status`` and ``run_cluster`` as an operator runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordination.primitives.commands import session_open
from raft_node import kvstore
from raft_node.client import RaftClient, RaftError
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "manage.py"
# What `make run` uses: the demo's settings, with no cluster secret configured (the test settings
# pytest-django exports have one).
DEMO = {"DJANGO_SETTINGS_MODULE": "syncproject.settings"}


def _manage(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_raft_status_reports_leader_and_fails_without_quorum(tmp_path: Path):
    with LocalCluster(tmp_path, MANAGE) as c:
        c.wait_for_leader()
        spec = ",".join(f"{n}={h}:{p}" for n, (h, p) in c.addresses.items())
        env = {"RAFTSYNC_CLUSTER_SECRET": c.secret}
        done = _manage("raft_status", "--cluster", spec, "--json", env=env)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["leader"] in c.ids
        assert {n["id"] for n in report["nodes"]} == set(c.ids)
        leader_row = next(n for n in report["nodes"] if n["id"] == report["leader"])
        assert set(leader_row["peers"]) == set(c.ids) - {report["leader"]}
        assert all(n["fsync"] is True for n in report["nodes"])
        table = _manage("raft_status", "--cluster", spec, env=env)
        assert table.returncode == 0 and "leader:" in table.stdout
        assert "WARNING" not in table.stdout
        for node in c.ids[:2]:
            c.kill(node)
        survivor = c.ids[2]
        # The survivor, if it led, steps down via CheckQuorum: wait until it says so.
        _wait_for(lambda: (c.status(survivor) or {}).get("role") not in ("leader", None), 10)
        done = _manage("raft_status", "--cluster", spec, "--timeout", "0.5", env=env)
        assert done.returncode == 1
        assert "unreachable" in done.stdout


def test_a_cluster_without_fsync_says_so_everywhere(tmp_path: Path):
    """UNSAFE_NO_FSYNC (test suites, benchmark bounds): the nodes still serve writes, and the
    operator cannot miss it: a WARNING event in each node's log, ``"fsync": false`` per node in
    ``raft_status --json`` and a warning line under its table."""
    with LocalCluster(tmp_path, MANAGE, settings={"UNSAFE_NO_FSYNC": True}) as c:
        c.wait_for_leader()
        with RaftClient(list(c.addresses.values()), c.secret, timeout=20) as client:
            client.propose(kvstore.put("k", b"v"))
            assert client.read(kvstore.get("k")) == b"v"
        spec = ",".join(f"{n}={h}:{p}" for n, (h, p) in c.addresses.items())
        env = {"RAFTSYNC_CLUSTER_SECRET": c.secret}
        report = json.loads(_manage("raft_status", "--cluster", spec, "--json", env=env).stdout)
        assert [n["fsync"] for n in report["nodes"]] == [False] * 3
        table = _manage("raft_status", "--cluster", spec, env=env).stdout
        assert "WARNING: fsync is off on n1, n2, n3 (UNSAFE_NO_FSYNC)" in table, table
        for node in c.ids:
            log = c.log_path(node).read_text(errors="replace")
            assert f"event=unsafe_no_fsync node={node}" in log, log[-2000:]
            assert "fsync disabled" in log, log[-2000:]  # the log storage itself was told


def _free_run(count: int) -> int:
    """A base port with ``count`` consecutive free ports after it."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65000:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no run of free ports")


def test_run_cluster_restarts_a_killed_node_and_stops_all(tmp_path: Path):
    base = _free_run(3)
    # DEBUG on (the demo reads RAFTSYNC_DEBUG): no secret configured, so one is generated.
    env = {"RAFTSYNC_DATA_DIR": str(tmp_path), "RAFTSYNC_DEBUG": "1", **DEMO}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(MANAGE),
            "run_cluster",
            "--base-port",
            str(base),
            "--web",
            "off",
            "--no-worker",
        ],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    addrs = [("127.0.0.1", base + i) for i in range(3)]
    try:
        secret = _wait_for(lambda: (tmp_path / "cluster.secret").read_text().strip())
        with RaftClient(addrs, secret, timeout=20) as client:
            assert client.propose(session_open(5_000, "test"))["session"] > 0
        victim = _node_pid(tmp_path / "n2")
        os.kill(victim, signal.SIGKILL)
        new_pid = _wait_for(lambda: _node_pid(tmp_path / "n2", not_pid=victim), timeout=20)
        assert new_pid != victim
        with RaftClient([addrs[1]], secret, timeout=20) as client:
            _wait_for(lambda: client.status()["leader"], timeout=20)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
    text = out.decode()
    assert "restarting" in text and "leader:" in text
    for node in ("n1", "n2", "n3"):
        with pytest.raises(OSError):
            socket.create_connection(addrs[int(node[1]) - 1], timeout=0.5).close()


def _node_pid(data_dir: Path, not_pid: int | None = None) -> int | None:
    out = subprocess.run(
        ["pgrep", "-f", "--", f"--data-dir {data_dir}"], capture_output=True, text=True
    )
    pids = [int(p) for p in out.stdout.split() if int(p) != not_pid]
    return pids[0] if pids else None


def _wait_for(fn, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
        except (OSError, RaftError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(fn)


def test_run_cluster_brings_up_web_and_a_worker_on_the_raft_broker(tmp_path: Path):
    import urllib.error
    import urllib.request

    from raft_node.testing.launcher import free_port

    base, web = _free_run(3), free_port()
    env = {
        "RAFTSYNC_DATA_DIR": str(tmp_path),
        "RAFTSYNC_DB_PATH": str(tmp_path / "db.sqlite3"),
        "RAFTSYNC_DEBUG": "1",
        **DEMO,
    }
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(MANAGE),
                "run_cluster",
                "--base-port",
                str(base),
                "--web",
                f"127.0.0.1:{web}",
            ],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def admin_status():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{web}/admin/").status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert _wait_for(admin_status, timeout=30) in (200, 302)
        broker = ";".join(f"raft://127.0.0.1:{base + i}" for i in range(3))
        send = (
            "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
            "'syncproject.settings'); django.setup(); from syncproject.celery import app; "
            "print(app.send_task('coordination.ping').id)"
        )
        sent = subprocess.run(
            [sys.executable, "-c", send],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env, "RAFTSYNC_CELERY_BROKER_URL": broker},
        )
        task_id = sent.stdout.strip()
        assert task_id, sent.stderr
        _wait_for(lambda: f"{task_id}] succeeded" in log.read_text(), timeout=30)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert "Traceback" not in log.read_text()
