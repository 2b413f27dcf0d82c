"""The queue primitive, driven through ``CoordinationMachine`` with msgpack commands at increasing
indexes and a hand-moved log clock: directed transcripts for every op, a snapshot/restore
replay, and a stateful property test against a naive reference model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from search_depth import examples

from coordination.primitives import errors, limits, queues_keys, queues_put
from coordination.primitives.machine import CoordinationMachine
from coordination.primitives.queues import DEFAULT_MAX_DELIVERIES, Queues
from coordination.primitives.queues_put import MSG_ID_STRIDE
from raft_node.core.fsm import CommandRejected, Pending
from raft_node.core.messages import Entry
from raft_node.host.applier import SYSTEM, Applier, encode_command

VIS = 30_000


class Node:
    """One replica's state machine, fed by hand."""

    def __init__(self, machine: CoordinationMachine | None = None) -> None:
        self.m = machine or CoordinationMachine()
        self.index = 0
        self.now = 1_000

    @property
    def queues(self) -> Queues:
        part = self.m.part("queues")
        assert isinstance(part, Queues)
        return part

    def do(self, op: str, *args: Any) -> Any:
        self.index += 1
        return self.m.apply(self.index, msgpack.packb([op, *args], use_bin_type=True), self.now)

    def query(self, op: str, *args: Any) -> Any:
        return self.m.query(msgpack.packb([op, *args], use_bin_type=True))

    def tick(self, advance_ms: int = 0, drain: bool = True) -> dict[int, tuple[bool, Any]]:
        self.now += advance_ms
        self.index += 1
        self.m.apply(self.index, self.m.tick_command(), self.now)
        return self.done() if drain else {}

    def done(self) -> dict[int, tuple[bool, Any]]:
        return {token: (ok, value) for token, ok, value in self.m.drain_completions()}

    def rejected(self, code: str, op: str, *args: Any) -> str:
        with pytest.raises(CommandRejected) as info:
            self.do(op, *args)
        assert info.value.code == code, info.value.message
        return info.value.message

    def session(self, ttl_ms: int = 600_000) -> int:
        return self.do("session.open", ttl_ms, "worker")["session"]

    def put(self, name: str, payload: bytes = b"x", priority: int = 0, **kw: Any) -> int:
        args = [name, payload, priority, kw.get("dedup"), kw.get("delay", 0)]
        if "hold" in kw:
            args.append(kw["hold"])
        return self.do("queue.put", *args)["id"]

    def get(self, sid: int, name: str, wait: int = 0, vis: int = VIS) -> Any:
        return self.do("queue.get", sid, name, wait, vis)

    def stats(self, name: str) -> dict[str, Any]:
        return self.query("queue.stats", name)


def check_invariants(part: Queues) -> None:
    """Every message in exactly one place; indexes agree with the tables."""
    owner: dict[int, str] = {}
    leases: dict[int, set[tuple[str, int]]] = {}
    for name, q in part.queues.items():
        ready = [mid for _, mid in q.ready]
        places = [set(ready), set(q.delayed), set(q.inflight)]
        assert len(ready) == len(places[0]), "a message twice in the ready heap"
        assert sum(map(len, places)) == len(set().union(*places)), "a message in two places"
        assert set().union(*places) == set(q.messages), "a message in no place"
        for mid in q.messages:
            assert owner.setdefault(mid, name) == name, f"message {mid} in two queues"
        counts = [0] * 10
        for mid in ready:
            counts[q.messages[mid][1]] += 1
        assert counts == q.ready_by_priority
        assert not (q.ready and q.waiters), "ready messages while consumers wait"
        for mid, (sid, _) in q.inflight.items():
            leases.setdefault(sid, set()).add((name, mid))
        for token in q.waiters:
            waits_in = part.waiters[token][1]
            assert name in waits_in if isinstance(waits_in, list) else waits_in == name
        assert {entry[0]: key for key, entry in q.held.items()} == q.held_of, "held index"
        assert set(q.held_of) <= set(q.messages), "a held key of a message gone"
    assert {s: set(v) for s, v in part._leases_by_session.items()} == leases
    registered = sum(len(w[1]) if isinstance(w[1], list) else 1 for w in part.waiters.values())
    assert sum(len(q.waiters) for q in part.queues.values()) == registered
    by_session: dict[int, set[int]] = {}
    for token, waiter in part.waiters.items():
        by_session.setdefault(waiter[0], set()).add(token)
    assert {s: set(v) for s, v in part._waits_by_session.items()} == by_session


def queue_state(machine: CoordinationMachine) -> bytes:
    """The sessions' and queues' snapshot bytes (the other parts are tested on their own)."""
    parts = [machine.part(name).to_state() for name in ("sessions", "queues")]
    return msgpack.packb(parts, use_bin_type=True)


@pytest.fixture
def node() -> Node:
    return Node()


# -- put / get / order ------------------------------------------------------------------------


def test_priority_first_then_fifo(node: Node) -> None:
    sid = node.session()
    ids = {}
    for label, prio in [("a0", 0), ("b9", 9), ("c5", 5), ("d9", 9), ("e0", 0), ("f5", 5)]:
        ids[label] = node.put("jobs", label.encode(), prio)
    assert [m["payload"] for m in node.query("queue.peek", "jobs", 10)] == [
        b"b9",
        b"d9",
        b"c5",
        b"f5",
        b"a0",
        b"e0",
    ]
    got = [node.get(sid, "jobs") for _ in range(6)]
    assert [m["payload"] for m in got] == [b"b9", b"d9", b"c5", b"f5", b"a0", b"e0"]
    first = got[0]
    assert first == {
        "id": ids["b9"],
        "payload": b"b9",
        "priority": 9,
        "delivery_count": 1,
        "queue": "jobs",
        "dead_letter": None,
        "lease_expires_ms": node.now + VIS,
    }
    assert node.get(sid, "jobs") is None
    stats = node.stats("jobs")
    assert (stats["ready"], stats["in_flight"], stats["total_put"]) == (0, 6, 6)
    check_invariants(node.queues)


def test_declare_is_idempotent_and_updates(node: Node) -> None:
    config = node.do("queue.declare", "q", 3, 1000, 10)
    assert config == {"name": "q", "max_deliveries": 3, "dedup_window_ms": 1000, "max_depth": 10}
    assert node.do("queue.declare", "q", 3, 1000, 10) == config
    assert node.do("queue.declare", "q", None, None, 20)["max_deliveries"] == 3
    assert node.stats("q")["max_depth"] == 20
    auto = node.do("queue.declare", "other", None, None, None)
    assert auto["max_deliveries"] == DEFAULT_MAX_DELIVERIES
    assert auto["max_depth"] == limits.QUEUE_DEPTH_MAX
    assert node.do("queue.declare", "x.dlq", None, None, None)["max_deliveries"] == 1000
    assert [s["name"] for s in node.query("queue.list")] == ["other", "q", "x.dlq"]


def test_dedup_within_and_after_window(node: Node) -> None:
    node.do("queue.declare", "q", None, 5_000, None)
    first = node.do("queue.put", "q", b"one", 0, "k", 0)
    assert first["duplicate"] is False
    node.now += 4_999
    assert node.do("queue.put", "q", b"two", 7, "k", 0) == {"id": first["id"], "duplicate": True}
    assert node.stats("q")["ready"] == 1
    node.do("queue.put", "q", b"other-key", 0, "k2", 0)
    assert node.queues.next_deadline() == 1_000 + 5_000
    node.tick(1)  # window of "k" over: forgotten
    assert "k" not in node.queues.queues["q"].dedup
    again = node.do("queue.put", "q", b"three", 0, "k", 0)
    assert again["duplicate"] is False and again["id"] != first["id"]
    # an expired entry not yet ticked away does not count either (the window is half-open)
    node.now += 4_998  # "k2" was put at 5_999: a duplicate until 10_999
    assert node.do("queue.put", "q", b"late", 0, "k2", 0)["duplicate"] is True
    node.now += 1
    assert node.do("queue.put", "q", b"late", 0, "k2", 0)["duplicate"] is False
    # a duplicate of an acked message is still a duplicate; window 0 disables dedup
    sid = node.session()
    node.do("queue.purge", "q")
    acked = node.put("q", dedup="z")
    node.do("queue.ack", sid, "q", node.get(sid, "q")["id"])
    assert node.do("queue.put", "q", b"x", 0, "z", 0) == {"id": acked, "duplicate": True}
    node.do("queue.declare", "nodedup", None, 0, None)
    assert node.do("queue.put", "nodedup", b"1", 0, "k", 0)["duplicate"] is False
    assert node.do("queue.put", "nodedup", b"2", 0, "k", 0)["duplicate"] is False


def test_dedup_of_full_queue_is_still_a_duplicate(node: Node) -> None:
    node.do("queue.declare", "q", None, None, 1)
    first = node.do("queue.put", "q", b"1", 0, "k", 0)
    assert node.do("queue.put", "q", b"1", 0, "k", 0) == {"id": first["id"], "duplicate": True}
    node.rejected(errors.LIMIT, "queue.put", "q", b"2", 0, "k2", 0)


