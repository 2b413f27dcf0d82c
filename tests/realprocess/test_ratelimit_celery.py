"""The acceptance test of cluster-wide rate limits: ``@rate_limit("50/s")`` on a task run by four
real Celery worker processes on ``raft://`` for 20 s, with the Raft leader killed (-9) in the
middle. Celery's own ``rate_limit`` would let each worker run 50/s (200/s in all); here the
total over the 20 s stays within 5% of 1,000, and no 1-s window runs more than the rate plus
the burst. The task has ``max_retries=0``: the re-sends while waiting for a token never count.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from celery import Celery

from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]
ROOT = Path(__file__).resolve().parents[2]
QUEUE = "rlq"
RATE, BURST, WINDOW = 50, 25, 20.0
WORKERS = 4
TASKS = 1_600  # more than the window can run, so the bucket is never short of callers
JITTER = 3  # runs a 1-s window may gain from the gap between a grant and its marker


def _broker(cluster: LocalCluster) -> str:
    return ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())


def _worker(cluster: LocalCluster, markers: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "syncproject.test_settings",
        "RAFTSYNC_CLUSTER": ",".join(f"{n}={h}:{p}" for n, (h, p) in cluster.addresses.items()),
        "RAFTSYNC_CLUSTER_SECRET": cluster.secret,
        "RAFTSYNC_CELERY_BROKER_URL": _broker(cluster),
        "RAFTSYNC_TEST_MARKERS": str(markers),
        "RAFTSYNC_TEST_RATE": f"{RATE}/s",
        "RAFTSYNC_TEST_BURST": str(BURST),
    }
    cmd = [sys.executable, "-m", "celery", "-A", "tests.realprocess.celery_ratelimit_app"]
    cmd += ["worker", "--pool", "solo", "--loglevel", "ERROR", "-Q", QUEUE]
    cmd += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the window is over: no need for a clean stop
    proc.wait(10)


def _runs(markers: Path) -> list[tuple[float, str, str]]:
    """(time, pid, task index) of every run, in time order."""
    out = []
    for path in markers.glob("ran-*"):
        for line in path.read_text().splitlines():
            _, index, pid, at = line.split()
            out.append((float(at), pid, index))
    return sorted(out)


def _send(cluster: LocalCluster, bucket: str, indexes: range) -> None:
    app = Celery("rl-producer", broker=_broker(cluster))
    app.conf.broker_transport_options = {"secret": cluster.secret}
    for i in indexes:
        app.send_task("rl_test.run", args=(bucket, i), queue=QUEUE)


def test_fifty_per_second_over_four_workers_and_a_leader_kill(coordination_cluster, tmp_path):
    cluster = coordination_cluster
    workers = [_worker(cluster, tmp_path) for _ in range(WORKERS)]
    try:
        producers = [
            threading.Thread(target=_send, args=(cluster, "a", range(k, TASKS, 4)), daemon=True)
            for k in range(4)
        ]
        for p in producers:
            p.start()
        deadline = time.monotonic() + 120
        while not _runs(tmp_path):
            assert time.monotonic() < deadline, "no run started"
            assert all(w.poll() is None for w in workers), "a worker died"
            time.sleep(0.05)
        start = _runs(tmp_path)[0][0]
        time.sleep(max(0.0, start + WINDOW / 2 - time.time()))
        leader = cluster.leader()
        assert leader is not None
        cluster.kill(leader)  # kill -9 mid-window
        time.sleep(3)
        cluster.start_node(leader)
        time.sleep(max(0.0, start + WINDOW + 1.0 - time.time()))
        runs = _runs(tmp_path)
    finally:
        for w in workers:
            _stop(w)
    window = [(at, pid) for at, pid, _ in runs if at < start + WINDOW]
    pids = {pid for _, pid in window}
    indexes = [index for _, _, index in runs]
    assert len(set(indexes)) == len(indexes), "a task ran twice"  # re-sent, never duplicated
    assert len(pids) == WORKERS, f"runs came from {len(pids)} workers"  # every worker ran
    total = len(window)
    assert RATE * WINDOW * 0.95 <= total <= RATE * WINDOW * 1.05, total
    assert len(runs) < TASKS, "the tasks ran out: the window measured the supply, not the limit"
    times = [at for at, _ in window]
    busiest = max(
        sum(1 for t in times[i:] if t < first + 1.0) for i, first in enumerate(times)
    )
    assert busiest <= RATE + BURST + JITTER, busiest
    print(f"\nruns in {WINDOW:.0f} s: {total}; busiest 1-s window: {busiest}")
