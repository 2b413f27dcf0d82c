"""Celery worker *processes* (prefork) on ``raft://`` with the project's settings: the worker
session hooks, ``@distributed_lock`` across processes, a worker killed with -9 mid-task, ETA
tasks, and a Raft leader killed while tasks flow."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery

from coordination.client import Coordinator
from coordination.primitives import commands as c
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]
ROOT = Path(__file__).resolve().parents[2]
QUEUE = "lockq"


def _broker(cluster: LocalCluster) -> str:
    return ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())


def _producer(cluster: LocalCluster, name: str) -> Celery:
    app = Celery(name, broker=_broker(cluster))
    app.conf.broker_transport_options = {"secret": cluster.secret}
    app.conf.task_default_queue = QUEUE
    return app


def _worker(
    cluster: LocalCluster,
    markers: Path,
    *,
    session_ttl: float = 30.0,
    broker_ttl: float = 30.0,
    queues: str = QUEUE,
    **extra_env: str,
) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "syncproject.test_settings",
        "RAFTSYNC_CLUSTER": ",".join(f"{n}={h}:{p}" for n, (h, p) in cluster.addresses.items()),
        "RAFTSYNC_CLUSTER_SECRET": cluster.secret,
        "RAFTSYNC_SESSION_TTL": str(session_ttl),
        "RAFTSYNC_CELERY_BROKER_URL": _broker(cluster),
        "RAFTSYNC_TEST_BROKER_TTL": str(broker_ttl),
        "RAFTSYNC_TEST_MARKERS": str(markers),
        **extra_env,
    }
    cmd = [sys.executable, "-m", "celery", "-A", "tests.realprocess.celery_lock_app", "worker"]
    cmd += ["--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING", "-Q", queues]
    cmd += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
    # Its own process group, so the prefork children can be killed with it.
    return subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)


def _stop(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is None:
            continue
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children left behind
        proc.wait(5)


def _events(markers: Path) -> list[list[str]]:
    path = markers / "events"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _worker_sessions(coord: Coordinator, worker: subprocess.Popen) -> list[dict]:
    """Sessions opened by the worker's processes (labelled ``celery@host-pid``)."""
    pids = {str(worker.pid), *_children(worker.pid)}
    sessions = coord.query(c.session_list())
    return [
        s
        for s in sessions
        if s["label"].startswith("celery@") and s["label"].rsplit("-", 1)[1] in pids
    ]


def _children(pid: int) -> set[str]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return set(path.read_text().split()) if path.exists() else set()


@pytest.fixture
def coord(coordination_cluster):
    with Coordinator(
        list(coordination_cluster.addresses.values()), coordination_cluster.secret
    ) as coordinator:
        yield coordinator


def _intervals(events: list[list[str]], key: str) -> list[tuple[float, float]]:
    starts = {e[1]: float(e[5]) for e in events if e[0] == "start" and e[2] == key}
    ends = {e[1]: float(e[5]) for e in events if e[0] == "end" and e[2] == key}
    return sorted((starts[t], ends[t]) for t in starts if t in ends)


def test_worker_processes_open_a_session_at_start_and_close_it_at_shutdown(
    coordination_cluster, coord, tmp_path
):
    worker = _worker(coordination_cluster, tmp_path)
    try:
        # The main process and both prefork children each open one.
        _wait_for(lambda: len(_worker_sessions(coord, worker)) == 3, 60, "3 worker sessions")
        ids = {s["session"] for s in _worker_sessions(coord, worker)}
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        worker.wait(30)
        # Closed, not expired: well within the 30 s TTL they would otherwise keep.
        live = {s["session"] for s in coord.query(c.session_list())}
        assert not ids & live
    finally:
        _stop(worker)


def test_distributed_lock_keeps_one_key_apart_and_lets_keys_run_in_parallel(
    coordination_cluster, coord, tmp_path
):
    app = _producer(coordination_cluster, "lock-producer")
    worker = _worker(coordination_cluster, tmp_path)
    try:
        _wait_for(lambda: len(_worker_sessions(coord, worker)) == 3, 60, "worker start")
        for tag in ("a1", "a2"):
            app.send_task("lock_test.hold", args=("same", tag, 1.5))
        _wait_for(lambda: len(_intervals(_events(tmp_path), "same")) == 2, 60, "both runs")
        (_, first_end), (second_start, _) = _intervals(_events(tmp_path), "same")
        assert second_start >= first_end, "two runs of one key overlapped"
        tokens = [int(e[3]) for e in _events(tmp_path) if e[0] == "start"]
        assert tokens[1] > tokens[0]  # the later holder has the larger fencing token

        for key in ("left", "right"):
            app.send_task("lock_test.hold", args=(key, key, 2.0))
        _wait_for(
            lambda: all(_intervals(_events(tmp_path), k) for k in ("left", "right")),
            60,
            "both keys",
        )
        (ls, le), (rs, re_) = (_intervals(_events(tmp_path), k)[0] for k in ("left", "right"))
        assert ls < re_ and rs < le, "different keys did not run in parallel"
    finally:
        _stop(worker)