def test_dedup_memory_is_bounded(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queues_keys, "DEDUP_MAX_ENTRIES", 3)
    ids = [node.put("q", dedup=f"k{i}") for i in range(4)]
    assert list(node.queues.queues["q"].dedup) == ["k1", "k2", "k3"]  # oldest forgotten
    assert node.do("queue.put", "q", b"x", 0, "k0", 0)["duplicate"] is False
    assert node.do("queue.put", "q", b"x", 0, "k3", 0) == {"id": ids[3], "duplicate": True}


# -- held keys (``once`` semantics) ------------------------------------------------------------


def _held_put(node: Node, name: str, key: str, tag: str, **kw: Any) -> dict[str, Any]:
    return node.do("queue.put", name, b"x", 0, kw.get("dedup"), kw.get("delay", 0), [key, tag])


def test_held_key_is_a_duplicate_while_queued_and_freed_on_ack(node: Node) -> None:
    sid = node.session()
    first = _held_put(node, "q", "report:1", "task-a")
    assert first == {"id": first["id"], "duplicate": False}
    assert _held_put(node, "q", "report:1", "task-b") == {
        "id": first["id"], "duplicate": True, "tag": "task-a"
    }
    assert node.stats("q")["depth"] == 1 and node.stats("q")["total_put"] == 1
    other = _held_put(node, "q", "report:2", "task-c")  # another key is independent
    assert other["duplicate"] is False
    node.get(sid, "q")  # in flight: still held
    assert _held_put(node, "q", "report:1", "task-d")["duplicate"] is True
    assert node.do("queue.ack", sid, "q", first["id"]) is True
    again = _held_put(node, "q", "report:1", "task-e")  # freed in the ack's entry
    assert again["duplicate"] is False and again["id"] > first["id"]


def test_held_key_freed_by_ack_many(node: Node) -> None:
    sid = node.session()
    mid = _held_put(node, "q", "k", "t")["id"]
    node.get(sid, "q")
    node.do("queue.ack_many", sid, "q", [mid])
    assert _held_put(node, "q", "k", "t2")["duplicate"] is False


def test_held_key_kept_across_redelivery_and_delay(node: Node) -> None:
    sid = node.session()
    mid = _held_put(node, "q", "k", "t", delay=5_000)["id"]
    assert _held_put(node, "q", "k", "u")["duplicate"] is True  # delayed counts
    node.tick(5_000)
    assert node.get(sid, "q", vis=1_000)["id"] == mid
    node.tick(1_000)  # lease expired: redelivered, still the holder
    assert _held_put(node, "q", "k", "u") == {"id": mid, "duplicate": True, "tag": "t"}
    node.do("queue.nack", sid, "q", node.get(sid, "q")["id"], True, 0)  # nack + requeue
    assert _held_put(node, "q", "k", "u")["duplicate"] is True
    node.do("session.close", sid)  # session-held lease ends with the session: redelivered
    assert _held_put(node, "q", "k", "u")["duplicate"] is True
    assert node.stats("q")["depth"] == 1


def test_held_key_freed_when_dead_lettered(node: Node) -> None:
    sid = node.session()
    node.do("queue.declare", "q", 1, None, None)
    mid = _held_put(node, "q", "k", "t")["id"]
    node.get(sid, "q")
    node.do("queue.nack", sid, "q", mid, False, 0)  # rejected: to q.dlq
    assert node.stats("q")["dead_letters"] == 1
    assert _held_put(node, "q", "k", "t2")["duplicate"] is False
    mid2 = node.queues.queues["q"].held["k"][0]
    node.get(sid, "q")
    node.do("queue.nack", sid, "q", mid2, True, 0)  # max_deliveries 1 reached: to the DLQ
    assert node.stats("q")["dead_letters"] == 2
    assert _held_put(node, "q", "k", "t3")["duplicate"] is False
    node.do("queue.requeue_dead", "q", 10)  # back from the DLQ without a key
    assert list(node.queues.queues["q"].held) == ["k"]


def test_held_key_freed_by_purge_and_delete(node: Node) -> None:
    sid = node.session()
    leased = _held_put(node, "q", "leased", "t")["id"]
    _held_put(node, "q", "ready", "t")
    _held_put(node, "q", "later", "t", delay=60_000)
    assert node.do("queue.get", sid, "q", 0, VIS)["id"] == leased
    assert node.do("queue.purge", "q") == 2
    assert _held_put(node, "q", "later", "t2")["duplicate"] is False
    assert _held_put(node, "q", "ready", "t2")["duplicate"] is False
    assert _held_put(node, "q", "leased", "t2")["id"] == leased  # leases stay, so does it
    node.do("queue.delete", "q")
    assert _held_put(node, "q", "leased", "t3")["duplicate"] is False


def test_held_key_rejects_bad_input_and_full_queue(node: Node) -> None:
    node.rejected(errors.BAD_COMMAND, "queue.put", "q", b"x", 0, None, 0, ["k"])
    node.rejected(errors.BAD_COMMAND, "queue.put", "q", b"x", 0, None, 0, ["", "t"])
    node.rejected(errors.BAD_COMMAND, "queue.put", "q", b"x", 0, None, 0, ["k", 5])
    node.rejected(errors.LIMIT, "queue.put", "q", b"x", 0, None, 0, ["k" * 201, "t"])
    node.rejected(errors.LIMIT, "queue.put", "q", b"x", 0, None, 0, ["k", "t" * 129])
    node.rejected(errors.BAD_COMMAND, "queue.put", "q", b"x", 0, None, 0, None, 1)
    node.do("queue.declare", "q", None, None, 1)
    first = _held_put(node, "q", "k", "t")["id"]
    assert _held_put(node, "q", "k", "t")["id"] == first  # a duplicate needs no room
    node.rejected(errors.LIMIT, "queue.put", "q", b"x", 0, None, 0, ["k2", "t"])


def test_held_keys_snapshot_round_trip_and_old_snapshots(node: Node) -> None:
    mid = _held_put(node, "q", "k", "t")["id"]
    replica = Node()
    replica.m.restore(node.m.snapshot())
    replica.index, replica.now = node.index, node.now
    assert queue_state(replica.m) == queue_state(node.m)
    assert _held_put(replica, "q", "k", "u") == {"id": mid, "duplicate": True, "tag": "t"}
    old = node.queues.to_state()
    old[0] = [row[:11] for row in old[0]]  # a snapshot taken before held keys existed
    older = Node()
    older.queues.from_state(old)
    assert older.queues.queues["q"].held == {} and len(older.queues.queues["q"].messages) == 1


def test_held_query_lists_each_key_with_its_message_and_changes_nothing(node: Node) -> None:
    """``queue.held``: what the admin's once-keys page reads. Every held key with where its
    message is (ready, delayed, in flight with the leasing session), by queue name then put
    order, narrowed by prefix and limit; read-only, and the same on a restored replica."""
    sid = node.session()
    ready = _held_put(node, "b", "once:1", "task-1")["id"]
    later = _held_put(node, "b", "once:2", "task-2", delay=60_000)["id"]
    node.put("b")  # a message without a key is not listed
    leased = _held_put(node, "a", "once:3", "task-3")["id"]
    _held_put(node, "a", "other", "")
    assert node.get(sid, "a", vis=None)["id"] == leased  # a session-held lease (no deadline)
    before = queue_state(node.m)
    rows = node.query("queue.held", "", 10)
    assert [(r["queue"], r["key"], r["tag"], r["id"]) for r in rows] == [
        ("a", "once:3", "task-3", leased),
        ("a", "other", "", leased + 1),
        ("b", "once:1", "task-1", ready),
        ("b", "once:2", "task-2", later),
    ]
    assert [(r["state"], r["delivery_count"], r["session"]) for r in rows] == [
        ("in_flight", 1, sid),
        ("ready", 0, None),
        ("ready", 0, None),
        ("delayed", 0, None),
    ]
    assert rows[0]["lease_expires_ms"] is None and rows[3]["visible_at_ms"] == node.now + 60_000
    keys = [r["key"] for r in node.query("queue.held", "once:", 10)]
    assert keys == ["once:3", "once:1", "once:2"]
    assert [r["key"] for r in node.query("queue.held", "once:", 2)] == keys[:2]
    assert node.query("queue.held", "nothing", 10) == []
    assert queue_state(node.m) == before  # a query changes nothing
    replica = Node()
    replica.m.restore(node.m.snapshot())
    assert replica.query("queue.held", "", 10) == rows
    node.do("queue.ack", sid, "a", leased)  # the entry that removes the message frees its key
    assert [r["key"] for r in node.query("queue.held", "once:", 10)] == ["once:1", "once:2"]
    with pytest.raises(CommandRejected):
        node.query("queue.held", "", 0)
    with pytest.raises(CommandRejected):
        node.query("queue.held", 5, 10)


