"""``@distributed_semaphore`` on plain, async and Celery functions against real node processes;
the countdown estimate; bad arguments refused when the decorator is applied."""

from __future__ import annotations

import asyncio
import random
import threading
from unittest import mock

import pytest
from celery import Celery
from celery.exceptions import Retry

from coordination.celery import semaphores as sem_mod
from coordination.celery.semaphores import HoldTimes, current_slot, distributed_semaphore
from coordination.client import Coordinator
from coordination.exceptions import LimitExceeded, LockKeyError, SemaphoreNotAcquired
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]


@pytest.fixture
def coord(coordination_cluster: LocalCluster):
    c = Coordinator(list(coordination_cluster.addresses.values()), coordination_cluster.secret)
    yield c
    c.close()


def test_plain_functions_run_at_most_limit_at_once_and_wait_for_a_slot(coord):
    inside = threading.Semaphore(0)
    leave = threading.Event()
    running, peak, lock = [0], [0], threading.Lock()

    @distributed_semaphore(limit=2, key="plain:{kind}", coordinator=coord, ttl=5, wait=20)
    def work(kind, n):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        inside.release()
        leave.wait(20)
        with lock:
            running[0] -= 1
        return current_slot().token

    results: list = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(work("a", n)), daemon=True)
        for n in range(5)
    ]
    for t in threads:
        t.start()
    for _ in range(2):
        assert inside.acquire(timeout=20)
    assert not inside.acquire(timeout=0.5)  # the other three wait in the cluster
    assert len(coord.inspect_semaphore("plain:a")["waiters"]) == 3
    leave.set()
    for t in threads:
        t.join(30)
    assert peak[0] == 2 and len(results) == 5 and len(set(results)) == 5
    assert coord.inspect_semaphore("plain:a")["holders"] == []


def test_a_plain_function_gives_up_after_its_wait(coord):
    hold = coord.semaphore("busy:1", 1, session=coord.session(), owner="x")
    assert hold.acquire()

    @distributed_semaphore(limit=1, key="busy:{n}", coordinator=coord, wait=0.3)
    def f(n):
        return "ran"

    @distributed_semaphore(limit=1, key="busy:{n}", coordinator=coord, on_conflict="skip")
    def g(n):
        return "ran"

    with pytest.raises(SemaphoreNotAcquired):
        f(1)
    with mock.patch.object(sem_mod, "PLAIN_WAIT", 0.2):
        assert g(1) is None
    assert f(2) == "ran"
    hold.release()


def test_async_functions(coord):
    @distributed_semaphore(limit=1, key="async:{n}", coordinator=coord, ttl=5, wait=20)
    async def f(n):
        token = current_slot().token
        await asyncio.sleep(0.2)
        return token

    async def main():
        return await asyncio.gather(f(1), f(1), f(1))

    tokens = asyncio.run(main())
    assert len(set(tokens)) == 3
    assert coord.inspect_semaphore("async:1")["holders"] == []


def test_a_task_without_a_slot_is_retried_with_a_countdown(coord):
    app = Celery("sem-retry", broker="memory://", backend="cache+memory://")
    hold = coord.semaphore("task:x", 1, session=coord.session(), owner="x")
    assert hold.acquire()
    ran = []

    @app.task(bind=True, name="sem.retry", shared=False, max_retries=3)
    @distributed_semaphore(limit=1, key="task:{name}", coordinator=coord, countdown=7)
    def task(self, name):
        ran.append(name)
        return name

    with mock.patch.object(task, "retry", side_effect=Retry("retry")) as retry:
        result = task.apply(args=("x",), throw=False)
    assert result.state == "RETRY"
    assert retry.call_args.kwargs["countdown"] == 7
    assert isinstance(retry.call_args.kwargs["exc"], SemaphoreNotAcquired)
    assert ran == []  # never ran without a slot
    hold.release()
    assert task.apply(args=("x",)).get() == "x"


def test_the_countdown_estimate_follows_observed_hold_times():
    times = HoldTimes()
    rng = random.Random(1)
    assert 0.5 <= times.countdown("k", 3, rng) <= 1.5  # nothing observed: the default, jittered
    for _ in range(20):
        times.record("k", 6.0)
    samples = [times.countdown("k", 3, rng) for _ in range(200)]
    assert min(samples) >= 1.0 and max(samples) <= 3.0  # 6 s / 3 slots, +-50%
    assert max(samples) - min(samples) > 1.0  # spread out, not one instant
    times.record("long", 10_000.0)
    assert times.countdown("long", 1, rng) == sem_mod.COUNTDOWN_BOUNDS[1]


def test_bad_arguments_fail_when_applied():
    with pytest.raises(LimitExceeded):
        distributed_semaphore(limit=0, key="k")
    with pytest.raises(LimitExceeded):
        distributed_semaphore(limit=-1, key="k")
    with pytest.raises(ValueError):
        distributed_semaphore(limit=1, key="k", on_conflict="maybe")
    with pytest.raises(LockKeyError):

        @distributed_semaphore(limit=1, key="k:{missing}")
        def f(n):
            pass