def test_worker_killed_mid_task_releases_the_lock_after_the_ttl_and_the_task_reruns(
    coordination_cluster, coord, tmp_path
):
    app = _producer(coordination_cluster, "kill-producer")
    first = _worker(coordination_cluster, tmp_path, session_ttl=3.0, broker_ttl=2.0)
    second = None
    try:
        app.send_task("lock_test.hold", args=("killed", "k1", 600))
        _wait_for(lambda: any(e[0] == "start" for e in _events(tmp_path)), 60, "task start")
        assert coord.inspect_lock("job:killed")["holders"], "the running task holds the lock"
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool, mid-task
        killed_at = time.monotonic()
        first.wait(10)
        _wait_for(lambda: not coord.inspect_lock("job:killed")["holders"], 30, "lock release")
        released_after = time.monotonic() - killed_at
        assert 1.0 < released_after < 3.0 + 5.0, released_after  # the session TTL, not at once

        second = _worker(
            coordination_cluster, tmp_path, session_ttl=3.0, RAFTSYNC_TEST_MAX_SLEEP="0"
        )
        _wait_for(lambda: any(e[0] == "end" for e in _events(tmp_path)), 60, "the rerun")
        starts = [e for e in _events(tmp_path) if e[0] == "start"]
        ends = [e for e in _events(tmp_path) if e[0] == "end"]
        assert len(starts) == 2 and len(ends) == 1 and ends[0][4] == starts[1][4]
        assert starts[1][4] != starts[0][4] and int(starts[1][3]) > int(starts[0][3])
    finally:
        _stop(first, second)


def test_countdown_tasks_wait_in_the_cluster_and_run_once(coordination_cluster, coord, tmp_path):
    """With a 1 s visibility timeout, a worker holding a 4 s countdown task would see it
    redelivered (and run it twice); as a delayed message it is not handed out until due."""
    app = Celery("eta-producer", broker=_broker(coordination_cluster))
    app.conf.broker_transport_options = {"secret": coordination_cluster.secret}
    worker = _worker(coordination_cluster, tmp_path, queues="etaq", RAFTSYNC_TEST_VISIBILITY="1")
    try:
        _wait_for(lambda: len(_worker_sessions(coord, worker)) == 3, 60, "worker start")
        sent = time.time()
        app.send_task("lock_test.mark", args=("later",), countdown=4, queue="etaq")
        app.send_task("lock_test.mark", args=("now",), queue="etaq")
        assert coord.queue("etaq").stats()["delayed"] == 1
        _wait_for(lambda: [e for e in _events(tmp_path) if e[1] == "later"], 30, "eta task")
        time.sleep(3)  # room for a duplicate to show up
        ran = [e for e in _events(tmp_path) if e[0] == "ran"]
        assert sorted(e[1] for e in ran) == ["later", "now"]
        later = next(float(e[5]) for e in ran if e[1] == "later")
        assert later >= sent + 4 - 0.05
    finally:
        _stop(worker)


def test_no_acknowledged_task_is_lost_when_the_leader_is_killed(
    coordination_cluster, coord, tmp_path
):
    app = _producer(coordination_cluster, "flow-producer")
    worker = _worker(coordination_cluster, tmp_path, queues="flowq")
    sent, failed = [], []
    try:
        _wait_for(lambda: len(_worker_sessions(coord, worker)) == 3, 60, "worker start")
        leader = coordination_cluster.leader()
        for i in range(60):
            if i == 20:
                coordination_cluster.kill(leader)  # kill -9 while tasks flow
            try:
                app.send_task("lock_test.mark", args=(f"t{i}",), queue="flowq")
                sent.append(f"t{i}")
            except Exception as exc:  # not acknowledged: the caller knows it may be lost
                failed.append((i, repr(exc)))
        coordination_cluster.start_node(leader)
        _wait_for(
            lambda: set(sent) <= {e[1] for e in _events(tmp_path) if e[0] == "ran"},
            60,
            "every acknowledged task to run",
        )
        assert len(sent) >= 55, failed  # the client rides out the election
    finally:
        _stop(worker)


def test_remote_control_reaches_workers_and_revoke_ends_a_locked_task(
    coordination_cluster, coord, tmp_path
):
    """Broadcasts (fanout) and replies cross processes through bindings held in the cluster:
    ping and inspect answer, and revoke with terminate stops a running task, whose lock the
    worker's main process then releases on the killed child's behalf: in under a second, not
    at the session TTL (3 s here, so an expiry could come 2 s after the kill at the soonest)."""
    app = _producer(coordination_cluster, "control-producer")
    worker = _worker(coordination_cluster, tmp_path, session_ttl=3.0, queues="ctlq")
    try:
        _wait_for(lambda: len(_worker_sessions(coord, worker)) == 3, 60, "worker start")
        replies: list = []
        _wait_for(lambda: replies.extend(app.control.ping(timeout=1.0)) or replies, 30, "pong")
        assert next(iter(replies[0].values())) == {"ok": "pong"}

        result = app.send_task("lock_test.hold", args=("revoked", "r1", 600), queue="ctlq")
        _wait_for(lambda: any(e[0] == "start" for e in _events(tmp_path)), 60, "task start")
        active = app.control.inspect(timeout=2.0).active() or {}
        assert [t["id"] for tasks in active.values() for t in tasks] == [result.id]

        revoked_at = time.monotonic()
        app.control.revoke(result.id, terminate=True)
        _wait_for(lambda: not coord.inspect_lock("job:revoked")["holders"], 30, "lock release")
        released_after = time.monotonic() - revoked_at
        print(f"lock released {released_after:.3f} s after revoke(terminate=True)")
        assert released_after < 1.0, released_after
        assert not any(e[0] == "end" for e in _events(tmp_path))
        # Each call's reply queue was deleted once its replies were in, with its binding.
        queues = [row["name"] for row in coord.queues()]
        assert not [q for q in queues if q.endswith(".reply.celery.pidbox")], queues
        assert not [b for b in coord.locks("kombu/reply.celery.pidbox/")], "reply bindings left"
    finally:
        _stop(worker)
