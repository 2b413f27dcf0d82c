"""Celery on the ``raft://`` transport, with a real worker, against real node processes."""

from __future__ import annotations

import time

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from coordination.celery_transport import register
from raft_node.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess, pytest.mark.xdist_group("realprocess")]


def _app(cluster: LocalCluster, name: str) -> Celery:
    register()
    url = ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())
    app = Celery(name, broker=url, backend="cache+memory://")
    app.conf.broker_transport_options = {"secret": cluster.secret, "visibility_timeout": 60}
    app.conf.task_acks_late = True
    app.conf.worker_prefetch_multiplier = 1
    return app


def test_tasks_run_through_the_replicated_queue(coordination_cluster):
    app = _app(coordination_cluster, "raft-basic")

    @app.task
    def add(x, y):
        return x + y

    with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"):
        results = [add.delay(i, i) for i in range(30)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(30)]
    with app.connection() as conn:
        stats = conn.default_channel.coord.queue("celery").stats()
    assert stats["in_flight"] == 0 and stats["ready"] == 0  # everything acked


def test_higher_priority_tasks_run_first(coordination_cluster):
    app = _app(coordination_cluster, "raft-priority")
    order: list[int] = []

    @app.task
    def record(priority):
        order.append(priority)

    for priority in (1, 5, 9, 0, 9):
        record.apply_async(args=(priority,), priority=priority, queue="prio")
    with start_worker(
        app, perform_ping_check=False, pool="solo", loglevel="WARNING", queues=["prio"]
    ):
        deadline = time.monotonic() + 30
        while len(order) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert order == [9, 9, 5, 1, 0]
