"""``@distributed_lock`` on plain, async and Celery functions, against real node processes."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from celery import Celery

from coordination.celery.decorators import current_lock, distributed_lock
from coordination.celery.lock_option import LockedTask
from coordination.client import Coordinator
from coordination.exceptions import LockNotAcquired
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]


@pytest.fixture
def coord(coordination_cluster: LocalCluster):
    c = Coordinator(list(coordination_cluster.addresses.values()), coordination_cluster.secret)
    yield c
    c.close()


def _hold_in_thread(fn, *args, **kwargs) -> threading.Thread:
    """Start ``fn`` in a daemon thread (it signals and waits through its own events)."""
    t = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    t.start()
    return t


def test_key_from_bound_arguments_and_conflict_policies(coord):
    inside, leave = threading.Event(), threading.Event()

    @distributed_lock(key="report:{customer_id}", coordinator=coord, ttl=5)
    def report(customer_id, fmt="pdf"):
        inside.set()
        leave.wait(10)
        return fmt

    @distributed_lock(key="report:{customer_id}", coordinator=coord, ttl=5, on_conflict="skip")
    def report_or_skip(customer_id):
        return "ran"

    t = _hold_in_thread(report, 7)
    assert inside.wait(10)
    with pytest.raises(LockNotAcquired):  # keyword call: same key as report(7)
        report(customer_id=7)
    assert report_or_skip(7) is None  # skipped, logged
    assert report_or_skip(8) == "ran"  # another key runs in parallel
    leave.set()
    t.join(10)
    assert report(7, fmt="csv") == "csv"  # released after return
    assert coord.inspect_lock("report:7")["holders"] == []


def test_waiting_callers_run_one_after_the_other_with_fencing_tokens(coord):
    seen: list[int] = []
    active = [0]

    @distributed_lock(key="serial", coordinator=coord, ttl=5, wait=20)
    def critical():
        active[0] += 1
        assert active[0] == 1
        lock = current_lock()
        assert coord.check_token("serial", lock.token)
        seen.append(lock.token)
        time.sleep(0.05)
        active[0] -= 1

    threads = [threading.Thread(target=critical) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(seen) == 4 and seen == sorted(seen) and len(set(seen)) == 4
    assert current_lock() is None


def test_async_functions(coord):
    @distributed_lock(key="async:{n}", coordinator=coord, ttl=5, wait=10)
    async def job(n):
        assert coord.check_token(f"async:{n}", current_lock().token)
        await asyncio.sleep(0.05)
        return n * 2

    async def main():
        return await asyncio.gather(job(1), job(1), job(2))

    assert asyncio.run(main()) == [2, 2, 4]
    assert coord.inspect_lock("async:1")["holders"] == []


@pytest.mark.parametrize("order", ["lock-inside-task", "lock-outside-task"])
def test_celery_tasks_in_either_order_retry_on_conflict(coord, order):
    app = Celery(f"locks-{order}", broker="memory://", backend="cache+memory://")
    held = threading.Event()
    leave = threading.Event()
    attempts = [0]

    def body(self, name):
        assert current_lock() is not None
        attempts[0] += 1
        if name == "slow":
            held.set()
            leave.wait(10)
        return name

    lock = distributed_lock(key="celery:{order}", coordinator=coord, ttl=5)
    if order == "lock-inside-task":
        task = app.task(bind=True, name=f"order.{order}", shared=False)(lock(_with_order(body)))
    else:
        task = lock(app.task(bind=True, name=f"order.{order}", shared=False)(_with_order(body)))
    t = threading.Thread(target=lambda: task.apply(args=("slow", "x")), daemon=True)
    t.start()
    assert held.wait(10)
    calls_before = attempts[0]
    result = task.apply(args=("fast", "x"), throw=False)
    # Lock busy: the task retried (eager mode runs retries at once, so with the lock still
    # held they are used up, and the task fails with the reason).
    assert result.state == "FAILURE" and isinstance(result.result, LockNotAcquired)
    assert attempts[0] == calls_before  # the body never ran without the lock
    leave.set()
    t.join(10)
    assert task.apply(args=("fast", "x")).get() == "fast"


def _with_order(body):
    def task_body(self, name, order):
        return body(self, name)

    return task_body


def test_as_a_celery_task_option(coord):
    app = Celery("locks-option", broker="memory://", backend="cache+memory://")

    @app.task(
        base=LockedTask,
        bind=True,
        distributed_lock={"key": "option:{name}", "coordinator": coord, "ttl": 5},
    )
    def fenced(self, name):
        return current_lock().token

    token = fenced.apply(args=("a",)).get()
    assert token > 0 and fenced.apply(kwargs={"name": "a"}).get() > token  # same key, new grant
    with coord.lock("option:a", wait=0, session=coord.session(5)) as held:
        assert held.token
        busy = fenced.apply(args=("a",), throw=False)
        assert busy.state == "FAILURE" and isinstance(busy.result, LockNotAcquired)
        assert fenced.apply(args=("b",)).get() > 0  # another key is free


@pytest.mark.parametrize("style", ["app.task", "shared_task", "after_finalize", "plain_base"])
def test_the_task_option_works_on_an_app_without_locked_task(coord, style):
    """An app made without ``task_cls`` (as Celery's Django guide writes it): the option still
    takes the lock, whether the task comes from ``@app.task``, ``@shared_task``, after the app was
    finalized, or with a ``base=`` of plain ``celery.Task`` (its ``run`` is wrapped in place)."""
    from celery import Task, shared_task

    app = Celery(f"plain-{style}", broker="memory://", backend="cache+memory://")
    option = {"key": f"plain-{style}:{{name}}", "coordinator": coord, "ttl": 5}

    def body(name):
        return current_lock().token if current_lock() is not None else None

    if style == "app.task":
        task = app.task(name=f"t.{style}", shared=False, distributed_lock=option)(body)
    elif style == "shared_task":
        task = shared_task(name=f"t.{style}", distributed_lock=option)(body)
        task = app.tasks[f"t.{style}"]
    elif style == "after_finalize":
        app.finalize()
        task = app.task(name=f"t.{style}", shared=False, distributed_lock=option)(body)
    else:

        class Plain(Task):
            pass

        task = app.task(name=f"t.{style}", shared=False, base=Plain, distributed_lock=option)(body)
        app.finalize()
    token = task.apply(args=("a",)).get()
    assert isinstance(token, int) and token > 0
    assert coord.inspect_lock(f"plain-{style}:a")["holders"] == []  # released after the run
