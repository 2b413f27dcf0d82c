"""Long ``acks_late`` tasks on ``raft://``: never delivered twice while their worker lives
(celery#5935), delivered again within one session TTL once it dies.

The transport leases a delivered task to the worker's broker session for as long as that
session lives (``queue.get`` with no visibility deadline). The control case sets the
``visibility_timeout`` that Redis and SQS brokers have, and the same task runs twice: the test
sees a redelivery when there is one.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from celery import Celery

from coordination.client import Coordinator
from tests.realprocess import test_celery_worker as cw

pytestmark = [pytest.mark.realprocess]
BROKER_TTL = 2.0  # seconds: the worker's broker session, and so the bound on a dead worker's lease


@pytest.fixture
def coord(coordination_cluster):
    addresses = list(coordination_cluster.addresses.values())
    with Coordinator(addresses, coordination_cluster.secret) as coordinator:
        yield coordinator


def _starts(markers, tag: str) -> list[float]:
    return [float(e[5]) for e in cw._events(markers) if e[0] == "start" and e[1] == tag]


def _send(app: Celery, tag: str, seconds: float, queue: str) -> None:
    app.send_task("lock_test.sleep", args=(tag, seconds), queue=queue)


@pytest.mark.parametrize(
    ("visibility", "runs"),
    [("", 1), ("2", 2)],
    ids=["session-held-lease", "control-visibility-timeout"],
)
def test_a_task_running_three_times_the_lease_bound_runs_once(
    coordination_cluster, coord, tmp_path, visibility: str, runs: int
):
    """6 s of work against a 2 s broker session TTL: the session is renewed while the worker
    lives, so the task runs once. With a 2 s ``visibility_timeout`` (the control), the lease
    runs out mid-task and the other pool process runs it again, as on Redis."""
    queue = f"longq-{runs}"
    app = cw._producer(coordination_cluster, f"long-{runs}")
    worker = cw._worker(
        coordination_cluster,
        tmp_path,
        queues=queue,
        broker_ttl=BROKER_TTL,
        RAFTSYNC_TEST_VISIBILITY=visibility,
    )
    try:
        cw._wait_for(lambda: len(cw._worker_sessions(coord, worker)) == 3, 60, "worker start")
        _send(app, "long", 3 * BROKER_TTL, queue)
        if runs > 1:  # the control: the lease runs out mid-task and the task runs again
            cw._wait_for(lambda: len(_starts(tmp_path, "long")) >= runs, 30, "a redelivery")
            return
        ends = lambda: [e for e in cw._events(tmp_path) if e[0] == "end"]  # noqa: E731
        cw._wait_for(ends, 60, "the run to end")
        time.sleep(BROKER_TTL + 1)  # room for a redelivery that should not happen
        assert len(_starts(tmp_path, "long")) == 1
        assert coord.queue(queue).stats()["in_flight"] == 0  # acked
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # no warm shutdown waiting on a running task
        cw._stop(worker)


def test_a_long_task_of_a_killed_worker_is_redelivered_within_one_session_ttl(
    coordination_cluster, coord, tmp_path
):
    queue = "longq-kill"
    app = cw._producer(coordination_cluster, "long-kill")
    first = cw._worker(coordination_cluster, tmp_path, queues=queue, broker_ttl=BROKER_TTL)
    second = None
    try:
        cw._wait_for(lambda: len(cw._worker_sessions(coord, first)) == 3, 60, "worker start")
        _send(app, "doomed", 30.0, queue)
        cw._wait_for(lambda: _starts(tmp_path, "doomed"), 30, "the task to start")
        second = cw._worker(coordination_cluster, tmp_path, queues=queue, broker_ttl=BROKER_TTL)
        cw._wait_for(lambda: len(cw._worker_sessions(coord, second)) == 3, 60, "second worker")
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool, mid-task
        killed = time.time()
        cw._wait_for(lambda: len(_starts(tmp_path, "doomed")) == 2, 30, "the redelivery")
        gap = _starts(tmp_path, "doomed")[1] - killed
        # The session expires BROKER_TTL after its last renewal, at most BROKER_TTL after the
        # kill; the leader's expiry tick and the second worker's blocking get add well under 1 s.
        assert gap <= BROKER_TTL + 1.5, f"redelivered {gap:.2f} s after the kill"
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)  # the redelivered run would take 30 s
        cw._stop(first, second)
