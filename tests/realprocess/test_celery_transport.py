"""Celery on the ``raft://`` transport with worker processes against real node processes: the
faults (a worker killed with SIGKILL mid-task). The transport's semantics (publish, ack, reject,
redelivery, priorities, fanout, in-thread workers) are tested faster over an in-process cluster:
``tests/celery/test_raft_transport_inprocess.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery

from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]


def _app(cluster: LocalCluster, name: str) -> Celery:
    url = ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())
    app = Celery(name, broker=url, backend="cache+memory://")
    app.conf.broker_transport_options = {"secret": cluster.secret, "visibility_timeout": 60}
    app.conf.task_acks_late = True
    app.conf.worker_prefetch_multiplier = 1
    return app


def _worker(cluster: LocalCluster, markers, sleep: float) -> subprocess.Popen:
    env = {
        **os.environ,
        "RAFTSYNC_TEST_BROKER": ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values()),
        "RAFTSYNC_TEST_SECRET": cluster.secret,
        "RAFTSYNC_TEST_MARKERS": str(markers),
        "RAFTSYNC_TEST_SLEEP": str(sleep),
    }
    cmd = [sys.executable, "-m", "celery", "-A", "tests.realprocess.celery_kill_app", "worker"]
    cmd += ["--pool", "solo", "--loglevel", "WARNING", "-Q", "killq", "--without-heartbeat"]
    return subprocess.Popen(cmd, env=env, cwd=Path(__file__).parents[2])


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_task_of_a_worker_killed_with_sigkill_is_redelivered(coordination_cluster, tmp_path):
    """acks_late + kill -9 mid-task: the task runs again on another worker, and is done once."""
    app = _app(coordination_cluster, "raft-kill")
    app.send_task("kill_test.slow", args=("job-1",), queue="killq")
    first = _worker(coordination_cluster, tmp_path, sleep=600)
    second = None
    try:
        assert _wait_for(lambda: len(_lines(tmp_path / "started")) == 1, 60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = _worker(coordination_cluster, tmp_path, sleep=0)
        assert _wait_for(lambda: _lines(tmp_path / "done"), 60), "task was not redelivered"
        time.sleep(1)
        starts, done = _lines(tmp_path / "started"), _lines(tmp_path / "done")
        assert [s.split()[0] for s in starts] == ["job-1", "job-1"]
        assert len(done) == 1 and done[0].split()[1] == str(second.pid)
        with app.connection() as conn:
            assert _wait_for(
                lambda: conn.default_channel.coord.queue("killq").stats()["in_flight"] == 0, 10
            )
    finally:
        for proc in (first, second):
            if proc and proc.poll() is None:
                proc.terminate()
                proc.wait(15)
