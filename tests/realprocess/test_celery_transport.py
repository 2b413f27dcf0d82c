"""Celery on the ``raft://`` transport with worker processes against real node processes: the
faults (a worker killed with SIGKILL mid-task). The transport's semantics (publish, ack, reject,
redelivery, priorities, fanout, in-thread workers) are tested faster over an in-process cluster:
``tests/celery/test_raft_transport_inprocess.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection, Consumer, Exchange
from kombu import Queue as KombuQueue

from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]


def _app(cluster: LocalCluster, name: str) -> Celery:
    url = ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())
    app = Celery(name, broker=url, backend="cache+memory://")
    app.conf.broker_transport_options = {"secret": cluster.secret, "visibility_timeout": 60}
    app.conf.task_acks_late = True
    app.conf.worker_prefetch_multiplier = 1
    return app


def _worker(cluster: LocalCluster, markers, sleep: float) -> subprocess.Popen:
    env = {
        **os.environ,
        "RAFTSYNC_TEST_BROKER": ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values()),
        "RAFTSYNC_TEST_SECRET": cluster.secret,
        "RAFTSYNC_TEST_MARKERS": str(markers),
        "RAFTSYNC_TEST_SLEEP": str(sleep),
    }
    cmd = [sys.executable, "-m", "celery", "-A", "tests.realprocess.celery_kill_app", "worker"]
    cmd += ["--pool", "solo", "--loglevel", "WARNING", "-Q", "killq", "--without-heartbeat"]
    return subprocess.Popen(cmd, env=env, cwd=Path(__file__).parents[2])


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_task_of_a_worker_killed_with_sigkill_is_redelivered(coordination_cluster, tmp_path):
    """acks_late + kill -9 mid-task: the task runs again on another worker, and is done once."""
    app = _app(coordination_cluster, "raft-kill")
    app.send_task("kill_test.slow", args=("job-1",), queue="killq")
    first = _worker(coordination_cluster, tmp_path, sleep=600)
    second = None
    try:
        assert _wait_for(lambda: len(_lines(tmp_path / "started")) == 1, 60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = _worker(coordination_cluster, tmp_path, sleep=0)
        assert _wait_for(lambda: _lines(tmp_path / "done"), 60), "task was not redelivered"
        time.sleep(1)
        starts, done = _lines(tmp_path / "started"), _lines(tmp_path / "done")
        assert [s.split()[0] for s in starts] == ["job-1", "job-1"]
        assert len(done) == 1 and done[0].split()[1] == str(second.pid)
        with app.connection() as conn:
            assert _wait_for(
                lambda: conn.default_channel.coord.queue("killq").stats()["in_flight"] == 0, 10
            )
    finally:
        for proc in (first, second):
            if proc and proc.poll() is None:
                proc.terminate()
                proc.wait(15)


def _url(cluster: LocalCluster) -> str:
    return ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())


def test_a_redelivered_message_says_so_in_its_delivery_info(coordination_cluster):
    """Celery reads ``delivery_info["redelivered"]`` (``Reject(requeue=True)`` handling,
    ``worker_deduplicate_successful_tasks``); kombu's own transports set it there."""
    options = {"secret": coordination_cluster.secret, "polling_wait": 2.0}
    with Connection(_url(coordination_cluster), transport_options=options) as conn:
        queue = conn.SimpleQueue("redeliveredq")
        queue.put({"n": 1})
        first = queue.get(timeout=10)
        assert not first.delivery_info.get("redelivered")
        first.requeue()  # basic_reject(requeue=True): a nack, delivered again
        again = queue.get(timeout=10)
        assert again.payload == {"n": 1}
        assert again.delivery_info["redelivered"] is True
        again.ack()
        queue.close()


def test_a_broadcast_sent_before_a_task_reaches_a_waiting_consumer_first(coordination_cluster):
    """A worker's control channel (fanout, no_ack) and task channel share one connection. The
    consumer is blocked waiting when a broadcast and then a task are published: one wait over
    both queues is woken by the broadcast, so it is delivered first (a ``revoke`` sent before
    its task wins). Waiting on the task queue alone would take the task first. The broadcast,
    consumed with no_ack, is acked as fetched: nothing stays leased to come back later."""
    options = {"secret": coordination_cluster.secret, "polling_wait": 5.0}
    url = _url(coordination_cluster)
    tasks_x = Exchange("pushq", type="direct")
    fanout_x = Exchange("pushq.fanout", type="fanout")
    got: list[str] = []
    with Connection(url, transport_options=options) as conn:
        task_consumer = Consumer(
            conn.channel(),
            [KombuQueue("pushq", tasks_x, routing_key="pushq")],
            callbacks=[lambda body, message: (got.append(body), message.ack())],
        )
        control_consumer = Consumer(
            conn.channel(),
            [KombuQueue("pushq.control", fanout_x)],
            no_ack=True,
            callbacks=[lambda body, message: got.append(body)],
        )
        with task_consumer, control_consumer:
            for round_ in range(3):

                def publish(round_: int = round_) -> None:
                    time.sleep(0.5)  # the consumer is blocked in its wait by now
                    with Connection(url, transport_options=options) as producer_conn:
                        producer = producer_conn.Producer()
                        producer.publish(
                            f"broadcast-{round_}", exchange=fanout_x, declare=[fanout_x]
                        )
                        producer.publish(f"task-{round_}", exchange=tasks_x, routing_key="pushq")

                thread = threading.Thread(target=publish)
                thread.start()
                deadline = time.monotonic() + 10
                while len(got) < 2 * (round_ + 1) and time.monotonic() < deadline:
                    conn.drain_events(timeout=deadline - time.monotonic())
                thread.join()
            assert got == [f"{kind}-{i}" for i in range(3) for kind in ("broadcast", "task")]
            stats = control_consumer.channel.coord.queue("pushq.control").stats
            assert _wait_for(lambda: stats()["in_flight"] == 0 and stats()["ready"] == 0, 10)
