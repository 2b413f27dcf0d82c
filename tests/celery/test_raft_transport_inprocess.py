"""The ``raft://`` kombu transport's semantics, over an in-process cluster (``inprocess_cluster``:
real nodes and TCP inside this process), so they run in seconds: publish, consume, ack, reject,
redelivery, priorities, delayed delivery, fanout, and Celery workers on top. What needs real
processes (a worker killed with SIGKILL, the leader killed) stays in
``tests/realprocess/test_celery_transport.py`` and ``test_celery_worker.py``."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Connection, Exchange, Queue
from kombu.simple import SimpleQueue

import coordination  # noqa: F401  (registers raft:// with kombu)
from coordination.primitives.queues_put import MSG_ID_STRIDE
from raft_node.testing.inprocess import InProcessCluster

pytestmark = pytest.mark.timeout(120)


def _url(cluster: InProcessCluster) -> str:
    return ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())


def _options(cluster: InProcessCluster, **options: Any) -> dict[str, Any]:
    return {"secret": cluster.secret, "polling_wait": 0.2, **options}


@pytest.fixture
def connect(inprocess_cluster: InProcessCluster) -> Iterator[Callable[..., Connection]]:
    """``connect(**transport_options)``: a kombu connection (closed after the test)."""
    opened: list[Connection] = []

    def make(**options: Any) -> Connection:
        conn = Connection(
            _url(inprocess_cluster), transport_options=_options(inprocess_cluster, **options)
        )
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.release()


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def stats(conn: Connection, queue: str) -> dict[str, Any]:
    return conn.default_channel.coord.queue(queue).stats()


# -- kombu --------------------------------------------------------------------------------------


def test_published_messages_are_consumed_in_order_and_an_ack_removes_them(connect):
    conn = connect()
    queue = conn.SimpleQueue("k-basic")
    for n in range(3):
        queue.put({"n": n})
    got = [queue.get(timeout=5) for _ in range(3)]
    assert [m.payload for m in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert stats(conn, "k-basic")["in_flight"] == 3  # leased, not yet acked
    for message in got:
        message.ack()
    until(lambda: stats(conn, "k-basic")["depth"] == 0)  # acks are sent in batches, later
    with pytest.raises(queue.Empty):
        queue.get(timeout=0.3)
    queue.close()


def test_publishing_threads_share_entries_and_keep_each_thread_s_order(connect):
    """Threads of one process, a connection each (kombu's producer pool), publish at once: the
    puts made while one commits share the next entry (``put_combiner``), and each thread's
    messages keep the order it sent them in."""
    conns = [connect() for _ in range(8)]
    queues = [conn.SimpleQueue("k-threads") for conn in conns]
    start = threading.Barrier(len(queues))

    def publish(t: int) -> None:
        start.wait()
        for n in range(25):
            queues[t].put({"t": t, "n": n})

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(len(queues))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    rows = conns[0].default_channel.coord.queue("k-threads").peek(1_000)
    assert len(rows) == 200
    sent = {}  # id -> (thread, n), from the message kombu stored (its body base64-encoded)
    for row in rows:
        body = json.loads(base64.b64decode(json.loads(row["payload"])["body"]))
        sent[row["id"]] = (body["t"], body["n"])
    entries = {mid // MSG_ID_STRIDE if mid >= MSG_ID_STRIDE else mid for mid in sent}
    assert len(entries) < len(sent)  # at least one entry carried several threads' puts
    for t in range(len(queues)):
        mine = [n for mid, (who, n) in sorted(sent.items()) if who == t]
        assert mine == list(range(25))
    for queue in queues:
        queue.close()


def test_unconfirmed_publishes_arrive_in_order_and_close_sends_what_is_still_waiting(connect):
    """``confirm_publish=False``: a publish returns before its put commits; the channel's
    pipeline sends them in order, batched, and closing the channel sends what is left. Each put
    is counted in Prometheus once the cluster answered it."""
    prometheus = pytest.importorskip("prometheus_client")
    labels = {"queue": "k-unconfirmed", "outcome": "queued"}

    def queued() -> float:
        counter = "raftsync_unconfirmed_publishes_total"
        return prometheus.REGISTRY.get_sample_value(counter, labels) or 0.0

    before = queued()
    publisher = connect(confirm_publish=False)
    channel = publisher.default_channel
    queue = publisher.SimpleQueue("k-unconfirmed")
    for n in range(300):
        queue.put({"n": n})
    assert channel._pipeline is not None
    publisher.release()  # closes the channel: its pipeline flushes first
    assert channel._pipeline.sent == 300 and channel._pipeline.failed == 0
    assert queued() - before == 300
    consumer = connect()
    rows = consumer.default_channel.coord.queue("k-unconfirmed").peek(1_000)
    bodies = [json.loads(base64.b64decode(json.loads(r["payload"])["body"])) for r in rows]
    assert [b["n"] for b in bodies] == list(range(300))
    entries = {r["id"] // MSG_ID_STRIDE if r["id"] >= MSG_ID_STRIDE else r["id"] for r in rows}
    assert len(entries) < 300 // 2  # batched


def test_a_requeued_message_comes_back_marked_redelivered_and_a_rejected_one_is_dead_lettered(
    connect,
):
    conn = connect()
    queue = conn.SimpleQueue("k-reject")
    queue.put({"job": 1})
    first = queue.get(timeout=5)
    assert not first._raw.get("redelivered")
    first.requeue()  # basic_reject(requeue=True): a nack
    again = queue.get(timeout=5)
    assert again.payload == {"job": 1} and again._raw.get("redelivered") is True
    again.reject()  # requeue=False: to the dead-letter queue
    until(lambda: stats(conn, "k-reject.dlq")["ready"] == 1)
    assert stats(conn, "k-reject")["depth"] == 0
    queue.close()


def test_what_a_closed_consumer_never_acked_is_delivered_to_the_next(connect):
    consumer, other = connect(), connect()
    queue = consumer.SimpleQueue("k-closed")
    queue.put({"job": "a"})
    assert queue.get(timeout=5).payload == {"job": "a"}  # leased, never acked
    queue.close()
    consumer.release()  # its session ends: the lease ends with it
    again = other.SimpleQueue("k-closed").get(timeout=5)
    assert again.payload == {"job": "a"} and again._raw.get("redelivered") is True
    again.ack()


def test_a_lease_that_runs_out_is_delivered_again_while_its_holder_still_runs(connect):
    slow, fast = connect(visibility_timeout=1.0), connect()  # the shortest lease
    slow.SimpleQueue("k-lease").put({"job": "x"})
    held = slow.SimpleQueue("k-lease").get(timeout=5)
    again = fast.SimpleQueue("k-lease").get(timeout=5)  # after the 1 s lease, not before
    assert again.payload == held.payload and again._raw.get("redelivered") is True
    again.ack()
    held.ack()  # too late: that lease is gone (ignored, no error)
    until(lambda: stats(fast, "k-lease")["depth"] == 0)


def test_higher_priority_messages_are_delivered_first(connect):
    conn = connect()
    exchange = Exchange("k-prio", type="direct")
    queue = Queue("k-prio", exchange, routing_key="k-prio")
    producer = conn.Producer()
    for priority in (1, 5, 9, 0, 9):
        producer.publish(
            {"p": priority}, exchange=exchange, routing_key="k-prio", declare=[queue],
            priority=priority,
        )  # fmt: skip
    simple = SimpleQueue(conn.default_channel, queue)
    got = [simple.get(timeout=5) for _ in range(5)]
    assert [m.payload["p"] for m in got] == [9, 9, 5, 1, 0]
    for message in got:
        message.ack()


def test_a_message_with_an_eta_is_held_back_until_due(connect):
    conn = connect()
    queue = conn.SimpleQueue("k-eta")
    eta = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    sent = time.monotonic()
    queue.put({"later": True}, headers={"eta": eta})
    assert stats(conn, "k-eta")["delayed"] == 1
    message = queue.get(timeout=10)
    assert message.payload == {"later": True} and time.monotonic() - sent >= 1.0
    message.ack()


def test_fanout_reaches_every_bound_queue_of_every_connection_once(connect):
    exchange = Exchange("k-fan", type="fanout")
    listeners = []
    for name in ("k-fan-a", "k-fan-b"):
        conn = connect()
        queue = Queue(name, exchange)
        queue(conn.default_channel).declare()  # binds, shared through the cluster
        listeners.append(SimpleQueue(conn.default_channel, queue))
    publisher = connect()
    publisher.Producer().publish({"to": "all"}, exchange=exchange, routing_key="")
    for listener in listeners:
        message = listener.get(timeout=5)
        assert message.payload == {"to": "all"}
        message.ack()
        with pytest.raises(listener.Empty):
            listener.get(timeout=0.3)


def test_messages_pushed_to_a_consumer_cancelled_meanwhile_go_back_to_the_queue(connect):
    conn = connect()
    got: list[Any] = []
    consumer = conn.Consumer([Queue("k-gone")], callbacks=[lambda body, msg: got.append(body)])
    consumer.consume()
    transport = conn.transport
    transport._prepare()  # subscribed, with room
    producer = conn.Producer()
    for n in range(2):
        producer.publish({"n": n}, routing_key="k-gone")
    until(lambda: len(transport.inbox._rows) == 2)  # leased and pushed, not delivered yet
    consumer.cancel()
    transport._prepare()  # unsubscribed
    conn.drain_events(timeout=1)
    assert got == []
    until(lambda: stats(conn, "k-gone")["ready"] == 2 and stats(conn, "k-gone")["in_flight"] == 0)


# -- Celery workers on the transport --------------------------------------------------------------


def _app(cluster: InProcessCluster, name: str, **options: Any) -> Celery:
    app = Celery(name, broker=_url(cluster), backend="cache+memory://")
    app.conf.broker_transport_options = _options(cluster, visibility_timeout=60, **options)
    app.conf.task_acks_late = True
    app.conf.worker_prefetch_multiplier = 1
    return app


def test_tasks_run_through_the_replicated_queue(inprocess_cluster):
    app = _app(inprocess_cluster, "raft-basic")

    @app.task
    def add(x, y):
        return x + y

    with start_worker(
        app, perform_ping_check=False, pool="solo", loglevel="WARNING", queues=["c-basic"]
    ):
        results = [add.apply_async((i, i), queue="c-basic") for i in range(30)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(30)]
    with app.connection() as conn:
        until(lambda: stats(conn, "c-basic")["depth"] == 0)  # everything acked


def test_higher_priority_tasks_run_first(inprocess_cluster):
    app = _app(inprocess_cluster, "raft-priority")
    order: list[int] = []

    @app.task
    def record(priority):
        order.append(priority)

    for priority in (1, 5, 9, 0, 9):
        record.apply_async(args=(priority,), priority=priority, queue="c-prio")
    with start_worker(
        app, perform_ping_check=False, pool="solo", loglevel="WARNING", queues=["c-prio"]
    ):
        until(lambda: len(order) == 5, timeout=30)
    assert order == [9, 9, 5, 1, 0]


def test_a_worker_of_several_queues_gets_each_queue_s_tasks_at_once(inprocess_cluster):
    """One subscription covers both queues: a task in ``qb`` is pushed as soon as it is
    committed, whichever queue had the last one (a worker taking its queues in turn, with a
    6 s wait on each, would leave it waiting for up to 6 s)."""
    app = _app(inprocess_cluster, "raft-multi", polling_wait=6.0)
    seen: list[str] = []

    @app.task
    def mark(tag):
        seen.append(tag)

    with app.connection() as conn:
        subscribed = lambda: all(  # noqa: E731
            stats(conn, q)["subscribers"] == 1 for q in ("c-qa", "c-qb")
        )
        with start_worker(
            app,
            perform_ping_check=False,
            pool="solo",
            loglevel="WARNING",
            queues=["c-qa", "c-qb"],
        ):
            until(subscribed)  # the worker's one subscription names both queues
            for i, queue in enumerate(["c-qb", "c-qa", "c-qb", "c-qb"]):
                mark.apply_async(args=(f"{queue}-{i}",), queue=queue)
                until(lambda i=i: len(seen) == i + 1, timeout=3.0)  # not after a 6 s wait
            assert stats(conn, "c-qa")["consumers_waiting"] == 0  # no blocking get at all
    assert seen == ["c-qb-0", "c-qa-1", "c-qb-2", "c-qb-3"]
