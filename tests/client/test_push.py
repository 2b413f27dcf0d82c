"""Following a push stream (``coordination.client.push``): the sans-I/O cursor (what it asks for,
what it hands out across reconnects), and ``PushStream`` on an in-process cluster: messages
arrive as they are committed, and a leadership change loses and repeats none."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

import coordination.client.operations as ops
from coordination.client import Coordinator
from coordination.client.push import PushCursor, PushStream
from coordination.client.watch import Reconnect
from coordination.exceptions import BadRequest
from raft_node.testing.inprocess import InProcessCluster
from raft_node.transport import client_protocol as p
from raft_node.transport.codec import decode_payload


def _ok(value: Any) -> p.Response:
    return p.parse_response([1, p.OK, value, ""])


def _row(mid: int, leased_at: int, count: int = 1) -> dict[str, Any]:
    return {"id": mid, "queue": "q", "delivery_count": count, "sub": 7, "leased_at": leased_at}


def test_the_cursor_asks_for_what_was_leased_after_what_it_saw():
    cursor = PushCursor("s1")
    kind, _, topic, replay, options = decode_payload(cursor.request())
    assert (kind, topic, options) == (
        p.WATCH,
        "queue.push.s1",
        {"leader": True, "progress_ms": 1000},
    )
    assert msgpack.unpackb(replay) == ["queue.pushed", "s1", 0]
    assert cursor.on_response(_ok(["subscribed", 10, [_row(4, 4), _row(9, 9)]])) == [
        _row(4, 4),
        _row(9, 9),
    ]
    assert cursor.last_index == 10
    assert cursor.on_response(_ok(["event", 12, [_row(12, 12)]])) == [_row(12, 12)]
    assert cursor.on_response(_ok(["event", 12, [_row(12, 12)]])) == []  # sent twice
    assert cursor.on_response(_ok(["progress", 20])) == [] and cursor.last_index == 20
    assert msgpack.unpackb(decode_payload(cursor.request())[3]) == ["queue.pushed", "s1", 20]


def test_a_node_behind_the_stream_neither_moves_it_back_nor_repeats_what_it_sent():
    cursor = PushCursor("s1")
    cursor.on_response(_ok(["subscribed", 30, []]))
    # A new leader still applying: its replay and its first events are at or below 30.
    assert cursor.on_response(_ok(["subscribed", 25, [_row(28, 28), _row(31, 31)]])) == [
        _row(31, 31)
    ]
    assert cursor.last_index == 30
    assert cursor.on_response(_ok(["event", 29, [_row(29, 29)]])) == []
    assert cursor.on_response(_ok(["event", 31, [_row(31, 31, 2)]])) == [_row(31, 31, 2)]


def test_a_lost_leader_reconnects_with_its_hint_and_a_refusal_is_typed():
    cursor = PushCursor("s1")
    error = {"code": p.NOT_LEADER, "message": "m", "details": {}}
    with pytest.raises(Reconnect) as info:
        cursor.on_response(p.parse_response([1, p.ERR, p.NOT_LEADER, error, "h:7"]))
    assert info.value.hint == "h:7"
    bad = {"code": "bad_command", "message": "no", "details": {}}
    with pytest.raises(BadRequest):
        cursor.on_response(p.parse_response([1, p.ERR, p.REJECTED, bad, ""]))


# -- on a cluster -----------------------------------------------------------------------------


@pytest.fixture
def coord(inprocess_cluster: InProcessCluster) -> Iterator[Coordinator]:
    with Coordinator(list(inprocess_cluster.addresses.values()), inprocess_cluster.secret) as c:
        yield c


class Received:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.cv = threading.Condition()

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        with self.cv:
            self.rows += rows
            self.cv.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.rows) >= count, timeout), self.rows
            return list(self.rows)


@pytest.mark.timeout(60)
def test_messages_are_pushed_as_they_commit_and_survive_a_leadership_change(
    inprocess_cluster: InProcessCluster, coord: Coordinator
):
    session = coord.session(ttl=30)
    received = Received()
    stream = PushStream(coord, "t-push", received)
    try:
        coord.run(ops.queue_subscribe(session.id, "t-push", ["pq"], window=100))
        ids = [coord.queue("pq").put(b"%d" % i) for i in range(5)]
        assert [row["id"] for row in received.wait(5)] == ids
        assert coord.queue("pq").stats()["consumers_waiting"] == 0  # no get entry at all

        leader = next(n for n, s in inprocess_cluster.servers.items() if s.host.is_leader)
        other = next(n for n in inprocess_cluster.ids if n != leader)
        coord.transfer_leadership(other)
        # Puts while the stream moves: leased at once, pushed by whichever node serves it.
        ids += [coord.queue("pq").put(b"%d" % i) for i in range(5, 15)]
        deadline = time.monotonic() + 10
        while stream.reconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stream.reconnects >= 1  # the old leader ended the stream
        ids += [coord.queue("pq").put(b"%d" % i) for i in range(15, 20)]
        rows = received.wait(20)
        time.sleep(0.3)  # anything handed out twice would arrive by now
        assert [row["id"] for row in received.rows] == ids  # each once, in log order
        assert all(row["delivery_count"] == 1 for row in rows)
    finally:
        stream.close()
        session.close()
