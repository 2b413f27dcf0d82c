"""``@once`` and held-key puts over an in-process cluster (no workers: what a producer sees).
What needs real workers (a task run once for 50 concurrent sends, a killed worker's task, a
revoked task) is in ``tests/realprocess/test_celery_once.py``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

import coordination  # noqa: F401  (registers raft:// with kombu)
import coordination.client.operations as ops
from coordination.celery.once import ONCE_HEADER, held_key, once
from coordination.client import Coordinator
from coordination.client.aio import AsyncCoordinator
from coordination.exceptions import AlreadyQueued, LimitExceeded, LockKeyError
from raft_node.testing.inprocess import InProcessCluster

pytestmark = pytest.mark.timeout(60)


def _app(cluster: InProcessCluster, name: str) -> Celery:
    url = ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())
    app = Celery(name, broker=url, set_as_current=False)
    app.conf.broker_transport_options = {"secret": cluster.secret}
    app.conf.task_default_queue = f"{name}-q"
    return app


@pytest.fixture
def coord(inprocess_cluster: InProcessCluster):
    with Coordinator(list(inprocess_cluster.addresses.values()), inprocess_cluster.secret) as c:
        yield c


def test_put_with_a_held_key_returns_the_first_tag_until_the_message_is_gone(coord) -> None:
    q = coord.queue("held-client")
    first = q.put(b"a", hold_key="k", tag="t1")
    assert (first.duplicate, first.tag) == (False, None)
    again = q.put(b"b", hold_key="k", tag="t2")
    assert (int(again), again.duplicate, again.tag) == (int(first), True, "t1")
    assert q.purge() == 1
    assert q.put(b"c", hold_key="k", tag="t3").duplicate is False


def test_asyncio_put_with_a_held_key(inprocess_cluster: InProcessCluster) -> None:
    async def run() -> tuple[Any, Any]:
        addresses = list(inprocess_cluster.addresses.values())
        async with AsyncCoordinator(addresses, inprocess_cluster.secret) as c:
            q = c.queue("held-aio")
            return await q.put(b"a", hold_key="k", tag="t1"), await q.put(b"b", hold_key="k")

    first, again = asyncio.run(run())
    assert int(again) == int(first) and again.duplicate and again.tag == "t1"


def test_return_policy_gives_the_queued_task_and_raise_policy_raises(
    inprocess_cluster: InProcessCluster, coord
) -> None:
    ret, rai = _app(inprocess_cluster, "once-a"), _app(inprocess_cluster, "once-a")

    @once(key="r:{n}")
    @ret.task(name="once.job", shared=False)
    def job(n: int, extra: str = "") -> None: ...

    @once(key="r:{n}", on_duplicate="raise")
    @rai.task(name="once.job", shared=False)
    def job_raise(n: int, extra: str = "") -> None: ...

    assert job.acks_late is True  # the key must outlive the delivery
    first = job.delay(1)
    assert job.delay(n=1, extra="x").id == first.id  # bound arguments: same key
    assert job.delay(2).id != first.id
    with pytest.raises(AlreadyQueued) as info:
        job_raise.delay(1)
    assert info.value.task_id == first.id and info.value.key == "r:1"
    retried = job.apply_async((1,), task_id=first.id, retries=1)  # what retry() sends
    assert retried.id == first.id  # queued, not swallowed as a duplicate of itself
    assert coord.queue("once-a-q").stats()["depth"] == 3
    coord.queue("once-a-q").purge()
    assert job.delay(1).id != first.id  # purge freed it


def test_send_task_by_name_is_keyed_by_the_publish_signal(
    inprocess_cluster: InProcessCluster, coord
) -> None:
    app = _app(inprocess_cluster, "once-b")
    app.set_current()

    @once(key="s:{n}")
    @app.task(name="once.by_name", shared=False)
    def by_name(n: int) -> None: ...

    first = app.send_task("once.by_name", args=(5,))
    with pytest.raises(AlreadyQueued):  # no hook on send_task: the typed error itself
        app.send_task("once.by_name", args=(5,))
    assert by_name.delay(5).id == first.id


def test_bad_options_fail_when_written_or_sent(inprocess_cluster: InProcessCluster) -> None:
    app = _app(inprocess_cluster, "once-c")
    with pytest.raises(ValueError, match="on_duplicate"):
        once(key="k:{n}", on_duplicate="skip")
    with pytest.raises(LockKeyError, match="nope"):

        @once(key="k:{nope}")
        @app.task(name="once.typo", shared=False)
        def typo(n: int) -> None: ...

    @once(key="k:{n}")
    @app.task(name="once.long", shared=False)
    def long_key(n: str) -> None: ...

    with pytest.raises(LimitExceeded):
        long_key.delay("x" * 300)


def test_other_brokers_hold_a_session_lock_until_the_worker_ends_the_task(coord) -> None:
    """memory:// stands for Redis/RabbitMQ: the lock fallback, with a real (threaded) worker."""
    memory = Celery("once-mem", broker="memory://", set_as_current=False)
    memory.conf.task_default_queue = "once-mem-q"
    ran: list[int] = []
    gate = threading.Event()

    @once(key="m:{n}", coordinator=coord)
    @memory.task(name="once.memory", shared=False)
    def elsewhere(n: int) -> None:
        gate.wait(10)
        ran.append(n)

    def holders() -> list[str]:
        return [h["owner"] for h in coord.run(ops.lock_inspect("once:m:1"))["holders"]]

    first = elsewhere.delay(1)
    assert holders() == [first.id]  # owned by the task id, in the producer's session
    assert elsewhere.delay(1).id == first.id
    elsewhere.once = {**elsewhere.once, "on_duplicate": "raise"}
    with pytest.raises(AlreadyQueued) as info:
        elsewhere.delay(n=1)
    assert info.value.task_id == first.id
    elsewhere.once = {**elsewhere.once, "on_duplicate": "return"}
    # what retry() sends from a worker (another thread: another session) is queued, not taken
    # for a duplicate of the run that is retrying (the lock is that run's) and dropped
    retry = threading.Thread(target=elsewhere.apply_async, args=((1,),), kwargs={"retries": 1})
    retry.start()
    retry.join(10)
    with start_worker(memory, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        gate.set()
        deadline = time.monotonic() + 10
        while holders():  # task_postrun in the worker releases it for the producer
            assert time.monotonic() < deadline, "the worker never released the key"
            time.sleep(0.02)
    assert ran == [1, 1]
    assert elsewhere.delay(1).id != first.id  # free again


def test_held_key_header_rules() -> None:
    assert held_key({}) is None
    assert held_key({ONCE_HEADER: "k", "id": "t", "retries": 0}) == ("k", "t")
    assert held_key({ONCE_HEADER: "k", "id": "t", "retries": 1}) is None  # a retry
    with pytest.raises(LockKeyError, match="boom"):
        held_key({ONCE_HEADER: {"error": "boom"}, "id": "t"})
