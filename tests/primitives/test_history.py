"""The change history behind ``coord.watch``, driven through ``CoordinationMachine`` by hand:
versions are gap-free and follow the log, cache and lock changes are recorded with their
details, ``history.since`` filters and pages, retention bounds give ``compacted`` naming the
oldest version, snapshots carry the history, and replicas agree."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from coordination.primitives import commands as c
from coordination.primitives.history import History
from coordination.primitives.machine import CoordinationMachine
from raft_node.core.fsm import CommandRejected


class Node:
    def __init__(self, machine: CoordinationMachine | None = None) -> None:
        self.m = machine or CoordinationMachine()
        self.index = 0
        self.now = 1_000

    def do(self, command: bytes) -> Any:
        self.index += 1
        return self.m.apply(self.index, command, self.now)

    def tick(self, advance_ms: int) -> None:
        self.now += advance_ms
        self.do(self.m.tick_command())

    def query(self, command: bytes) -> Any:
        return self.m.query(command)

    def since(self, prefix: str = "", after: int | None = 0, exact: bool = False, limit=100):
        return self.query(c.history_since(prefix, exact, after, limit))

    def watch_events(self) -> list[list[Any]]:
        return [payload for topic, payload in self.m.drain_events() if topic == "watch"]


def _history(node: Node) -> History:
    part = node.m.part("history")
    assert isinstance(part, History)
    return part


def test_cache_and_lock_changes_get_consecutive_versions_in_log_order():
    n = Node()
    sid = n.do(c.session_open(10_000))["session"]
    n.do(c.cache_set("a", b"1", None))
    n.do(c.cache_set("b", b"2", 5_000))
    n.do(c.lock_acquire(sid, "L", "exclusive", "o", 0))
    n.do(c.cache_delete("a"))
    n.do(c.lock_release(sid, "L", "o"))
    events = n.since()["events"]
    assert [e[0] for e in events] == [1, 2, 3, 4, 5]
    assert [(e[3], e[4], e[5]) for e in events] == [
        ("cache", "put", "a"),
        ("cache", "put", "b"),
        ("lock", "acquired", "L"),
        ("cache", "delete", "a"),
        ("lock", "released", "L"),
    ]
    put_b = events[1]
    assert put_b[1] == 3 and put_b[2] == 1_000  # its entry's index and log time
    assert put_b[6] == b"2" and put_b[7] == {"key_version": 3, "expires_ms": 6_000}
    acquired = events[2]
    assert acquired[7] == {"token": 4, "owner": "o", "mode": "exclusive", "session": sid}
    assert n.watch_events() == events  # the same events, streamed as applied


def test_expiry_clear_and_session_end_are_changes_too():
    n = Node()
    sid = n.do(c.session_open(1_000))["session"]
    n.do(c.cache_set("t", b"x", 100))
    n.do(c.lock_acquire(sid, "L", "exclusive", "o", 0))
    n.tick(200)  # the TTL of "t" ran out
    n.tick(5_000)  # the session expired: its lock is released
    n.do(c.cache_clear())
    kinds = [(e[3], e[4], e[5]) for e in n.since()["events"]]
    assert kinds == [
        ("cache", "put", "t"),
        ("lock", "acquired", "L"),
        ("cache", "expire", "t"),
        ("lock", "released", "L"),
        ("cache", "clear", ""),
    ]


def test_rejected_commands_and_queries_record_nothing():
    n = Node()
    with pytest.raises(CommandRejected):
        n.do(c.lock_release(99, "L", "o"))
    n.query(c.cache_get("a"))
    assert n.since() == {"events": [], "revision": 0, "oldest": 1, "more": False}


def test_since_filters_by_prefix_or_exact_key_and_a_clear_reaches_everyone():
    n = Node()
    for key in ("job:1", "job:10", "other", "job:2"):
        n.do(c.cache_set(key, b"v", None))
    n.do(c.cache_clear())
    assert [e[5] for e in n.since("job:")["events"]] == ["job:1", "job:10", "job:2", ""]
    assert [e[5] for e in n.since("job:1", exact=True)["events"]] == ["job:1", ""]
    assert [e[0] for e in n.since("job:", after=2)["events"]] == [4, 5]
    assert n.since("job:", after=5)["events"] == []
    assert n.since(after=None) == {"events": [], "revision": 5, "oldest": 1, "more": False}


def test_since_pages_with_more():
    n = Node()
    for i in range(7):
        n.do(c.cache_set(f"k{i}", b"v", None))
    page = n.since(after=0, limit=3)
    assert [e[0] for e in page["events"]] == [1, 2, 3] and page["more"] is True
    last = n.since(after=6, limit=3)
    assert [e[0] for e in last["events"]] == [7] and last["more"] is False


def test_retention_drops_the_oldest_and_resuming_before_it_is_compacted():
    n = Node()
    n.m.history.max_events = 5
    for i in range(8):
        n.do(c.cache_set(f"k{i}", b"v", None))
    status = n.query(c.history_status())
    assert status["revision"] == 8 and status["oldest"] == 4 and status["retained"] == 5
    assert [e[0] for e in n.since(after=3)["events"]] == [4, 5, 6, 7, 8]
    with pytest.raises(CommandRejected) as info:
        n.since(after=2)
    assert info.value.code == "compacted"
    assert info.value.details == {"revision": 8, "oldest": 4}
    assert "oldest is 4" in info.value.message


def test_retention_is_bounded_by_bytes_too():
    n = Node()
    n.m.history.max_bytes = 3_000
    for i in range(10):
        n.do(c.cache_set(f"k{i}", b"x" * 900, None))
    status = n.query(c.history_status())
    assert status["bytes"] <= 3_000 and status["retained"] == 3 and status["oldest"] == 8


def test_bad_since_arguments_are_rejected():
    n = Node()
    for args in (["a", False, -1, 10], ["a", "no", 0, 10], ["a", False, 0, 0], [1, False, 0, 1]):
        with pytest.raises(CommandRejected) as info:
            n.query(msgpack.packb(["history.since", *args]))
        assert info.value.code == "bad_command"


def test_the_history_survives_a_snapshot_and_versions_continue():
    n = Node()
    sid = n.do(c.session_open(10_000))["session"]
    n.do(c.cache_set("a", b"1", None))
    n.do(c.lock_acquire(sid, "L", "exclusive", "o", 0))
    restored = Node()
    restored.m.restore(n.m.snapshot())
    assert restored.watch_events() == []  # restoring is not a change
    assert restored.since() == n.since()
    restored.index, restored.now = n.index, n.now
    for node in (n, restored):
        node.do(c.lock_release(sid, "L", "o"))
    assert restored.since() == n.since() and n.since()["revision"] == 3


def test_a_snapshot_from_before_the_history_restores_an_empty_one():
    n = Node()
    n.do(c.cache_set("a", b"1", None))
    version, state = msgpack.unpackb(n.m.snapshot(), raw=False, strict_map_key=False)
    del state["history"]
    restored = Node()
    restored.m.restore(msgpack.packb([version, state], use_bin_type=True))
    assert restored.since() == {"events": [], "revision": 0, "oldest": 1, "more": False}


def test_replicas_applying_the_same_log_have_the_same_history():
    log = [c.session_open(5_000)]
    log += [c.cache_set(f"k{i % 5}", bytes([i]), 50 if i % 3 else None) for i in range(40)]
    log += [c.lock_acquire(1, f"L{i % 2}", "shared", f"o{i}", 0) for i in range(6)]
    replicas = [Node(), Node()]
    for node in replicas:
        for command in log:
            node.do(command)
        node.tick(10_000)
    assert replicas[0].since(limit=1_000) == replicas[1].since(limit=1_000)
    assert replicas[0].since(limit=1_000)["revision"] > len(log)  # expiries and releases too