def test_full_dead_letter_queue_drops_and_counts(node: Node) -> None:
    sid = node.session()
    node.do("queue.declare", "q.dlq", None, None, 1)
    first, second = node.put("q"), node.put("q")
    for mid in (first, second):
        assert node.get(sid, "q")["id"] == mid
        node.do("queue.nack", sid, "q", mid, False, 0)
    stats = node.stats("q")
    assert (stats["dead_letters"], stats["dropped"], stats["total_dead_lettered"]) == (1, 1, 2)
    assert [m["id"] for m in node.query("queue.dead_letters", "q", 10)] == [first]
    check_invariants(node.queues)


def test_delayed_message_invisible_until_due(node: Node) -> None:
    sid = node.session()
    late = node.put("q", b"late", 9, delay=2_000)
    node.put("q", b"now", 0)
    assert node.stats("q")["delayed"] == 1
    assert node.get(sid, "q")["payload"] == b"now"
    assert node.get(sid, "q") is None
    assert node.queues.next_deadline() == node.now + 2_000
    node.tick(1_999)
    assert node.get(sid, "q") is None
    node.tick(1)
    msg = node.get(sid, "q")
    assert (msg["id"], msg["payload"]) == (late, b"late")


def test_blocking_get_served_by_later_put(node: Node) -> None:
    s1, s2 = node.session(), node.session()
    node.do("queue.declare", "q", None, None, None)
    p1 = node.get(s1, "q", wait=10_000)
    p2 = node.get(s2, "q", wait=10_000)
    assert isinstance(p1, Pending) and p1.token == node.index - 1
    assert node.stats("q")["consumers_waiting"] == 2
    check_invariants(node.queues)
    node.now += 100
    mid = node.put("q", b"hello")
    done = node.done()
    assert list(done) == [p1.token]  # FIFO among waiters
    ok, msg = done[p1.token]
    assert ok and msg["id"] == mid and msg["delivery_count"] == 1
    assert msg["lease_expires_ms"] == node.now + VIS
    assert node.queues.queues["q"].inflight[mid][0] == s1
    node.put("q", b"second")
    assert node.done()[p2.token][1]["payload"] == b"second"
    assert node.stats("q")["consumers_waiting"] == 0
    check_invariants(node.queues)


def test_get_times_out_via_tick(node: Node) -> None:
    sid = node.session()
    node.do("queue.declare", "q", None, None, None)
    pending = node.get(sid, "q", wait=5_000)
    assert node.queues.next_deadline() == node.now + 5_000
    assert node.tick(4_999) == {}
    assert node.tick(1) == {pending.token: (True, None)}
    assert node.queues.waiters == {}
    assert node.queues.next_deadline() is None


def test_waiter_gets_delayed_message_that_became_visible_before_its_deadline(node: Node) -> None:
    sid = node.session()
    node.put("q", b"d", delay=1_000)
    pending = node.get(sid, "q", wait=2_000)
    # the leader's tick comes late, after both deadlines: the message was visible first
    done = node.tick(5_000)
    assert done[pending.token][0] and done[pending.token][1]["payload"] == b"d"


def test_ack_and_unknown_message(node: Node) -> None:
    s1, s2 = node.session(), node.session()
    mid = node.put("q")
    msg = node.get(s1, "q")
    node.rejected(errors.UNKNOWN_MESSAGE, "queue.ack", s2, "q", mid)  # not leased to s2
    assert node.do("queue.ack", s1, "q", msg["id"]) is True
    node.rejected(errors.UNKNOWN_MESSAGE, "queue.ack", s1, "q", mid)  # already acked
    node.rejected(errors.UNKNOWN_MESSAGE, "queue.ack", s1, "q", 12345)
    node.rejected(errors.UNKNOWN_MESSAGE, "queue.nack", s1, "q", mid, True, 0)
    node.rejected(errors.UNKNOWN_QUEUE, "queue.ack", s1, "nope", mid)
    node.rejected(errors.UNKNOWN_SESSION, "queue.ack", 999_999, "q", mid)
    node.rejected(errors.BAD_COMMAND, "queue.ack", s1, "q", "1")
    stats = node.stats("q")
    assert (stats["depth"], stats["total_acked"]) == (0, 1)
    assert node.queues.next_deadline() is None  # the acked lease's deadline is stale


def test_nack_requeue_keeps_position_and_counts(node: Node) -> None:
    sid = node.session()
    old = node.put("q", b"old")
    msg = node.get(sid, "q")
    node.put("q", b"new")
    assert node.do("queue.nack", sid, "q", old, True, 0) is True
    again = node.get(sid, "q")
    assert (again["id"], again["delivery_count"]) == (old, 2)
    assert msg["delivery_count"] == 1
    # with a delay: invisible until then, then still ahead of newer messages
    node.do("queue.nack", sid, "q", old, True, 3_000)
    assert node.stats("q")["delayed"] == 1
    assert node.get(sid, "q")["payload"] == b"new"
    node.put("q", b"newer")
    node.tick(3_000)
    third = node.get(sid, "q")
    assert (third["id"], third["delivery_count"]) == (old, 3)


def test_nack_without_requeue_dead_letters(node: Node) -> None:
    sid = node.session()
    mid = node.put("q", b"poison", 4)
    node.get(sid, "q")
    node.do("queue.nack", sid, "q", mid, False, 0)
    stats = node.stats("q")
    assert (stats["depth"], stats["dead_letters"], stats["total_dead_lettered"]) == (0, 1, 1)
    [dead] = node.query("queue.dead_letters", "q", 10)
    assert dead["queue"] == "q.dlq" and dead["payload"] == b"poison" and dead["priority"] == 4
    assert dead["delivery_count"] == 0
    assert dead["dead_letter"] == {
        "reason": "rejected",
        "from_queue": "q",
        "delivery_count": 1,
        "original_id": mid,
    }
    # the DLQ is an ordinary queue; rejecting there drops (a DLQ has no DLQ)
    got = node.get(sid, "q.dlq")
    assert got["id"] == mid and got["delivery_count"] == 1 and got["dead_letter"]["reason"]
    node.do("queue.nack", sid, "q.dlq", mid, False, 0)
    dlq = node.stats("q.dlq")
    assert (dlq["depth"], dlq["dropped"], dlq["dead_letters"]) == (0, 1, 0)
    assert "q.dlq.dlq" not in node.queues.queues


def test_lease_expiry_redelivers_then_dead_letters(node: Node) -> None:
    sid = node.session(ttl_ms=3_600_000)
    node.do("queue.declare", "q", 2, None, None)
    mid = node.put("q", b"slow", 3)
    first = node.get(sid, "q", vis=1_000)
    assert node.queues.next_deadline() == node.now + 1_000
    node.tick(999)
    assert node.stats("q")["in_flight"] == 1
    node.tick(1)
    assert node.stats("q")["ready"] == 1
    node.rejected(errors.UNKNOWN_MESSAGE, "queue.ack", sid, "q", mid)  # lease is gone
    second = node.get(sid, "q", vis=1_000)
    assert (first["delivery_count"], second["delivery_count"]) == (1, 2)
    node.tick(1_000)  # 2 deliveries == max_deliveries: dead-lettered
    stats = node.stats("q")
    assert (stats["depth"], stats["dead_letters"]) == (0, 1)
    [dead] = node.query("queue.dead_letters", "q", 1)
    assert dead["dead_letter"] == {
        "reason": "max_deliveries",
        "from_queue": "q",
        "delivery_count": 2,
        "original_id": mid,
    }
    # nack(requeue=True) at max_deliveries dead-letters too (no poison-message loop)
    mid2 = node.put("q", b"nacked")
    node.get(sid, "q")
    node.do("queue.nack", sid, "q", mid2, True, 0)
    node.get(sid, "q")
    node.do("queue.nack", sid, "q", mid2, True, 0)
    assert node.stats("q")["dead_letters"] == 2
    check_invariants(node.queues)


def test_lease_expiry_requeue_serves_a_waiter(node: Node) -> None:
    s1, s2 = node.session(), node.session()
    node.put("q", b"m")
    node.get(s1, "q", vis=1_000)
    pending = node.get(s2, "q", wait=60_000)
    done = node.tick(1_000)
    ok, msg = done[pending.token]
    assert ok and msg["delivery_count"] == 2
    assert node.queues.queues["q"].inflight[msg["id"]][0] == s2


def test_a_session_held_lease_outlives_any_deadline_and_ends_with_its_session(node: Node) -> None:
    """``visibility_ms`` None: a live consumer is never redelivered what it is working on
    (celery#5935); only its session ending (or ack/nack) ends the lease."""
    sid = node.session(ttl_ms=60_000)
    mid = node.put("q")
    assert node.get(sid, "q", vis=None)["lease_expires_ms"] is None
    for _ in range(30):  # 15 minutes of log time, the session kept alive
        node.tick(30_000)
        node.do("session.keepalive", sid)
    assert node.stats("q")["in_flight"] == 1
    assert node.queues.next_deadline() is None or node.queues.next_deadline() > node.now
    replica = Node()  # a snapshot carries the session-held lease
    replica.m.restore(node.m.snapshot())
    replica.index, replica.now = node.index, node.now
    assert replica.stats("q")["in_flight"] == 1
    for n in (node, replica):
        n.tick(61_000)  # no keepalive: the session expires, the message is ready again
        assert n.stats("q")["ready"] == 1, n
        s2 = n.session()
        assert n.get(s2, "q", vis=None)["delivery_count"] == 2
        check_invariants(n.queues)
    assert mid


