"""``@once`` on a non-``raft://`` broker (Redis) with a real worker: the fallback lock
``once:<key>``, taken by the producer in its session and released by the worker when the task
ends (``coordination.celery.once_fallback``). The ``raft://`` path is in test_celery_once.py."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery

import coordination.client.operations as ops
from coordination.celery.once import once
from coordination.client import Coordinator
from coordination.exceptions import AlreadyQueued
from tests.realprocess import test_celery_worker as cw
from tests.realprocess.test_celery_once import _concurrently, _events

pytestmark = [pytest.mark.realprocess]
REDIS_URL = "redis://127.0.0.1:6379/14"
THREADS = 20


@pytest.fixture
def coord(coordination_cluster):
    addresses = list(coordination_cluster.addresses.values())
    with Coordinator(addresses, coordination_cluster.secret) as coordinator:
        yield coordinator


def test_concurrent_delays_on_redis_run_once_and_the_worker_frees_the_key(
    coordination_cluster, coord, tmp_path
):
    queue = f"once-fallback-{uuid.uuid4().hex[:8]}"
    app = Celery("once-redis", broker=REDIS_URL, set_as_current=False)
    app.conf.task_default_queue = queue

    @once(key="once:{customer}", on_duplicate="raise", coordinator=coord)
    @app.task(name="once_test.report", shared=False)
    def report(customer: str, tag: str, seconds: float) -> None:
        raise AssertionError("runs in the worker")

    worker = cw._worker(
        coordination_cluster, tmp_path, queues=queue, RAFTSYNC_CELERY_BROKER_URL=REDIS_URL
    )
    try:
        cw._wait_for(lambda: len(cw._worker_sessions(coord, worker)) == 3, 60, "worker start")
        got = _concurrently(lambda: report.delay("c-redis", "redis", 1.0), THREADS)
        sent = [r for r in got if not isinstance(r, Exception)]
        refused = [r for r in got if isinstance(r, AlreadyQueued)]
        assert len(sent) == 1 and len(refused) == THREADS - 1, got
        assert {r.task_id for r in refused} == {sent[0].id}
        lock = "once:once:c-redis"
        holders = lambda: coord.run(ops.lock_inspect(lock))["holders"]  # noqa: E731
        assert [h["owner"] for h in holders()] == [sent[0].id]
        cw._wait_for(lambda: _events(tmp_path, "end", "redis"), 30, "the task to end")
        cw._wait_for(lambda: not holders(), 5, "the worker to release the key")
        again = report.delay("c-redis", "again", 0.1)  # accepted: the key is free
        cw._wait_for(lambda: _events(tmp_path, "end", "again"), 30, "the next task to run")
        assert again.id != sent[0].id
        counts = {t: len(_events(tmp_path, "start", t)) for t in ("redis", "again")}
        assert counts == {"redis": 1, "again": 1}
    finally:
        cw._stop(worker)
