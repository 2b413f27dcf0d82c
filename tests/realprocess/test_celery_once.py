"""``@once`` tasks on ``raft://`` with real workers: the key is held by the task's message in
the cluster's queue, so it is taken by the first ``delay()`` and freed by the entry that acks
(or discards) the message; no TTL is involved anywhere.

The producer defines the task under the worker's name (``once_test.report`` in
``celery_lock_app``) with the policy under test: the policy is the sender's business.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from coordination.celery.once import once
from coordination.client import Coordinator
from coordination.exceptions import AlreadyQueued
from tests.realprocess import test_celery_worker as cw

pytestmark = [pytest.mark.realprocess]
BROKER_TTL = 2.0
THREADS = 50


@pytest.fixture
def coord(coordination_cluster):
    addresses = list(coordination_cluster.addresses.values())
    with Coordinator(addresses, coordination_cluster.secret) as coordinator:
        yield coordinator


def _report(cluster, name: str, policy: str):
    app = cw._producer(cluster, name)

    @once(key="once:{customer}", on_duplicate=policy)
    @app.task(name="once_test.report", shared=False)
    def report(customer: str, tag: str, seconds: float) -> None:
        raise AssertionError("runs in the worker")

    return report


def _events(markers, event: str, tag: str) -> list[list[str]]:
    return [e for e in cw._events(markers) if e[0] == event and e[1] == tag]


def _concurrently(call, n: int) -> list[object]:
    """``call()`` from ``n`` threads released together: what each returned or raised."""
    results: list[object] = [None] * n
    gate = threading.Barrier(n)

    def one(i: int) -> None:
        gate.wait()
        try:
            results[i] = call()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_fifty_concurrent_delays_run_once_then_a_queued_revoked_holder_frees_its_key(
    coordination_cluster, coord, tmp_path
):
    returning = _report(coordination_cluster, "once-return", "return")
    raising = _report(coordination_cluster, "once-raise", "raise")
    worker = cw._worker(coordination_cluster, tmp_path)
    try:
        cw._wait_for(lambda: len(cw._worker_sessions(coord, worker)) == 3, 60, "worker start")
        # policy "return": every caller gets the one queued task's AsyncResult
        got = _concurrently(lambda: returning.delay("c-ret", "ret", 1.0), THREADS)
        ids = {getattr(r, "id", repr(r)) for r in got}
        assert len(ids) == 1, ids
        # policy "raise": one caller queued it, the 49 others got AlreadyQueued naming it
        got = _concurrently(lambda: raising.delay("c-raise", "raise", 1.0), THREADS)
        sent = [r for r in got if not isinstance(r, Exception)]
        refused = [r for r in got if isinstance(r, AlreadyQueued)]
        assert len(sent) == 1 and len(refused) == THREADS - 1, got
        assert {r.task_id for r in refused} == {sent[0].id}
        for tag in ("ret", "raise"):
            cw._wait_for(lambda tag=tag: _events(tmp_path, "end", tag), 30, f"{tag} to end")
        # a revoked holder that never started: the worker discards it, and that frees the key
        doomed = returning.apply_async(("c-rev", "revoked", 0.1), countdown=1.5)
        assert returning.delay("c-rev", "other", 0.1).id == doomed.id  # held while delayed
        doomed.revoke()
        fresh = _poll_new_id(returning, ("c-rev", "after", 0.1), doomed.id, 30)
        cw._wait_for(lambda: _events(tmp_path, "end", "after"), 30, "the new task to run")
        assert fresh != doomed.id
        counts = {tag: len(_events(tmp_path, "start", tag)) for tag in ("ret", "raise")}
        counts["revoked"] = len(_events(tmp_path, "start", "revoked"))
        assert counts == {"ret": 1, "raise": 1, "revoked": 0}
    finally:
        cw._stop(worker)


def _poll_new_id(task, args: tuple, old: str, timeout: float) -> str:
    """Send ``task`` until it is accepted (a duplicate changes nothing, so polling is safe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = task.apply_async(args)
        if result.id != old:
            return result.id
        time.sleep(0.02)
    raise AssertionError(f"key still held by {old} after {timeout} s")


def test_killed_worker_task_is_redelivered_and_frees_its_key_when_it_ends(
    coordination_cluster, coord, tmp_path
):
    report = _report(coordination_cluster, "once-kill", "return")
    first = cw._worker(coordination_cluster, tmp_path, broker_ttl=BROKER_TTL)
    second = None
    try:
        cw._wait_for(lambda: len(cw._worker_sessions(coord, first)) == 3, 60, "worker start")
        held = report.delay("c-kill", "doomed", 30.0)
        cw._wait_for(lambda: _events(tmp_path, "start", "doomed"), 30, "the task to start")
        second = cw._worker(coordination_cluster, tmp_path, broker_ttl=BROKER_TTL)
        cw._wait_for(lambda: len(cw._worker_sessions(coord, second)) == 3, 60, "second worker")
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool, mid-task
        assert report.delay("c-kill", "dup", 0.1).id == held.id  # still held: it will rerun
        cw._wait_for(lambda: _events(tmp_path, "end", "doomed"), 30, "the redelivered run")
        ended = time.monotonic()
        fresh = _poll_new_id(report, ("c-kill", "next", 0.1), held.id, 5)
        gap = time.monotonic() - ended
        assert gap < 1.0, f"key freed {gap:.2f} s after the task ended"  # no TTL wait
        cw._wait_for(lambda: _events(tmp_path, "end", "next"), 30, "the next task to run")
        assert fresh != held.id
        counts = {t: len(_events(tmp_path, "start", t)) for t in ("doomed", "dup", "next")}
        assert counts == {"doomed": 2, "dup": 0, "next": 1}
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
        cw._stop(first, second)