def test_touch_extends_lease(node: Node) -> None:
    sid = node.session()
    mid = node.put("q")
    node.get(sid, "q", vis=1_000)
    node.now += 900
    assert node.do("queue.touch", sid, "q", mid, 5_000) == {
        "id": mid,
        "lease_expires_ms": node.now + 5_000,
    }
    node.tick(1_000)
    assert node.stats("q")["in_flight"] == 1
    node.tick(4_000)
    assert node.stats("q")["ready"] == 1


def test_session_end_redelivers_leases_and_fails_waits(node: Node) -> None:
    dying, other = node.session(ttl_ms=5_000), node.session(ttl_ms=3_600_000)
    node.do("queue.declare", "q", 1, None, None)
    node.do("queue.declare", "r", None, None, None)
    a, b = node.put("q", b"a"), node.put("r", b"b")
    node.get(dying, "q")
    node.get(dying, "r")
    node.do("queue.declare", "w", None, None, None)
    waiting = node.get(dying, "w", wait=60_000)
    serve_me = node.get(other, "w", wait=60_000)
    done = node.tick(5_000)  # session expires: everything it held is released
    assert done[waiting.token][0] is False
    assert done[waiting.token][1][0] == errors.SESSION_EXPIRED
    assert node.stats("q")["dead_letters"] == 1  # max_deliveries 1: straight to the DLQ
    got = node.get(other, "r")
    assert (got["id"], got["delivery_count"]) == (b, 2)
    node.rejected(errors.SESSION_EXPIRED, "queue.ack", dying, "r", b)
    node.rejected(errors.SESSION_EXPIRED, "queue.get", dying, "r", 0, VIS)
    assert node.query("queue.dead_letters", "q", 5)[0]["id"] == a
    node.put("w", b"w")
    assert node.done()[serve_me.token][0] is True
    # explicit close also releases
    node.do("session.close", other)
    assert node.stats("r")["ready"] == 1 and node.stats("w")["ready"] == 1
    check_invariants(node.queues)


def test_purge_keeps_leases(node: Node) -> None:
    sid = node.session()
    leased = node.put("q", b"1")
    node.get(sid, "q")
    node.put("q", b"2", 5)
    node.put("q", b"3", delay=10_000)
    assert node.do("queue.purge", "q") == 2
    stats = node.stats("q")
    assert (stats["ready"], stats["delayed"], stats["in_flight"]) == (0, 0, 1)
    assert stats["depth_by_priority"]["5"] == 0
    node.tick(10_000)  # the purged delayed message's deadline is stale
    assert node.stats("q")["ready"] == 0
    assert node.do("queue.ack", sid, "q", leased) is True
    node.rejected(errors.UNKNOWN_QUEUE, "queue.purge", "nope")


def test_requeue_dead(node: Node) -> None:
    sid = node.session()
    node.do("queue.declare", "q", 1, None, 4)
    ids = [node.put("q", bytes([i]), i) for i in range(3)]
    for _ in ids:
        msg = node.get(sid, "q")
        node.do("queue.nack", sid, "q", msg["id"], False, 0)
    assert node.stats("q")["dead_letters"] == 3
    assert node.do("queue.requeue_dead", "q", 2) == 2  # DLQ order: priority 2, then 1
    assert [m["id"] for m in node.query("queue.peek", "q", 10)] == [ids[2], ids[1]]
    assert node.query("queue.peek", "q", 1)[0]["delivery_count"] == 0
    assert node.query("queue.peek", "q", 1)[0]["dead_letter"] is None
    node.put("q")
    node.put("q")  # depth 4 == max_depth: nothing more fits
    assert node.do("queue.requeue_dead", "q", 10) == 0
    assert node.stats("q")["dead_letters"] == 1
    again = node.get(sid, "q")
    assert (again["id"], again["delivery_count"]) == (ids[2], 1)
    node.put("fresh")
    assert node.do("queue.requeue_dead", "fresh", 5) == 0  # no DLQ yet
    assert node.query("queue.dead_letters", "fresh", 5) == []
    node.rejected(errors.UNKNOWN_QUEUE, "queue.requeue_dead", "never", 1)


def test_requeued_dead_letter_serves_a_waiter(node: Node) -> None:
    sid = node.session()
    mid = node.put("q")
    node.get(sid, "q")
    node.do("queue.nack", sid, "q", mid, False, 0)
    pending = node.get(sid, "q", wait=10_000)
    node.do("queue.requeue_dead", "q", 1)
    assert node.done()[pending.token][1]["id"] == mid


def test_blocking_get_on_dlq_served_by_dead_letter(node: Node) -> None:
    sid = node.session()
    mid = node.put("q")
    node.get(sid, "q")
    node.do("queue.nack", sid, "q", mid, False, 0)
    node.get(sid, "q.dlq")  # now known (and empty again)
    pending = node.get(sid, "q.dlq", wait=10_000)
    mid2 = node.put("q")
    node.get(sid, "q")
    node.do("queue.nack", sid, "q", mid2, False, 0)
    assert node.done()[pending.token][1]["dead_letter"]["original_id"] == mid2


def test_stats_shape(node: Node) -> None:
    sid = node.session()
    node.put("q", priority=3)
    node.put("q", priority=3)
    node.put("q", priority=9, delay=100)
    node.get(sid, "q")
    stats = node.stats("q")
    assert stats == {
        "name": "q",
        "max_deliveries": 5,
        "dedup_window_ms": 300_000,
        "max_depth": limits.QUEUE_DEPTH_MAX,
        "depth": 3,
        "depth_by_priority": {str(p): (1 if p == 3 else 0) for p in range(10)},
        "ready": 1,
        "delayed": 1,
        "in_flight": 1,
        "dead_letters": 0,
        "consumers_waiting": 0,
        "subscribers": 0,
        "total_put": 3,
        "total_acked": 0,
        "total_dead_lettered": 0,
        "dropped": 0,
    }
    assert node.query("queue.list") == [stats]
    msgpack.packb(node.query("queue.list"))  # wire-friendly
    with pytest.raises(CommandRejected) as info:
        node.query("queue.stats", "nope")
    assert info.value.code == errors.UNKNOWN_QUEUE


def test_limits_and_bad_arguments(node: Node) -> None:
    sid = node.session()
    r = node.rejected
    too_big = b"x" * (limits.PAYLOAD_MAX_BYTES + 1)
    r(errors.LIMIT, "queue.put", "q", too_big, 0, None, 0)
    r(errors.LIMIT, "queue.put", "q", b"x", 10, None, 0)
    r(errors.LIMIT, "queue.put", "q", b"x", -1, None, 0)
    r(errors.BAD_COMMAND, "queue.put", "q", "text", 0, None, 0)
    r(errors.BAD_COMMAND, "queue.put", "q", b"x", True, None, 0)
    r(errors.BAD_COMMAND, "queue.put", "bad name", b"x", 0, None, 0)
    r(errors.BAD_COMMAND, "queue.put", "", b"x", 0, None, 0)
    r(errors.BAD_COMMAND, "queue.put", 7, b"x", 0, None, 0)
    r(errors.LIMIT, "queue.put", "n" * 201, b"x", 0, None, 0)
    r(errors.LIMIT, "queue.put", "n" * 197, b"x", 0, None, 0)  # no room for ".dlq"
    node.put("n" * 196)
    r(errors.LIMIT, "queue.put", "q", b"x", 0, None, limits.DELAY_MS[1] + 1)
    r(errors.BAD_COMMAND, "queue.put", "q", b"x", 0, 5, 0)
    r(errors.LIMIT, "queue.put", "q", b"x", 0, "d" * 201, 0)
    r(errors.BAD_COMMAND, "queue.put", "q", b"x", 0, None)
    r(errors.LIMIT, "queue.declare", "q", 0, None, None)
    r(errors.LIMIT, "queue.declare", "q", None, None, limits.QUEUE_DEPTH_MAX + 1)
    r(errors.LIMIT, "queue.declare", "q", None, limits.DEDUP_WINDOW_MS[1] + 1, None)
    assert "q" not in node.queues.queues  # nothing was created by rejected commands
    node.put("q")
    r(errors.LIMIT, "queue.get", sid, "q", limits.WAIT_MS[1] + 1, VIS)
    r(errors.LIMIT, "queue.get", sid, "q", 0, 999)
    r(errors.BAD_COMMAND, "queue.get", "s", "q", 0, VIS)
    r(errors.BAD_COMMAND, "queue.nack", sid, "q", 1, "yes", 0)
    r(errors.LIMIT, "queue.requeue_dead", "q", 0)
    with pytest.raises(CommandRejected):
        node.query("queue.peek", "q", limits.BATCH_MAX + 1)
    assert node.stats("q")["ready"] == 1  # the rejected gets leased nothing


