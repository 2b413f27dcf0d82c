"""``@rate_limit`` on plain, async and Celery functions against real node processes: keys from
bound arguments, blocking acquire with a timeout, and a task over the limit re-sent with the
bucket's countdown without counting against ``max_retries`` (the worker's side of it is the
acceptance test in ``test_ratelimit_celery.py``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from unittest import mock

import pytest
from celery import Celery
from celery._state import _task_stack
from celery.canvas import Signature
from celery.exceptions import Retry

from coordination.celery.ratelimit import rate_limit
from coordination.client import Coordinator
from coordination.exceptions import InvalidRate, LockKeyError, RateLimited
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]


@pytest.fixture
def coord(coordination_cluster: LocalCluster):
    c = Coordinator(list(coordination_cluster.addresses.values()), coordination_cluster.secret)
    yield c
    c.close()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]


def test_a_plain_function_blocks_for_its_token_and_keys_come_from_bound_arguments(coord, uid):
    @rate_limit("10/s", key=f"{uid}:{{account}}", burst=2, coordinator=coord)
    def sync(account, full=False):
        return account

    started = time.monotonic()
    assert [sync("a"), sync(account="a"), sync("a", True)] == ["a"] * 3  # one bucket
    assert time.monotonic() - started >= 0.08  # the third waited ~100 ms for its token
    assert sync("b") == "b" and coord.rate_limit(f"{uid}:b", "10/s", 2).inspect()["tokens"] < 2


def test_a_timeout_raises_rate_limited_with_the_countdown(coord, uid):
    @rate_limit("1/h", key=uid, burst=1, timeout=0.5, coordinator=coord)
    def once():
        return "ran"

    assert once() == "ran"
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        once()
    assert time.monotonic() - started < 0.5  # no point sleeping an hour's wait
    assert info.value.key == uid and 3500 < info.value.retry_after <= 3600


def test_async_functions_wait_without_blocking_the_loop(coord, uid):
    @rate_limit("20/s", key=uid, burst=1, coordinator=coord)
    async def fetch(i):
        return i

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        results = [await fetch(i) for i in range(4)]
        t.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    assert results == [0, 1, 2, 3] and ticks >= 5  # ~150 ms of waits; the loop kept running


def test_bad_rates_and_key_templates_fail_when_decorating():
    with pytest.raises(InvalidRate):
        rate_limit("0/s")
    with pytest.raises(InvalidRate):
        rate_limit("10/fortnight")
    with pytest.raises(LockKeyError, match="rate limit key template"):

        @rate_limit("1/s", key="x:{nope}")
        def f(account):
            pass


def test_a_task_over_the_limit_is_resent_with_the_countdown_and_keeps_its_retries(coord, uid):
    app = Celery("rl-unit", broker="memory://")
    runs = []

    @app.task(bind=True, max_retries=0, shared=False)  # a counted retry: MaxRetriesExceeded
    @rate_limit("2/s", key=uid, burst=1, coordinator=coord)
    def job(self, i):
        runs.append(i)

    sent = []
    with mock.patch.object(Signature, "apply_async", lambda sig, *a, **k: sent.append(sig)):
        # As a worker's tracer runs it: on the task stack, with a worker's request.
        _task_stack.push(job)
        job.push_request(called_directly=False, is_eager=False, retries=3, id="t1", args=[1])
        try:
            job.run(1)  # a token: it runs
            with pytest.raises(Retry) as info:
                job.run(2)  # none left: re-sent, not run
        finally:
            job.pop_request()
            _task_stack.pop()
    assert runs == [1]
    assert isinstance(info.value.exc, RateLimited) and 0.4 < info.value.when <= 0.5
    (again,) = sent
    assert again.options["countdown"] == info.value.when  # the bucket's countdown
    assert again.options["retries"] == 3  # unchanged: rate-limit waits are not counted
    assert again.options["task_id"] == "t1"


def test_an_eager_task_blocks_instead_of_retrying(coord, uid):
    app = Celery("rl-eager", broker="memory://")

    @app.task(rate_limit=None, shared=False)
    @rate_limit("10/s", key=uid, burst=1, coordinator=coord)
    def job(i):
        return i

    started = time.monotonic()
    assert [job.apply(args=(i,)).get() for i in range(3)] == [0, 1, 2]
    assert time.monotonic() - started >= 0.15  # two waits of ~100 ms