def test_depth_limit(node: Node) -> None:
    sid = node.session()
    node.do("queue.declare", "q", None, None, 3)
    node.put("q")
    node.put("q", delay=1_000)
    node.put("q")
    node.get(sid, "q")
    message = node.rejected(errors.LIMIT, "queue.put", "q", b"x", 0, None, 0)
    assert "full" in message
    msg = node.get(sid, "q")
    node.do("queue.ack", sid, "q", msg["id"])
    node.put("q")


def test_unknown_queue_on_get(node: Node) -> None:
    sid = node.session()
    node.rejected(errors.UNKNOWN_QUEUE, "queue.get", sid, "never", 0, VIS)
    node.rejected(errors.UNKNOWN_QUEUE, "queue.get", sid, "never", 1_000, VIS)
    node.rejected(errors.UNKNOWN_QUEUE, "queue.get", sid, "never.dlq", 0, VIS)
    node.do("queue.declare", "never", None, None, None)
    assert node.get(sid, "never") is None


def test_through_the_applier_a_pending_get_completes_later() -> None:
    machine = CoordinationMachine()
    applier = Applier(machine)
    index = 0

    def propose(client: str, seq: int, now: int, *command: Any) -> list[Any]:
        nonlocal index
        index += 1
        body = msgpack.packb(list(command), use_bin_type=True)
        entry = Entry(term=1, index=index, data=encode_command(client, seq, now, body))
        return applier.apply(entry)

    [opened] = propose("c1", 1, 1_000, "session.open", 60_000, "w")
    sid = opened.value["session"]
    propose("c1", 2, 1_000, "queue.declare", "q", None, None, None)
    [waiting] = propose("c1", 3, 1_000, "queue.get", sid, "q", 10_000, VIS)
    assert waiting.pending
    [retry] = propose("c1", 3, 1_100, "queue.get", sid, "q", 10_000, VIS)
    assert retry.pending  # a retried pending request is not applied twice
    put, delivered = propose("c2", 1, 1_200, "queue.put", "q", b"hi", 0, None, 0)
    assert put.ok and delivered.client_id == "c1" and delivered.seq == 3
    assert delivered.value["payload"] == b"hi"
    [timed_wait] = propose("c1", 4, 1_300, "queue.get", sid, "q", 1_000, VIS)
    assert timed_wait.pending
    [timeout] = propose(SYSTEM, 0, 2_300, "tick")
    assert (timeout.seq, timeout.ok, timeout.value) == (4, True, None)


# -- snapshots --------------------------------------------------------------------------------


def _script_before(node: Node) -> dict[str, int]:
    s1 = node.session(ttl_ms=20_000)
    s2 = node.session(ttl_ms=3_600_000)
    node.do("queue.declare", "q", 2, 10_000, 50)
    node.do("queue.declare", "idle", None, None, None)
    for i in range(6):
        node.put("q", bytes([i]), i % 3, dedup=f"k{i}", delay=(2_000 if i == 4 else 0))
    node.get(s1, "q", vis=5_000)
    node.get(s1, "q", vis=1_000)
    msg = node.get(s2, "q")
    node.do("queue.nack", s2, "q", msg["id"], False, 0)
    node.get(s2, "idle", wait=30_000)
    node.get(s1, "idle", wait=60_000)
    node.tick(1_500)  # one lease expired
    return {"s1": s1, "s2": s2}


def _script_after(node: Node, sessions: dict[str, int]) -> list[Any]:
    s1, s2 = sessions["s1"], sessions["s2"]
    out: list[Any] = []

    def step(fn: Any, *args: Any) -> None:
        try:
            out.append(fn(*args))
        except CommandRejected as exc:
            out.append(("rejected", exc.code))
        out.append(node.done())
        out.append(node.queues.next_deadline())

    step(node.do, "queue.put", "q", b"dup", 0, "k1", 0)
    step(node.get, s1, "q", 0, 60_000)
    step(node.do, "queue.put", "idle", b"wake", 0, None, 0)
    step(node.tick, 1_000)
    for _ in range(4):
        step(node.get, s2, "q", 0, 3_000)
    step(node.tick, 5_000)
    step(node.tick, 20_000)  # s1 expires
    step(node.do, "queue.requeue_dead", "q", 10)
    for _ in range(3):
        step(node.get, s2, "q", 0, 3_000)
    step(node.query, "queue.list")
    step(node.query, "queue.dead_letters", "q", 10)
    step(node.tick, 60_000)
    step(node.do, "queue.put", "q", b"k1-again", 0, "k1", 0)
    return out


def test_snapshot_restore_mid_way_then_identical_behaviour() -> None:
    original = Node()
    sessions = _script_before(original)
    check_invariants(original.queues)
    snapshot = original.m.snapshot()
    replica = Node()
    replica.m.restore(snapshot)
    replica.index, replica.now = original.index, original.now
    assert queue_state(replica.m) == queue_state(original.m)
    assert replica.queues.next_deadline() == original.queues.next_deadline()
    expected = _script_after(original, sessions)
    assert _script_after(replica, sessions) == expected
    assert queue_state(replica.m) == queue_state(original.m)
    check_invariants(replica.queues)
    assert any(isinstance(item, dict) and item for item in expected)  # completions happened


# -- stateful property test against a reference model -------------------------------------------

CONFIG = {"a": (2, 5_000, 8), "b": (3, 0, 5)}  # max_deliveries, dedup_window_ms, max_depth
ATTEMPTS = 1000  # a DLQ's max_deliveries


@dataclass
class MMsg:
    id: int
    queue: str
    priority: int
    payload: bytes
    count: int = 0
    state: str = "ready"  # ready | delayed | inflight
    at: int | None = 0  # visible at (delayed) or lease deadline (inflight; None: session-held)
    holder: int | None = None
    dead: tuple[Any, ...] | None = None
    hold: tuple[str, str] | None = None  # (held key, tag) while in its own queue


class QueueModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.node = Node()
        for name, (deliveries, window, depth) in CONFIG.items():
            self.node.do("queue.declare", name, deliveries, window, depth)
        self.sessions = [self.node.session(3_600_000), self.node.session(3_600_000)]
        self.known = set(CONFIG)
        self.msgs: dict[int, MMsg] = {}
        self.put_ids: set[int] = set()
        self.finished: set[int] = set()  # acked, purged or dropped
        self.dedup: dict[tuple[str, str], tuple[int, int]] = {}
        self.waiters: list[list[Any]] = []  # [token, session, queue, deadline, visibility]
        self.expected: dict[int, tuple[bool, Any]] = {}
        self.counter = 0
        self.batched = False  # a put_many was applied: ids are index * MSG_ID_STRIDE + position

    # -- the model's own rules --------------------------------------------------------------

    def max_deliveries(self, queue: str) -> int:
        return CONFIG[queue][0] if queue in CONFIG else ATTEMPTS

    def ready(self, queue: str) -> list[MMsg]:
        ready = [m for m in self.msgs.values() if m.queue == queue and m.state == "ready"]
        return sorted(ready, key=lambda m: (-m.priority, m.id))

    def held(self, queue: str) -> dict[str, MMsg]:
        """Held key -> the live message of ``queue`` holding it (in the model, derived)."""
        return {m.hold[0]: m for m in self.msgs.values() if m.queue == queue and m.hold}

    def depth(self, queue: str) -> int:
        return sum(1 for m in self.msgs.values() if m.queue == queue)

    def lease(self, queue: str, sid: int, visibility: int | None) -> tuple[Any, ...]:
        m = self.ready(queue)[0]
        m.count += 1
        at = None if visibility is None else self.node.now + visibility  # None: session-held
        m.state, m.holder, m.at = "inflight", sid, at
        return summary_of_model(m)

    def serve(self) -> None:
        for queue in sorted(self.known):
            for waiter in [w for w in self.waiters if w[2] == queue]:
                if not self.ready(queue):
                    break
                self.waiters.remove(waiter)
                self.expected[waiter[0]] = (True, self.lease(queue, waiter[1], waiter[4]))

    def redeliver(self, m: MMsg, delay: int) -> None:
        m.holder = None
        if m.count >= self.max_deliveries(m.queue):
            self.dead_letter(m, "max_deliveries")
        elif delay:
            m.state, m.at = "delayed", self.node.now + delay
        else:
            m.state = "ready"

    def dead_letter(self, m: MMsg, reason: str) -> None:
        m.holder = None
        if m.queue.endswith(".dlq"):
            del self.msgs[m.id]
            self.finished.add(m.id)
            return
        m.dead, m.hold = (reason, m.queue, m.count, m.id), None  # the DLQ frees a held key
        m.queue += ".dlq"
        self.known.add(m.queue)
        m.count, m.state = 0, "ready"

    # -- rules ------------------------------------------------------------------------------

    @rule(
        queue=st.sampled_from(["a", "b"]),
        priority=st.sampled_from([0, 1, 5, 9]),
        delay=st.sampled_from([0, 0, 0, 1_500]),
        dedup=st.sampled_from([None, None, "k1", "k2"]),
        hold=st.sampled_from([None, None, "h1", "h2", "h3"]),
    )
    def put(
        self, queue: str, priority: int, delay: int, dedup: str | None, hold: str | None
    ) -> None:
        self.counter += 1
        payload = b"p%d" % self.counter
        tag = f"t{self.counter}"
        args: tuple[Any, ...] = (queue, payload, priority, dedup, delay)
        if hold is not None or self.counter % 2:  # old 5-argument commands stay in the mix
            args = (*args, None if hold is None else [hold, tag])
        index = self.node.index + 1
        mid = index * MSG_ID_STRIDE if self.batched else index
        expected = self.expect_put(queue, payload, priority, delay, dedup, hold, tag, mid)
        if expected is None:
            self.node.rejected(errors.LIMIT, "queue.put", *args)
            return
        assert self.node.do("queue.put", *args) == expected
        self.serve()

    @rule(
        queue=st.sampled_from(["a", "b"]),
        puts=st.lists(
            st.tuples(
                st.sampled_from([0, 1, 5, 9]),
                st.sampled_from([0, 0, 0, 1_500]),
                st.sampled_from([None, None, "k1", "k2"]),
                st.sampled_from([None, None, "h1", "h2", "h3"]),
            ),
            min_size=1,
            max_size=4,
        ),
    )
    def put_many(self, queue: str, puts: list[tuple[Any, ...]]) -> None:
        """Each message is its own put, in order; the waiters are served once, at the end."""
        base = (self.node.index + 1) * MSG_ID_STRIDE
        self.batched = True  # from this entry on, every put's id is index * stride + position
        rows, expected = [], []
        for position, (priority, delay, dedup, hold) in enumerate(puts):
            self.counter += 1
            payload, tag = b"p%d" % self.counter, f"t{self.counter}"
            rows.append([payload, priority, dedup, delay, None if hold is None else [hold, tag]])
            answer = self.expect_put(
                queue, payload, priority, delay, dedup, hold, tag, base + position
            )
            expected.append(answer or {"error": errors.LIMIT})
        got = self.node.do("queue.put_many", queue, rows)
        assert [{"error": g["error"]} if "error" in g else g for g in got] == expected
        self.serve()

    def expect_put(
        self,
        queue: str,
        payload: bytes,
        priority: int,
        delay: int,
        dedup: str | None,
        hold: str | None,
        tag: str,
        mid: int,
    ) -> dict[str, Any] | None:
        """The model's answer to one put (None: refused, the queue is full), applied to it."""
        seen = self.dedup.get((queue, dedup)) if dedup else None
        holder = self.held(queue).get(hold) if hold else None
        if holder is not None:
            return {"id": holder.id, "duplicate": True, "tag": holder.hold[1]}
        if seen is not None and seen[1] > self.node.now:
            return {"id": seen[0], "duplicate": True}
        if self.depth(queue) >= CONFIG[queue][2]:
            return None
        self.put_ids.add(mid)
        m = self.msgs[mid] = MMsg(mid, queue, priority, payload)
        m.hold = (hold, tag) if hold else None
        if delay:
            m.state, m.at = "delayed", self.node.now + delay
        if dedup and CONFIG[queue][1]:
            self.dedup[(queue, dedup)] = (mid, self.node.now + CONFIG[queue][1])
        return {"id": mid, "duplicate": False}

    @rule(
        slot=st.integers(0, 1),
        queue=st.sampled_from(["a", "b", "a", "b", "a.dlq"]),
        wait=st.sampled_from([0, 0, 2_500, 10_000]),
        visibility=st.sampled_from([1_000, 4_000, None]),
    )
    def get(self, slot: int, queue: str, wait: int, visibility: int) -> None:
        sid = self.sessions[slot]
        if queue not in self.known:
            self.node.rejected(errors.UNKNOWN_QUEUE, "queue.get", sid, queue, wait, visibility)
            return
        result = self.node.get(sid, queue, wait, visibility)
        if self.ready(queue):
            assert summary_of(result) == self.lease(queue, sid, visibility)
        elif wait == 0:
            assert result is None
        else:
            assert result == Pending(self.node.index)
            self.waiters.append([self.node.index, sid, queue, self.node.now + wait, visibility])

    @rule(
        slot=st.integers(0, 1),
        queue=st.sampled_from(["a", "b", "a.dlq"]),
        count=st.integers(1, 4),
        visibility=st.sampled_from([1_000, 4_000, None]),
    )
    def get_many(self, slot: int, queue: str, count: int, visibility: int) -> None:
        sid = self.sessions[slot]
        if queue not in self.known:
            self.node.rejected(errors.UNKNOWN_QUEUE, "queue.get_many", sid, queue, 0, 1_000, 1)
            return
        batch = self.node.do("queue.get_many", sid, queue, 0, visibility, count)
        expected = []
        while self.ready(queue) and len(expected) < count:
            expected.append(self.lease(queue, sid, visibility))
        assert [summary_of(m) for m in batch] == expected

    @rule(
        slot=st.integers(0, 1),
        order=st.permutations(["a", "b"]),
        count=st.integers(1, 3),
    )
    def get_any(self, slot: int, order: list[str], count: int) -> None:
        sid = self.sessions[slot]
        batch = self.node.do("queue.get_any", sid, order, 0, 4_000, count)
        first = next((q for q in order if self.ready(q)), None)
        expected = []
        while first is not None and self.ready(first) and len(expected) < count:
            expected.append(self.lease(first, sid, 4_000))
        assert [summary_of(m) for m in batch] == expected

    @rule(slot=st.integers(0, 1), data=st.data())
    def ack_many(self, slot: int, data: st.DataObject) -> None:
        sid = self.sessions[slot]
        picks = [self.pick(data) for _ in range(data.draw(st.integers(1, 3)))]
        queue = picks[0][1]
        ids = list(dict.fromkeys(mid for mid, _ in picks))
        result = self.node.do("queue.ack_many", sid, queue, ids)
        acked = [mid for mid in ids if self.leased_to(mid, queue, sid)]
        assert result == {"acked": len(acked), "unknown": [m for m in ids if m not in acked]}
        for mid in acked:
            del self.msgs[mid]
            self.finished.add(mid)

    def pick(self, data: st.DataObject) -> tuple[int, str]:
        leased = sorted(m.id for m in self.msgs.values() if m.state == "inflight")
        if leased and data.draw(st.booleans()):
            mid = data.draw(st.sampled_from(leased))
            return mid, self.msgs[mid].queue
        mid = data.draw(st.sampled_from(sorted(self.put_ids) or [1]))
        m = self.msgs.get(mid)
        return mid, (m.queue if m is not None else "a")

    def leased_to(self, mid: int, queue: str, sid: int) -> bool:
        m = self.msgs.get(mid)
        return m is not None and m.queue == queue and m.state == "inflight" and m.holder == sid

    @rule(slot=st.integers(0, 1), data=st.data())
    def ack(self, slot: int, data: st.DataObject) -> None:
        sid = self.sessions[slot]
        mid, queue = self.pick(data)
        if not self.leased_to(mid, queue, sid):
            self.node.rejected(errors.UNKNOWN_MESSAGE, "queue.ack", sid, queue, mid)
            return
        assert self.node.do("queue.ack", sid, queue, mid) is True
        del self.msgs[mid]
        self.finished.add(mid)

    @rule(
        slot=st.integers(0, 1),
        data=st.data(),
        requeue=st.booleans(),
        delay=st.sampled_from([0, 0, 1_200]),
    )
    def nack(self, slot: int, data: st.DataObject, requeue: bool, delay: int) -> None:
        sid = self.sessions[slot]
        mid, queue = self.pick(data)
        args = (sid, queue, mid, requeue, delay)
        if not self.leased_to(mid, queue, sid):
            self.node.rejected(errors.UNKNOWN_MESSAGE, "queue.nack", *args)
            return
        assert self.node.do("queue.nack", *args) is True
        m = self.msgs[mid]
        if requeue:
            self.redeliver(m, delay)
        else:
            self.dead_letter(m, "rejected")
        self.serve()

    @rule(advance=st.sampled_from([300, 1_000, 2_500, 5_000]))
    def tick(self, advance: int) -> None:
        self.node.now += advance
        now = self.node.now
        events: list[tuple[int, int, int]] = []
        for m in self.msgs.values():
            if m.state != "ready" and m.at is not None and m.at <= now:
                events.append((m.at, 0 if m.state == "delayed" else 1, m.id))
        events += [(w[3], 2, w[0]) for w in self.waiters if w[3] <= now]
        for _, kind, key in sorted(events):
            if kind == 0:
                self.msgs[key].state = "ready"
            elif kind == 1:
                self.redeliver(self.msgs[key], 0)
            else:
                self.serve()
                waiter = next((w for w in self.waiters if w[0] == key), None)
                if waiter is not None:
                    self.waiters.remove(waiter)
                    self.expected[key] = (True, None)
        self.dedup = {k: v for k, v in self.dedup.items() if v[1] > now}
        self.serve()
        self.node.tick(drain=False)

    @rule(slot=st.integers(0, 1))
    def close_session(self, slot: int) -> None:
        sid = self.sessions[slot]
        self.node.do("session.close", sid)
        for waiter in sorted(w for w in self.waiters if w[1] == sid):
            self.waiters.remove(waiter)
            self.expected[waiter[0]] = (False, errors.SESSION_EXPIRED)
        held = sorted((m.queue, m.id) for m in self.msgs.values() if m.holder == sid)
        for _, mid in held:
            self.redeliver(self.msgs[mid], 0)
        self.serve()
        self.sessions[slot] = self.node.session(3_600_000)

    @rule(queue=st.sampled_from(["a", "b"]))
    def delete_and_declare_again(self, queue: str) -> None:
        assert self.node.do("queue.delete", queue) is True
        for m in [m for m in self.msgs.values() if m.queue == queue]:
            del self.msgs[m.id]
            self.finished.add(m.id)
        for waiter in [w for w in self.waiters if w[2] == queue]:
            self.waiters.remove(waiter)
            self.expected[waiter[0]] = (False, errors.UNKNOWN_QUEUE)
        self.dedup = {k: v for k, v in self.dedup.items() if k[0] != queue}
        self.node.do("queue.declare", queue, *CONFIG[queue])

    @rule(queue=st.sampled_from(["a", "b"]))
    def purge(self, queue: str) -> None:
        gone = [m.id for m in self.msgs.values() if m.queue == queue and m.state != "inflight"]
        assert self.node.do("queue.purge", queue) == len(gone)
        for mid in gone:
            del self.msgs[mid]
        self.finished.update(gone)

    @rule(queue=st.sampled_from(["a", "b"]), count=st.integers(1, 3))
    def requeue_dead(self, queue: str, count: int) -> None:
        moved = 0
        for m in self.ready(queue + ".dlq"):
            if moved == count or self.depth(queue) >= CONFIG[queue][2]:
                break
            m.queue, m.count, m.dead = queue, 0, None
            moved += 1
        assert self.node.do("queue.requeue_dead", queue, count) == moved
        self.serve()

    # -- checks after every step --------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        part = self.node.queues
        check_invariants(part)
        done = self.node.done()
        got = {t: (ok, summary_of(v) if ok else v[0]) for t, (ok, v) in done.items()}
        assert got == self.expected
        self.expected = {}
        actual: dict[int, tuple[Any, ...]] = {}
        for name, q in part.queues.items():
            for mid, (_, _, count, dead) in q.messages.items():
                lease = q.inflight.get(mid)
                state = "inflight" if lease else "delayed" if mid in q.delayed else "ready"
                holder = lease[0] if lease else None
                dead = tuple(dead.values()) if dead else None
                at = lease[1] if lease else q.delayed.get(mid, 0)
                actual[mid] = (name, state, count, holder, dead, at)
        model = {
            m.id: (m.queue, m.state, m.count, m.holder, m.dead, m.at if m.state != "ready" else 0)
            for m in self.msgs.values()
        }
        assert actual == model
        for name, q in part.queues.items():
            held = {key: [m.id, m.hold[1]] for key, m in self.held(name).items() if m.hold}
            assert q.held == held, f"held keys of {name!r}"
        # no acknowledged put lost: every put is still somewhere, or was acked/purged/dropped
        assert self.put_ids == set(self.msgs) | self.finished
        assert set(part.queues) == self.known
        for name in CONFIG:
            stats = self.node.stats(name)
            assert stats["depth"] <= CONFIG[name][2]
            assert stats["consumers_waiting"] == sum(1 for w in self.waiters if w[2] == name)
        deadlines = [m.at for m in self.msgs.values() if m.state != "ready" and m.at is not None]
        deadlines += [w[3] for w in self.waiters] + [v[1] for v in self.dedup.values()]
        assert part.next_deadline() == (min(deadlines) if deadlines else None)

    @invariant()
    def survives_snapshot(self) -> None:
        if self.node.index % 7:
            return
        replica = CoordinationMachine()
        snapshot = self.node.m.snapshot()
        replica.restore(snapshot)
        assert queue_state(replica) == queue_state(self.node.m)


def summary_of(message: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if message is None:
        return None
    dead = message["dead_letter"]
    return (
        message["id"],
        message["queue"],
        message["priority"],
        message["payload"],
        message["delivery_count"],
        None if dead is None else tuple(dead.values()),
    )


def summary_of_model(m: MMsg) -> tuple[Any, ...]:
    return (m.id, m.queue, m.priority, m.payload, m.count, m.dead)


QueueModel.TestCase.settings = settings(
    max_examples=examples(quick=130, deep=400),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueModel = QueueModel.TestCase


# -- batches: get_many / ack_many ------------------------------------------------------------


def test_get_many_leases_a_batch_in_delivery_order(node: Node) -> None:
    sid = node.session()
    ids = [node.put("q", f"m{i}".encode(), prio) for i, prio in enumerate([0, 9, 5, 0])]
    batch = node.do("queue.get_many", sid, "q", 0, VIS, 3)
    assert [m["payload"] for m in batch] == [b"m1", b"m2", b"m0"]
    assert all(m["delivery_count"] == 1 and m["lease_expires_ms"] == node.now + VIS for m in batch)
    assert node.do("queue.get_many", sid, "q", 0, VIS, 10) == [node.queues.queues["q"].view(ids[3])]
    assert node.do("queue.get_many", sid, "q", 0, VIS, 10) == []  # empty, no wait
    stats = node.stats("q")
    assert (stats["ready"], stats["in_flight"]) == (0, 4)
    check_invariants(node.queues)
    node.rejected(errors.LIMIT, "queue.get_many", sid, "q", 0, VIS, 0)
    node.rejected(errors.LIMIT, "queue.get_many", sid, "q", 0, VIS, limits.BATCH_MAX + 1)


def test_blocking_get_many_is_served_a_batch_or_times_out_empty(node: Node) -> None:
    s1, s2 = node.session(), node.session()
    node.do("queue.declare", "q", None, None, None)
    many = node.do("queue.get_many", s1, "q", 10_000, VIS, 2)
    one = node.get(s2, "q", wait=10_000)
    assert isinstance(many, Pending) and isinstance(one, Pending)
    node.put("q", b"a")
    done = node.done()
    assert [m["payload"] for m in done[many.token][1]] == [b"a"]  # what was ready, as a list
    node.put("q", b"b")
    assert node.done()[one.token][1]["payload"] == b"b"  # a plain get still gets a dict
    later = node.do("queue.get_many", s1, "q", 5_000, VIS, 2)
    assert node.tick(5_000) == {later.token: (True, [])}
    check_invariants(node.queues)


def test_ack_many_acks_what_is_leased_and_reports_the_rest(node: Node) -> None:
    s1, s2 = node.session(), node.session()
    for i in range(3):
        node.put("q", f"m{i}".encode())
    mine = [m["id"] for m in node.do("queue.get_many", s1, "q", 0, VIS, 2)]
    theirs = node.get(s2, "q")["id"]
    result = node.do("queue.ack_many", s1, "q", [*mine, mine[0], theirs, 999_999])
    assert result == {"acked": 2, "unknown": [theirs, 999_999]}  # a repeated id acks once
    assert node.do("queue.ack_many", s1, "q", mine) == {"acked": 0, "unknown": mine}
    stats = node.stats("q")
    assert (stats["depth"], stats["in_flight"], stats["total_acked"]) == (1, 1, 2)
    check_invariants(node.queues)
    node.rejected(errors.BAD_COMMAND, "queue.ack_many", s1, "q", [])
    node.rejected(errors.BAD_COMMAND, "queue.ack_many", s1, "q", "1")
    node.rejected(errors.BAD_COMMAND, "queue.ack_many", s1, "q", ["1"])
    node.rejected(errors.UNKNOWN_SESSION, "queue.ack_many", 999_999, "q", [theirs])
    node.rejected(errors.UNKNOWN_QUEUE, "queue.ack_many", s1, "nope", [theirs])


def test_waiters_of_snapshots_without_max_count_restore_as_plain_gets() -> None:
    old = Node()
    sid = old.session()
    old.do("queue.declare", "q", None, None, None)
    pending = old.get(sid, "q", wait=10_000)
    sessions, queues = old.m.part("sessions").to_state(), old.queues.to_state()
    queues[1] = [row[:5] for row in queues[1]]  # the waiter row as written before get_many
    restored = Node()
    restored.m.part("sessions").from_state(sessions)
    restored.queues.from_state(queues)
    restored.index, restored.now = old.index, old.now
    restored.put("q", b"x")
    assert restored.done()[pending.token][1]["payload"] == b"x"


def test_delete_removes_the_queue_its_leases_and_fails_its_waiters(node: Node) -> None:
    s1, s2 = node.session(), node.session()
    node.put("q", b"leased")
    node.put("q", b"ready", dedup="d1")
    node.put("q", b"later", delay=5_000)
    node.do("queue.get_many", s1, "q", 0, VIS, 1)
    node.do("queue.declare", "other", None, None, None)
    waiting = node.get(s2, "other", wait=10_000)
    assert node.do("queue.delete", "q") is True
    assert node.do("queue.delete", "q") is False
    assert "q" not in [row["name"] for row in node.query("queue.list")]
    node.rejected(errors.UNKNOWN_QUEUE, "queue.get", s1, "q", 0, VIS)
    check_invariants(node.queues)
    assert node.queues.next_deadline() == node.now + 10_000  # only the waiter on "other"
    node.tick(6_000)  # the deleted queue's delayed message and lease come due: nothing happens
    node.put("q", b"again", dedup="d1")  # a new queue of that name remembers nothing
    assert node.get(s1, "q")["payload"] == b"again"
    pending = node.get(s2, "q", wait=10_000)
    node.do("queue.delete", "q")
    assert node.done() == {
        pending.token: (False, (errors.UNKNOWN_QUEUE, "queue 'q' was deleted", {}))
    }
    assert waiting.token not in node.done()
    check_invariants(node.queues)


def test_get_any_takes_the_first_listed_queue_with_messages(node: Node) -> None:
    sid = node.session()
    node.do("queue.declare", "a", None, None, None)
    node.put("b", b"b1")
    node.put("b", b"b2")
    node.put("c", b"c1", 9)
    got = node.do("queue.get_any", sid, ["a", "b", "c"], 0, VIS, 5)
    assert [(m["queue"], m["payload"]) for m in got] == [("b", b"b1"), ("b", b"b2")]
    got = node.do("queue.get_any", sid, ["c", "b"], 0, VIS, 5)
    assert [(m["queue"], m["payload"]) for m in got] == [("c", b"c1")]
    assert node.do("queue.get_any", sid, ["a", "b", "c"], 0, VIS, 5) == []
    check_invariants(node.queues)
    node.rejected(errors.UNKNOWN_QUEUE, "queue.get_any", sid, ["a", "nope"], 0, VIS, 1)
    node.rejected(errors.BAD_COMMAND, "queue.get_any", sid, [], 0, VIS, 1)
    node.rejected(errors.BAD_COMMAND, "queue.get_any", sid, "a", 0, VIS, 1)
    node.rejected(errors.BAD_COMMAND, "queue.get_any", sid, [f"q{i}" for i in range(33)], 0, VIS, 1)


def test_blocked_get_any_waits_in_every_queue_and_is_served_once(node: Node) -> None:
    s1, s2 = node.session(), node.session()
    for name in ("a", "b"):
        node.do("queue.declare", name, None, None, None)
    both = node.do("queue.get_any", s1, ["a", "b"], 10_000, VIS, 4)
    only_a = node.get(s2, "a", wait=10_000)
    assert node.stats("a")["consumers_waiting"] == 2 and node.stats("b")["consumers_waiting"] == 1
    check_invariants(node.queues)
    node.put("b", b"to-b")
    assert [m["payload"] for m in node.done()[both.token][1]] == [b"to-b"]
    assert node.stats("a")["consumers_waiting"] == 1  # gone from "a" too
    node.put("a", b"to-a")
    assert node.done()[only_a.token][1]["payload"] == b"to-a"
    check_invariants(node.queues)
    later = node.do("queue.get_any", s1, ["a", "b"], 5_000, VIS, 1)
    snapshot = node.m.snapshot()
    replica = Node()
    replica.m.restore(snapshot)
    replica.index, replica.now = node.index, node.now
    check_invariants(replica.queues)
    for n in (node, replica):
        n.do("queue.delete", "b")  # its waiter fails and leaves "a" as well
        assert n.done() == {
            later.token: (False, (errors.UNKNOWN_QUEUE, "queue 'b' was deleted", {}))
        }
        assert n.stats("a")["consumers_waiting"] == 0
        check_invariants(n.queues)
    timed = node.do("queue.get_any", s2, ["a"], 1_000, VIS, 1)
    assert node.tick(1_000) == {timed.token: (True, [])}
    node.do("session.close", s1)
    check_invariants(node.queues)


# -- put_many -----------------------------------------------------------------------------------


def test_put_many_answers_each_message_and_refuses_only_the_bad_ones() -> None:
    node = Node()
    node.do("queue.declare", "q", None, None, 3)
    before = node.put("q")  # ids are entry indexes until the first batch
    assert before == node.index
    big = b"x" * (limits.PAYLOAD_MAX_BYTES + 1)
    rows = [[b"a", 9, None, 0, None], [big, 0, None, 0, None], [b"b", 0, "d1", 0, None]]
    rows += [[b"c", 0, "d1", 0, None], [b"d", 0, None, 0, None], [b"e"]]
    got = node.do("queue.put_many", "q", rows)
    base = node.index * MSG_ID_STRIDE
    assert got[0] == {"id": base, "duplicate": False}
    assert got[1]["error"] == errors.LIMIT and "payload" in got[1]["message"]
    assert got[2] == {"id": base + 2, "duplicate": False}
    assert got[3] == {"id": base + 2, "duplicate": True}  # a dedup id repeated in the batch
    assert got[4]["error"] == errors.LIMIT and "full" in got[4]["message"]  # depth 3
    assert got[5]["error"] == errors.BAD_COMMAND
    assert node.stats("q")["depth"] == 3
    sid = node.session()
    order = [node.get(sid, "q")["id"] for _ in range(3)]
    assert order == [base, before, base + 2]  # priority 9 first, then ids in log order
    node.do("queue.ack", sid, "q", base)
    after = node.put("q", b"f")  # single puts now use the stride too, and still sort last
    assert after == node.index * MSG_ID_STRIDE and after > base + 5


@pytest.mark.parametrize(
    "args",
    [["q", []], ["q", "x"], ["q", [[b"a", 0, None, 0, None]] * (limits.BATCH_MAX + 1)], ["q"]],
)
def test_put_many_refuses_a_malformed_batch_before_it_is_proposed(args: list[Any]) -> None:
    node = Node()
    command = msgpack.packb(["queue.put_many", *args], use_bin_type=True)
    with pytest.raises(CommandRejected) as info:
        node.m.validate(command)
    assert info.value.code == errors.BAD_COMMAND
    node.rejected(errors.BAD_COMMAND, "queue.put_many", *args)
    assert node.query("queue.list") == []


def test_put_many_wakes_waiters_once_with_the_batch_in_priority_order() -> None:
    node = Node()
    node.do("queue.declare", "q", None, None, None)
    sid = node.session()
    pending = node.get(sid, "q", wait=5_000)
    rows = [[b"low", 0, None, 0, None], [b"high", 9, None, 0, None]]
    node.do("queue.put_many", "q", rows)
    assert node.done()[pending.token][1]["payload"] == b"high"


def test_the_id_switch_is_replicated_state() -> None:
    node = Node()
    node.do("queue.put_many", "q", [[b"a", 0, None, 0, None]])
    replica = Node()
    replica.index, replica.now = node.index, node.now
    replica.m.restore(node.m.snapshot())
    assert node.put("q") == replica.put("q") == node.index * MSG_ID_STRIDE
    old = msgpack.unpackb(Node().m.snapshot(), raw=False, strict_map_key=False)
    old[1]["queues"] = old[1]["queues"][:3]  # a snapshot from before put_many
    fresh = Node()
    fresh.m.restore(msgpack.packb(old, use_bin_type=True))
    assert fresh.put("q") == fresh.index


_ODD_PUTS = st.lists(
    st.just([])
    | st.tuples(
        st.sampled_from([b"a", b"bb", "text", b"x" * (limits.PAYLOAD_MAX_BYTES + 1)]),
        st.sampled_from([0, 9, 10, -1, True, 1.0, None]),
        st.sampled_from([None, None, "d1", ""]),
        st.sampled_from([0, 0, 5, False, -1]),
        st.sampled_from([None, None, ["h", "t"]]),
    ).map(list),
    min_size=1,
    max_size=8,
)


@settings(max_examples=examples(quick=150, deep=1_000), deadline=None)
@given(batches=st.lists(_ODD_PUTS, min_size=1, max_size=4), max_depth=st.sampled_from([None, 6]))
def test_put_many_plain_path_changes_nothing_but_speed(
    batches: list[list[Any]], max_depth: int | None
) -> None:
    """``put_many`` enqueues a plain message (no dedup id, no delay, no held key, valid fields)
    without ``_put_one``'s general checks. Fed the same odd batches, a replica with that path
    and one without it give the same answers and the same snapshot."""
    fast, general = Node(), Node()
    answers = {}
    for node in (fast, general):
        if max_depth is not None:  # else the first put creates the queue
            node.do("queue.declare", "q", None, None, max_depth)
        with pytest.MonkeyPatch.context() as patch:
            if node is general:
                patch.setattr(queues_put, "_plain", lambda item: False)
            answers[id(node)] = [node.do("queue.put_many", "q", batch) for batch in batches]
    assert answers[id(fast)] == answers[id(general)]
    assert fast.m.snapshot() == general.m.snapshot()
