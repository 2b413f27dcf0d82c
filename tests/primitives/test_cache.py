"""The cache part through ``CoordinationMachine``: ops, TTL by log time, eviction, the Redis
mirror helpers (change sequence), linearizable L1 coherence (writes to held keys are queued and
take effect once no L1 can serve the old value), limits, snapshots, a stateful comparison
against a naive model, and a linearizability check of clients with L1s following the protocol
(which fails with the old "effect at once" behaviour)."""

from __future__ import annotations

import itertools
import random
import re

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from search_depth import examples, seeds

from coordination.primitives import cache as cache_mod
from coordination.primitives import cache_queue, cache_store, limits
from coordination.primitives.cache import Cache
from coordination.primitives.machine import TICK, CoordinationMachine
from raft_node.core.fsm import CommandRejected, Pending
from raft_node.core.messages import Entry
from raft_node.host.applier import Applier, encode_command
from raft_node.sim.linearizability import Operation, check_operations
from raft_node.sim.models import RegisterModel

T0 = 1_000_000


class Driver:
    """Applies ``[op, *args]`` at increasing indexes with a controllable log clock."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.m = CoordinationMachine()
        self.cache: Cache = self.m.part("cache")  # type: ignore[assignment]
        if max_bytes is not None:
            self.cache.max_bytes = max_bytes
        self.index = 0
        self.now = T0
        self.applied_now = T0  # log time of the last applied entry: what queries see

    def apply(self, op: str, *args):
        self.index += 1
        self.applied_now = self.now
        return self.m.apply(self.index, msgpack.packb([op, *args]), self.now)

    def code(self, op: str, *args) -> str:
        before = self.state()
        with pytest.raises(CommandRejected) as info:
            self.apply(op, *args)
        assert self.state() == before, "a rejected command changed state"
        assert self.m.drain_completions() == []
        return info.value.code

    def state(self):
        """The machine's snapshot, except the log time a rejected entry still carries (the
        cache's, the results part's and the rate limits' clocks for queries)."""
        state = msgpack.unpackb(self.m.snapshot(), strict_map_key=False)
        state[1]["cache"]["counters"][3] = None
        state[1]["results"]["counters"][0] = None
        state[1]["ratelimits"]["counters"][0] = None
        return state

    def query(self, op: str, *args):
        return self.m.query(msgpack.packb([op, *args]))

    def get(self, key: str):
        return self.query("cache.get", key)

    def tick(self) -> None:
        self.index += 1
        self.applied_now = self.now
        self.m.apply(self.index, TICK, self.now)

    def session(self, ttl: int = 60_000) -> int:
        return self.apply("session.open", ttl, "test")["session"]

    def done(self) -> list[tuple[int, bool, object]]:
        """Completions since the last call; a failure's ``(code, message)`` becomes its code."""
        return [(t, ok, v if ok else v[0]) for t, ok, v in self.m.drain_completions()]

    def events(self) -> list[tuple[str, list]]:
        """L1 invalidations (the ``watch`` history has its own tests)."""
        return [e for e in self.m.drain_events() if e[0] != "watch"]

    def stats(self) -> dict:
        return self.query("cache.stats")

    def restored(self) -> Driver:
        copy = Driver(self.cache.max_bytes)
        copy.m.restore(self.m.snapshot())
        copy.cache.waits_for_holders = self.cache.waits_for_holders
        copy.index, copy.now, copy.applied_now = self.index, self.now, self.applied_now
        return copy


def _rec(value: bytes, version: int, expires: int | None = None) -> dict:
    return {"value": value, "version": version, "expires_ms": expires}


# -- basic ops ----------------------------------------------------------------------------------


def test_set_get_delete_and_versions_are_indexes():
    d = Driver()
    assert d.get("k") is None
    assert d.apply("cache.set", "k", b"v1", None) == d.index == 1
    assert d.get("k") == {"value": b"v1", "version": 1, "expires_ms": None}
    d.apply("session.open", 5_000, "x")  # other entries use indexes too
    assert d.apply("cache.set", "k", b"v2", 1000) == 3
    assert d.get("k") == {"value": b"v2", "version": 3, "expires_ms": T0 + 1000}
    assert d.apply("cache.delete", "k") is True
    assert d.apply("cache.delete", "k") is False
    assert d.get("k") is None
    assert d.query("cache.get_many", ["k", "x"]) == [None, None]


def test_add_only_when_absent_or_expired():
    d = Driver()
    assert d.apply("cache.add", "k", b"a", 100) == 1
    assert d.apply("cache.add", "k", b"b", None) is None
    assert d.get("k")["value"] == b"a"
    d.now += 100  # expired: add succeeds even before a tick removed it
    assert d.apply("cache.add", "k", b"c", None) == 3
    assert d.get("k") == {"value": b"c", "version": 3, "expires_ms": None}


def test_incr_integers_missing_non_integer_and_overflow():
    d = Driver()
    assert d.code("cache.incr", "n", 1) == cache_mod.UNKNOWN_KEY
    d.apply("cache.set", "n", b"41", 5_000)
    assert d.apply("cache.incr", "n", 1) == 42
    assert d.apply("cache.incr", "n", -50) == -8
    assert d.get("n") == {"value": b"-8", "version": 4, "expires_ms": T0 + 5_000}  # TTL kept
    for bad in (b"x", b"1.5", b" 1", b"+1", b"", "٣".encode()):
        d.apply("cache.set", "s", bad, None)
        assert d.code("cache.incr", "s", 1) == "not_integer"
    d.apply("cache.set", "big", str(2**63 - 1).encode(), None)
    assert d.code("cache.incr", "big", 1) == "limit_exceeded"
    assert d.code("cache.incr", "n", 2**63) == "limit_exceeded"
    assert d.code("cache.incr", "n", True) == "bad_command"
    d.now += 5_000
    assert d.code("cache.incr", "n", 1) == cache_mod.UNKNOWN_KEY  # expired


def test_cas_by_version_including_absent():
    d = Driver()
    assert d.apply("cache.cas", "k", 7, b"x", None) is False  # absent, expected a version
    assert d.apply("cache.cas", "k", None, b"a", 100) == 2  # absent, expected absent
    assert d.apply("cache.cas", "k", None, b"b", None) is False
    assert d.apply("cache.cas", "k", 1, b"b", None) is False
    assert d.apply("cache.cas", "k", 2, b"b", None) == 5
    assert d.get("k") == {"value": b"b", "version": 5, "expires_ms": None}
    d.apply("cache.set", "t", b"1", 10)
    d.now += 10
    assert d.apply("cache.cas", "t", 6, b"2", None) is False  # expired: its version is gone
    assert d.apply("cache.cas", "t", None, b"2", None) == 8
    assert d.code("cache.cas", "k", "5", b"x", None) == "bad_command"


def test_touch_moves_expiry_and_bumps_version():
    d = Driver()
    assert d.apply("cache.touch", "k", 100) is False
    d.apply("cache.set", "k", b"v", 100)
    d.now += 50
    assert d.apply("cache.touch", "k", 100) is True
    assert d.get("k") == {"value": b"v", "version": 3, "expires_ms": T0 + 150}
    assert d.apply("cache.touch", "k", None) is True
    d.now += 10_000
    assert d.get("k")["expires_ms"] is None


def test_set_many_delete_many_clear():
    d = Driver()
    assert d.apply("cache.set_many", [["a", b"1"], ["b", b"2"], ["c", b"3"]], None) == [1, 1, 1]
    assert d.query("cache.get_many", ["a", "b", "z"]) == [
        {"value": b"1", "version": 1, "expires_ms": None},
        {"value": b"2", "version": 1, "expires_ms": None},
        None,
    ]
    assert d.apply("cache.set_many", [["d", b"4"], ["d", b"5"]], 10) == [2, 2]
    assert d.get("d") == {"value": b"5", "version": 2, "expires_ms": T0 + 10}
    assert d.apply("cache.delete_many", ["a", "a", "z", "b"]) == 2
    assert d.apply("cache.set_many", [], None) == []
    assert d.apply("cache.delete_many", []) == 0
    assert d.apply("cache.clear") == 2
    assert d.stats()["keys"] == 0
    assert d.stats()["bytes"] == 0
    assert d.apply("cache.clear") == 0


def test_keys_listing_and_stats():
    d = Driver()
    d.apply("cache.set_many", [["user:2", b"bb"], ["user:1", b"a"], ["job:1", b"ccc"]], None)
    d.apply("cache.set", "user:3", b"", 5)
    assert d.query("cache.keys", "user:", 2) == [
        {"key": "user:1", "version": 1, "size": 1, "expires_ms": None},
        {"key": "user:2", "version": 1, "size": 2, "expires_ms": None},
    ]
    assert [k["key"] for k in d.query("cache.keys", "", 10)] == [
        "job:1",
        "user:1",
        "user:2",
        "user:3",
    ]
    d.now += 5
    d.apply("cache.delete", "nothing")  # queries see the log time of the last cache entry
    assert [k["key"] for k in d.query("cache.keys", "user:", 10)] == ["user:1", "user:2"]
    stats = d.stats()
    size = sum(len(k) + len(v) + cache_mod.ENTRY_OVERHEAD for k, v in [
        ("user:2", b"bb"), ("user:1", b"a"), ("job:1", b"ccc"), ("user:3", b"")
    ])  # fmt: skip
    assert stats["bytes"] == size and stats["keys"] == 4
    assert stats["latest_change"] == 4  # one change per key written
    assert stats["pending_writes"] == 0 and stats["l1_holders"] == 0
    with pytest.raises(CommandRejected) as info:
        d.query("cache.keys", "", 0)
    assert info.value.code == "limit_exceeded"


def test_fill_counters_count_found_evicted_and_missing_keys_and_survive_snapshots():
    """The admin's cluster-side hit rate: fills (L1 misses) that found the key in memory, found
    only an evicted version, or found nothing; rejected fills count nothing."""
    d = Driver(max_bytes=2 * (len("k1") + 10 + cache_mod.ENTRY_OVERHEAD))
    s = d.session()
    d.apply("cache.set", "k1", b"0123456789", None)
    d.apply("cache.fill", s, "k1", 1_000)  # found in memory
    d.apply("cache.fill", s, "nope", 1_000)  # absent
    d.apply("cache.set", "k2", b"0123456789", None)
    d.apply("cache.set", "k3", b"0123456789", None)  # over budget: k1 is evicted
    assert d.get("k1")["evicted"] is True
    d.apply("cache.fill", s, "k1", 1_000)  # only an evicted version: the reader goes to Redis
    assert d.code("cache.fill", 999_999, "k2", 1_000) == "unknown_session"
    assert d.code("cache.fill", s, "k2", 1) == "limit_exceeded"  # lease below the minimum
    stats = d.stats()
    assert (stats["fills_total"], stats["fill_hits_total"], stats["fill_evicted_total"]) == (
        3,
        1,
        1,
    )
    copy = d.restored()
    assert copy.stats() == stats
    # A snapshot from before the counters existed (two totals) restores them as zero.
    state = msgpack.unpackb(d.m.snapshot(), strict_map_key=False)
    state[1]["cache"]["totals"] = state[1]["cache"]["totals"][:2]
    old = Driver()
    old.m.restore(msgpack.packb(state, use_bin_type=True))
    assert old.stats()["fills_total"] == 0
    assert old.stats()["evictions_total"] == stats["evictions_total"]


# -- TTL by log time ----------------------------------------------------------------------------


def test_expiry_reads_absent_at_once_and_tick_reclaims():
    d = Driver()
    d.apply("cache.set", "short", b"1", 100)
    d.apply("cache.set", "long", b"2", 300)
    d.apply("cache.set", "never", b"3", None)
    assert d.m.next_deadline() == T0 + 100
    d.now += 99
    d.tick()  # not due yet: nothing happens
    assert d.get("short")["value"] == b"1"
    d.now += 1
    d.apply("cache.set", "other", b"", None)  # any cache entry carries the log time forward
    assert d.get("short") is None  # expired: absent before any tick
    assert d.stats()["keys"] == 4  # still in memory
    d.tick()
    stats = d.stats()
    assert stats["keys"] == 3 and stats["expirations_total"] == 1
    assert d.cache.changes_since(4) == [("short", None, d.index, None)]  # recorded as delete
    assert d.m.next_deadline() == T0 + 300
    d.now += 200
    d.tick()
    assert d.get("long") is None and d.m.next_deadline() is None
    assert d.get("never")["value"] == b"3"


def test_rewrites_leave_only_the_current_deadline():
    d = Driver()
    for i in range(5):
        d.apply("cache.set", "k", b"v", 100 + i)
    d.apply("cache.set", "k", b"v", None)
    assert d.m.next_deadline() is None
    d.now += 1_000
    d.tick()
    assert d.get("k")["value"] == b"v"


# -- eviction -----------------------------------------------------------------------------------


def _entry_size(key: str, value: bytes) -> int:
    return len(key) + len(value) + cache_mod.ENTRY_OVERHEAD


def test_eviction_drops_least_recently_written_and_reads_say_evicted():
    each = _entry_size("a", b"x" * 36)  # 101 bytes
    d = Driver(max_bytes=3 * each)
    d.apply("cache.set", "a", b"x" * 36, None)
    d.apply("cache.set", "b", b"x" * 36, 10_000)
    d.apply("cache.set", "c", b"x" * 36, None)
    d.apply("cache.set", "a", b"y" * 36, None)  # a re-written: b is now the oldest
    d.apply("cache.set", "d", b"x" * 36, None)
    assert d.get("b") == {"evicted": True, "version": 2, "expires_ms": T0 + 10_000}
    assert d.stats()["bytes"] == 3 * each
    d.apply("cache.set", "e", b"x" * 36, None)
    assert d.get("c") == {"evicted": True, "version": 3, "expires_ms": None}
    assert list(d.cache.store.data) == ["a", "d", "e"]
    assert list(d.cache.store.evicted) == ["b", "c"]
    # Ops on evicted keys: they still exist (in Redis), at their version.
    assert d.apply("cache.add", "c", b"z", None) is None
    assert d.code("cache.incr", "c", 1) == cache_mod.EVICTED
    assert d.code("cache.touch", "c", 5) == cache_mod.EVICTED
    assert d.apply("cache.cas", "c", 2, b"z", None) is False
    s = d.session()
    fill = d.apply("cache.fill", s, "c", 1000)
    assert fill["evicted"] is True and fill["version"] == 3 and fill["value"] is None
    d.apply("cache.release", s, ["c"])
    assert d.apply("cache.delete", "b") is True  # a delete of an evicted key is recorded
    assert ("b", None, d.index, None) in d.cache.changes_since(0)
    assert d.get("b") is None
    assert d.apply("cache.cas", "c", 3, b"z", None) == d.index  # back in memory
    assert d.get("c")["value"] == b"z"
    stats = d.stats()
    assert stats["bytes"] <= 3 * each and stats["evictions_total"] == 3
    assert d.get("a") == {"evicted": True, "version": 4, "expires_ms": None}  # oldest now
    assert d.query("cache.get_many", ["a", "c"])[0]["version"] == 4


def test_evicted_key_expires_and_forgotten_records_become_deletes(monkeypatch):
    monkeypatch.setattr(cache_store, "EVICTED_MAX", 2)
    d = Driver(max_bytes=_entry_size("a", b"v"))
    d.apply("cache.set", "a", b"v", 100)
    d.apply("cache.set", "b", b"v", None)
    assert d.get("a")["evicted"] is True
    d.now += 100
    assert d.apply("cache.add", "a", b"w", None) == 3  # the evicted copy expired
    d.apply("cache.set", "c", b"v", None)  # evicts a (b, a evicted)
    d.apply("cache.set", "d", b"v", None)  # evicts c: b forgotten
    assert list(d.cache.store.evicted) == ["a", "c"]
    assert d.get("b") is None
    assert ("b", None, 5, None) in d.cache.changes_since(0)
    d.apply("cache.set", "e", b"v", 100)
    d.now += 100
    d.apply("cache.set", "f", b"v", None)  # e expired before eviction: an expiry, not eviction
    assert "e" not in d.cache.store.evicted and d.cache.store.tombstones["e"][0] == d.index


def test_forgetting_evicted_keys_skips_held_and_queued_ones(monkeypatch):
    monkeypatch.setattr(cache_store, "EVICTED_MAX", 1)
    d = Driver(max_bytes=_entry_size("a", b"v"))
    s = d.session()  # 1
    d.apply("cache.set", "a", b"v", None)  # 2
    d.apply("cache.set", "b", b"v", None)  # 3: a evicted
    d.apply("cache.fill", s, "a", 1_000)  # 4: a held (as evicted)
    d.apply("cache.set", "c", b"v", None)  # 5: b evicted; a is held so b is forgotten
    assert list(d.cache.store.evicted) == ["a"] and d.get("b") is None
    assert d.apply("cache.set", "a", b"w", None) == Pending(6)  # a queued (and still held)
    d.apply("cache.set", "d", b"v", None)  # 7: c evicted: nothing forgettable but c
    assert list(d.cache.store.evicted) == ["a"]
    d.apply("cache.release", s, ["a"])  # 8: the write takes effect (a back in memory)
    assert d.done() == [(6, True, 6)]
    assert d.get("a") == {"value": b"w", "version": 6, "expires_ms": None}


def test_value_larger_than_the_budget_is_evicted_at_once():
    d = Driver(max_bytes=100)
    assert d.apply("cache.set", "k", b"x" * 200, None) == 1
    assert d.get("k") == {"evicted": True, "version": 1, "expires_ms": None}
    assert d.stats()["bytes"] == 0


# -- Redis mirror helpers -----------------------------------------------------------------------


def test_changes_since_reports_changes_in_change_order():
    d = Driver()
    assert d.cache.changes_since(0) == [] and d.cache.latest_change() == 0
    d.apply("cache.set", "a", b"1", None)  # version 1, change 1
    d.apply("cache.set", "b", b"2", 500)  # 2, 2
    d.apply("cache.set", "c", b"3", None)  # 3, 3
    d.apply("cache.delete", "a")  # 4, 4
    d.apply("cache.incr", "c", 1)  # 5, 5
    assert d.cache.changes_since(0) == [
        ("b", b"2", 2, T0 + 500),
        ("a", None, 4, None),
        ("c", b"4", 5, None),
    ]
    assert d.cache.changes_since(4) == [("c", b"4", 5, None)]
    assert d.cache.changes_since(5) == []
    d.apply("cache.set", "a", b"again", None)  # 6: the tombstone is superseded
    assert d.cache.changes_since(3) == [("c", b"4", 5, None), ("a", b"again", 6, None)]
    assert d.cache.latest_change() == 6
    d.apply("cache.add", "a", b"no", None)  # changes nothing
    assert d.cache.latest_change() == 6
    d.apply("cache.set_many", [["x", b""], ["y", b""]], None)  # one change per key
    assert d.cache.latest_change() == 8
    assert d.cache.current_values() == [
        ("b", b"2", 2, T0 + 500),
        ("c", b"4", 5, None),
        ("a", b"again", 6, None),
        ("x", b"", 8, None),
        ("y", b"", 8, None),
    ]


def test_changes_are_numbered_in_effect_order_not_version_order():
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.set", "x", b"1", None)  # 2, change 1
    d.apply("cache.fill", s, "x", 1_000)  # 3
    assert d.apply("cache.set", "x", b"2", None) == Pending(4)
    assert d.apply("cache.set", "y", b"1", None) == 5  # change 2
    assert d.cache.changes_since(1) == [("y", b"1", 5, None)]
    watermark = d.cache.latest_change()  # what a mirror stores after pushing that
    assert watermark == 2
    d.apply("cache.release", s, ["x"])  # 6: version 4 takes effect, as change 3
    assert d.done() == [(4, True, 4)]
    # A version watermark (5) would skip this change for ever; the change number does not.
    assert d.cache.changes_since(watermark) == [("x", b"2", 4, None)]
    assert d.cache.latest_change() == 3


def test_changes_since_signals_full_resync_when_deletes_were_forgotten(monkeypatch):
    monkeypatch.setattr(cache_store, "TOMBSTONES_MAX", 2)
    d = Driver()
    d.apply("cache.set_many", [["a", b""], ["b", b""], ["c", b""], ["d", b""]], None)  # 1-4
    d.apply("cache.delete", "a")  # change 5
    d.apply("cache.delete", "b")  # change 6
    assert d.cache.changes_since(0)[-2:] == [("a", None, 2, None), ("b", None, 3, None)]
    d.apply("cache.delete", "c")  # change 7: "a"'s tombstone (change 5) is forgotten
    assert d.cache.changes_since(0) is None
    assert d.cache.changes_since(4) is None
    assert d.cache.changes_since(5) == [("b", None, 3, None), ("c", None, 4, None)]
    assert d.cache.current_values() == [("d", b"", 1, None)]  # what a full resync pushes
    d.apply("cache.clear")  # change 8
    assert d.cache.changes_since(7) is None
    assert d.cache.changes_since(8) == [] and d.cache.current_values() == []
    assert d.cache.latest_change() == 8


# -- L1 coherence: writes to held keys wait, invisibly ------------------------------------------


def test_a_write_to_a_held_key_is_invisible_until_the_holder_releases():
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.set", "k", b"v", None)  # 2
    fill = d.apply("cache.fill", s, "k", 1_000)  # 3
    assert fill == {
        "value": b"v",
        "version": 2,
        "expires_ms": None,
        "lease_until": T0 + 1_000,
        "lease_ms": 1_000,
        "registration": 3,
    }
    assert d.stats()["l1_holders"] == 1
    assert d.apply("cache.set", "k", b"w", None) == Pending(4)
    assert d.get("k") == _rec(b"v", 2)  # not in effect: the holder may still serve "v"
    assert d.query("cache.get_many", ["k", "z"]) == [_rec(b"v", 2), None]
    assert d.events() == [(f"session:{s}", ["invalidate", "k", 4])]
    assert d.done() == [] and d.stats()["pending_writes"] == 1
    assert d.apply("cache.set", "k", b"x", None) == Pending(5)  # queued behind, FIFO
    assert d.events() == []  # the holder was told already
    assert d.cache.latest_change() == 1  # nothing took effect
    assert d.apply("cache.release", s, ["k", "other"]) == 1  # 6
    assert d.done() == [(4, True, 4), (5, True, 5)]  # both, in log order, in this entry
    assert d.get("k") == _rec(b"x", 5)
    assert d.apply("cache.set", "k", b"y", None) == 7  # no holder, no queue: at once
    assert d.events() == [] and d.stats()["pending_writes"] == 0


def test_writes_that_change_nothing_or_touch_unheld_keys_are_immediate_and_silent():
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.set", "h", b"v", None)  # 2
    d.apply("cache.fill", s, "h", 1_000)  # 3
    d.apply("cache.fill", s, "absent", 1_000)  # 4: absent keys are held too
    assert d.apply("cache.set", "free", b"v", None) == 5
    assert d.apply("cache.add", "h", b"x", None) is None  # exists: changes nothing
    assert d.apply("cache.cas", "h", 99, b"x", None) is False
    assert d.apply("cache.cas", "absent", 2, b"x", None) is False
    assert d.apply("cache.delete", "absent") is False
    assert d.apply("cache.delete_many", ["absent", "nope"]) == 0
    assert d.code("cache.incr", "absent", 1) == cache_mod.UNKNOWN_KEY
    assert d.code("cache.incr", "h", 1) == "not_integer"
    assert d.apply("cache.touch", "free", None) is True
    assert d.events() == [] and d.done() == []
    assert d.apply("cache.add", "absent", b"v", None) == Pending(d.index)
    assert d.events() == [(f"session:{s}", ["invalidate", "absent", d.index])]


def test_a_late_release_does_not_drop_a_newer_registration():
    """Releases name the fill they undo: one that arrives after a re-fill is ignored."""
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.set", "k", b"v", None)  # 2
    first = d.apply("cache.fill", s, "k", 1_000)["registration"]  # 3
    second = d.apply("cache.fill", s, "k", 1_000)["registration"]  # 4: re-fill
    assert (first, second) == (3, 4)
    assert d.apply("cache.release", s, [["k", first]]) == 0  # stale: newer one stays
    assert d.stats()["l1_holders"] == 1
    assert d.apply("cache.release", s, [["k", second]]) == 1
    assert d.stats()["l1_holders"] == 0


def test_renew_extends_live_registrations_and_nothing_else():
    """A holder that keeps reading a key extends its lease in one entry instead of re-filling
    it. Only a live registration, named by its fill, and not told of a waiting write is
    extended; the lease never outlives the key's expiry."""
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.set", "k", b"v", None)  # 2
    d.apply("cache.set", "t", b"v", 5_000)  # 3: expires at T0 + 5,000
    reg_k = d.apply("cache.fill", s, "k", 1_000)["registration"]  # 4
    reg_t = d.apply("cache.fill", s, "t", 1_000)["registration"]  # 5
    reg_x = d.apply("cache.fill", s, "x", 1_000)["registration"]  # 6: absent keys too
    d.now += 900
    got = d.apply("cache.renew", s, [["k", reg_k], ["t", reg_t], ["x", reg_x + 99]], 10_000)
    assert got == [["k", 10_000], ["t", 4_100]]  # x: not that registration; t: capped
    d.now += 5_000  # k's first lease is long gone; the renewed one holds the write back
    assert d.apply("cache.set", "k", b"w", None) == Pending(d.index)
    assert d.events() == [(f"session:{s}", ["invalidate", "k", d.index])]
    waiting = d.index
    # Told of a waiting write: no renewal keeps the holder (and so the write) any longer.
    assert d.apply("cache.renew", s, [["k", reg_k]], 60_000) == []
    d.now += 5_001
    d.tick()
    assert (waiting, True, waiting) in d.done()
    assert d.get("k") == _rec(b"w", waiting)
    # Expired: nothing to renew, and a renewal cannot bring it back.
    assert d.apply("cache.renew", s, [["x", reg_x]], 1_000) == []
    assert d.stats()["l1_holders"] == 0
    assert d.code("cache.renew", s, ["k"], 1_000) == "bad_command"  # pairs only
    assert d.code("cache.renew", s, [["k", reg_k]], 10) == "limit_exceeded"  # lease < 100 ms


def test_fill_while_writes_wait_serves_the_old_value_uncacheable():
    d = Driver()
    s1, s2 = d.session(), d.session()  # 1, 2
    d.apply("cache.set", "k", b"old", 10_000)  # 3
    d.apply("cache.fill", s1, "k", 1_000)  # 4
    assert d.apply("cache.set", "k", b"new", None) == Pending(5)
    d.now += 10
    got = d.apply("cache.fill", s2, "k", 1_000)  # 6: not registered (writes could starve)
    assert got == {
        "value": b"old",
        "version": 3,
        "expires_ms": T0 + 10_000,
        "lease_until": d.now,
        "lease_ms": 0,
        "registration": None,
    }
    assert d.stats()["l1_holders"] == 1 and d.done() == []
    # The holder re-filling drops its registration: the write goes, in the same entry, after
    # the fill read the committed value.
    got = d.apply("cache.fill", s1, "k", 1_000)  # 7
    assert got["value"] == b"old" and got["lease_until"] == d.now
    assert d.done() == [(5, True, 5)]
    assert d.get("k") == _rec(b"new", 5) and d.stats()["l1_holders"] == 0
    got = d.apply("cache.fill", s2, "k", 1_000)  # registers again
    assert got["value"] == b"new" and got["lease_until"] == d.now + 1_000


def test_queued_cas_is_evaluated_when_it_takes_effect():
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.set", "k", b"a", None)  # 2
    d.apply("cache.fill", s, "k", 1_000)  # 3
    assert d.apply("cache.cas", "k", 2, b"b", None) == Pending(4)  # expects the current one
    assert d.apply("cache.cas", "k", 2, b"c", None) == Pending(5)  # so will this: too late
    assert d.apply("cache.cas", "k", 4, b"d", None) == Pending(6)  # expects the first cas
    assert d.apply("cache.cas", "k", 99, b"e", None) == Pending(7)  # queued: judged later
    assert d.get("k") == _rec(b"a", 2)
    d.apply("cache.release", s, ["k"])  # 8
    assert d.done() == [(4, True, 4), (5, True, False), (6, True, 6), (7, True, False)]
    assert d.get("k") == _rec(b"d", 6)


def test_queued_add_incr_delete_are_evaluated_when_they_take_effect():
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.fill", s, "k", 1_000)  # 2: held while absent
    assert d.apply("cache.set", "k", b"1", None) == Pending(3)
    assert d.apply("cache.add", "k", b"2", None) == Pending(4)  # absent now, not then
    assert d.apply("cache.incr", "k", 1) == Pending(5)  # unknown now: evaluated later
    assert d.apply("cache.delete", "k") == Pending(6)
    assert d.apply("cache.incr", "k", 1) == Pending(7)  # will fail: deleted by then
    assert d.apply("cache.touch", "k", 50) == Pending(8)
    assert d.get("k") is None
    d.apply("cache.release", s, ["k"])  # 9
    assert d.done() == [
        (3, True, 3),
        (4, True, None),
        (5, True, 2),
        (6, True, True),
        (7, False, cache_mod.UNKNOWN_KEY),
        (8, True, False),
    ]
    assert d.get("k") is None
    assert d.cache.changes_since(0) == [("k", None, 6, None)]


def test_set_many_over_a_held_and_a_free_key_takes_effect_atomically():
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.set_many", [["a", b"1"], ["b", b"1"]], None)  # 2
    d.apply("cache.fill", s, "a", 1_000)  # 3
    assert d.apply("cache.set_many", [["a", b"2"], ["b", b"2"]], None) == Pending(4)
    assert d.query("cache.get_many", ["a", "b"]) == [_rec(b"1", 2), _rec(b"1", 2)]
    assert d.apply("cache.set", "b", b"3", None) == Pending(5)  # b waits behind it
    assert d.apply("cache.set", "c", b"3", None) == 6  # an unrelated key: at once
    assert d.events() == [(f"session:{s}", ["invalidate", "a", 4])]  # b has no holder
    d.apply("cache.release", s, ["a"])  # 7
    assert d.done() == [(4, True, [4, 4]), (5, True, 5)]
    assert d.query("cache.get_many", ["a", "b"]) == [_rec(b"2", 4), _rec(b"3", 5)]


def test_writes_on_a_key_take_effect_in_log_order():
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.fill", s, "k", 1_000)  # 2
    d.apply("cache.fill", s, "j", 1_000)  # 3
    assert d.apply("cache.set", "k", b"1", None) == Pending(4)
    assert d.apply("cache.set_many", [["k", b"2"], ["j", b"2"]], None) == Pending(5)
    assert d.apply("cache.delete_many", ["k"]) == Pending(6)
    assert d.apply("cache.add", "k", b"3", None) == Pending(7)
    assert d.apply("cache.set", "j", b"3", None) == Pending(8)
    d.apply("cache.release", s, ["k"])  # 9: 4 goes; 5 waits for j, and so does all of k
    assert d.done() == [(4, True, 4)]
    assert d.get("k") == _rec(b"1", 4)
    d.apply("cache.release", s, ["j"])  # 10
    assert d.done() == [(5, True, [5, 5]), (6, True, 1), (7, True, 7), (8, True, 8)]
    assert d.query("cache.get_many", ["k", "j"]) == [_rec(b"3", 7), _rec(b"3", 8)]
    assert [c[:3] for c in d.cache.changes_since(0)] == [
        ("k", b"3", 7),  # k: set (4), set_many (5), delete (6), add (7); the latest stays
        ("j", b"3", 8),
    ]


def test_every_holder_must_drop_before_the_write_takes_effect():
    d = Driver()
    s1, s2, s3 = d.session(), d.session(), d.session()
    d.apply("cache.set", "k", b"v", None)
    d.apply("cache.fill", s1, "k", 1_000)
    d.apply("cache.fill", s2, "k", 5_000)
    d.apply("cache.fill", s3, "k", 60_000)
    token = d.apply("cache.delete", "k").token
    assert sorted(d.events()) == sorted(
        (f"session:{s}", ["invalidate", "k", token]) for s in (s1, s2, s3)
    )
    d.apply("cache.release", s2, ["k"])
    d.now += 1_000
    assert d.m.next_deadline() == d.now
    d.tick()  # s1's lease ran out
    assert d.done() == [] and d.get("k")["value"] == b"v"
    d.apply("session.close", s3)  # s3's session ended
    assert d.done() == [(token, True, True)]
    assert d.get("k") is None
    assert d.stats()["l1_holders"] == 0


def test_lease_expiry_lets_a_waiting_write_take_effect():
    d = Driver()
    s = d.session()
    d.apply("cache.fill", s, "k", 100)
    d.apply("cache.set", "k", b"1", None)
    token = d.apply("cache.incr", "k", 5).token
    d.now += 99
    d.tick()
    assert d.done() == [] and d.get("k") is None
    d.now += 1
    assert d.m.next_deadline() == d.now
    d.tick()
    assert d.done() == [(3, True, 3), (token, True, 6)]
    assert d.get("k") == _rec(b"6", token)


def test_a_lease_that_ran_out_is_dropped_by_the_next_cache_entry():
    d = Driver()
    s = d.session()
    d.apply("cache.fill", s, "k", 100)
    d.apply("cache.fill", s, "j", 1_000)
    assert d.apply("cache.set", "k", b"1", None) == Pending(4)
    d.now += 100  # no tick yet: the next cache entry notices
    assert d.apply("cache.release", s, ["nothing"]) == 0
    assert d.done() == [(4, True, 4)] and d.stats()["l1_holders"] == 1


def test_session_expiry_lets_a_waiting_write_take_effect():
    d = Driver()
    s = d.session(ttl=1_000)
    d.apply("cache.fill", s, "k", 60_000)
    token = d.apply("cache.set_many", [["k", b"1"], ["j", b"2"]], None).token
    assert d.query("cache.get_many", ["k", "j"]) == [None, None]
    d.now += 1_000
    d.tick()
    assert d.done() == [(token, True, [token, token])]
    assert d.query("cache.get_many", ["k", "j"]) == [_rec(b"1", token), _rec(b"2", token)]
    assert d.code("cache.fill", s, "k", 1_000) == "session_expired"


def test_refill_without_queued_writes_replaces_and_lease_is_capped_by_expiry():
    d = Driver()
    s = d.session()
    d.apply("cache.set", "k", b"1", 500)
    assert d.apply("cache.fill", s, "k", 60_000)["lease_until"] == T0 + 500
    assert d.apply("cache.fill", s, "k", 1_000)["lease_until"] == T0 + 500
    assert d.stats()["l1_holders"] == 1
    assert d.apply("cache.fill", s, "other", 1_000)["lease_until"] == T0 + 1_000


def test_a_dead_lease_does_not_block_a_write():
    d = Driver()
    s = d.session()
    d.apply("cache.fill", s, "k", 100)
    d.now += 100  # lease over, no tick yet
    assert d.apply("cache.set", "k", b"v", None) == 3
    assert d.events() == [] and d.stats()["l1_holders"] == 0


def test_ttl_of_a_queued_write_counts_from_its_effect():
    d = Driver()
    s = d.session()
    d.apply("cache.fill", s, "k", 5_000)
    token = d.apply("cache.set", "k", b"v", 1_000).token
    d.now += 500
    d.apply("cache.release", s, ["k"])
    assert d.done() == [(token, True, token)]
    assert d.get("k") == _rec(b"v", token, T0 + 1_500)
    assert d.m.next_deadline() == T0 + 1_500


def test_expiry_does_not_wait_and_a_held_key_ttl_cannot_shrink_under_its_holder():
    d = Driver()
    s = d.session()
    d.apply("cache.set", "e", b"1", 500)  # 2
    assert d.apply("cache.fill", s, "e", 5_000)["lease_until"] == T0 + 500  # capped
    assert d.apply("cache.set", "e", b"2", 100) == Pending(4)  # would shorten: it waits
    d.events()
    d.now += 500
    assert d.m.next_deadline() == T0 + 500
    d.tick()  # the lease runs out first, the write goes (TTL from now), then expiries
    assert d.done() == [(4, True, 4)]
    assert d.get("e") == _rec(b"2", 4, T0 + 600)
    d.now += 100
    d.tick()
    assert d.get("e") is None and d.events() == []  # no holder could outlive the key
    assert d.cache.changes_since(0) == [("e", None, d.index, None)]


def test_a_key_with_queued_writes_expires_but_is_removed_after_them():
    d = Driver()
    s = d.session()  # 1
    d.apply("cache.set", "a", b"1", 100)  # 2
    d.apply("cache.set", "b", b"1", None)  # 3
    d.apply("cache.fill", s, "b", 1_000)  # 4
    assert d.apply("cache.delete_many", ["a", "b"]) == Pending(5)  # waits for b's holder
    d.now += 100
    assert d.m.next_deadline() == T0 + 1_000  # not a's expiry: writes wait on a
    d.tick()  # 6
    assert d.get("a") is None and "a" in d.cache.store.data  # absent by log time, not removed
    d.apply("cache.release", s, ["b"])  # 7
    assert d.done() == [(5, True, 1)]  # only b still existed
    assert "a" not in d.cache.store.data and d.stats()["expirations_total"] == 1
    # Per key, versions keep increasing: b deleted by the write (5), a expired after it (7).
    assert d.cache.changes_since(0) == [("b", None, 5, None), ("a", None, 7, None)]


def test_clear_waits_for_every_registration_and_blocks_all_writes_behind_it():
    d = Driver()
    s1, s2 = d.session(), d.session()  # 1, 2
    d.apply("cache.set_many", [["a", b"1"], ["b", b"2"]], None)  # 3
    d.apply("cache.fill", s1, "a", 1_000)  # 4
    d.apply("cache.fill", s2, "z", 1_000)  # 5: absent, but a clear waits for it too
    assert d.apply("cache.clear") == Pending(6)
    assert sorted(d.events()) == sorted(
        [(f"session:{s1}", ["invalidate", "a", 6]), (f"session:{s2}", ["invalidate", "z", 6])]
    )
    assert d.get("a") == _rec(b"1", 3)
    assert d.apply("cache.set", "c", b"3", None) == Pending(7)  # every write waits behind
    fill = d.apply("cache.fill", s1, "q", 1_000)  # 8: no registration while a clear waits
    assert fill["lease_until"] == d.now and fill["value"] is None
    d.apply("cache.release", s1, ["a"])  # 9
    assert d.done() == []
    d.apply("cache.release", s2, ["z"])  # 10
    assert d.done() == [(6, True, 2), (7, True, 7)]
    assert d.get("a") is None and d.get("c") == _rec(b"3", 7)
    # With nothing to delete, a clear never waits.
    d.apply("cache.fill", s1, "q", 1_000)
    assert d.apply("cache.delete", "c") is True
    assert d.apply("cache.clear") == 0 and d.events() == []


def test_fill_and_release_validate_sessions_and_leases():
    d = Driver()
    s = d.session()
    assert d.code("cache.fill", 999, "k", 1_000) == "unknown_session"
    assert d.code("cache.fill", s, "k", 99) == "limit_exceeded"
    assert d.code("cache.fill", s, "k", 60_001) == "limit_exceeded"
    assert d.code("cache.release", s, "k") == "bad_command"
    assert d.apply("cache.release", s, ["k"]) == 0


def test_queue_limits_reject_before_anything_changes(monkeypatch):
    monkeypatch.setattr(cache_queue, "QUEUE_MAX", 2)
    monkeypatch.setattr(cache_queue, "QUEUED_MAX", 3)
    d = Driver()
    s = d.session()
    d.apply("cache.fill", s, "k", 1_000)
    d.apply("cache.fill", s, "j", 1_000)
    assert isinstance(d.apply("cache.set", "k", b"1", None), Pending)
    assert isinstance(d.apply("cache.set", "k", b"2", None), Pending)
    assert d.code("cache.set", "k", b"3", None) == "limit_exceeded"  # per key
    assert d.code("cache.set_many", [["j", b""], ["k", b""]], None) == "limit_exceeded"
    assert isinstance(d.apply("cache.set", "j", b"1", None), Pending)
    assert d.code("cache.set", "j", b"2", None) == "limit_exceeded"  # in all
    assert d.code("cache.clear") == "limit_exceeded"
    assert d.apply("cache.set", "free", b"1", None) == d.index  # nothing to wait for: fine
    d.apply("cache.release", s, ["k", "j"])
    assert [ok for _, ok, _ in d.done()] == [True, True, True]


def test_pending_write_is_answered_through_the_applier():
    ap = Applier(CoordinationMachine())

    def run(index: int, client: str, seq: int, *cmd):
        entry = Entry(1, index, encode_command(client, seq, T0, msgpack.packb(list(cmd))))
        return ap.apply(entry)

    sid = run(1, "a", 1, "session.open", 10_000, "")[0].value["session"]
    run(2, "a", 2, "cache.fill", sid, "k", 1_000)
    writer = run(3, "b", 1, "cache.set", "k", b"v", None)[0]
    assert writer.pending
    assert run(4, "b", 1, "cache.set", "k", b"v", None)[0].pending  # a retry: still pending
    assert run(5, "c", 1, "cache.incr", "k", 1)[0].pending  # fails when it takes effect
    released = run(6, "a", 3, "cache.release", sid, ["k"])
    assert [(o.client_id, o.seq, o.ok, o.value) for o in released] == [
        ("a", 3, True, 1),
        ("b", 1, True, 3),
        ("c", 1, False, ("not_integer", "cache key 'k' does not hold a decimal integer", {})),
    ]
    assert run(7, "c", 1, "cache.incr", "k", 1)[0].ok is False  # the retry gets the same


def test_the_old_behaviour_lets_a_holder_serve_a_value_the_cluster_overwrote():
    """``waits_for_holders = False`` (tests only): the write is visible at once while the
    holder, not yet told, may still serve the old value. This is what rule 1 forbids."""
    d = Driver()
    d.cache.waits_for_holders = False
    s = d.session()
    d.apply("cache.set", "k", b"old", None)
    d.apply("cache.fill", s, "k", 1_000)
    assert d.apply("cache.set", "k", b"new", None) == 4  # no wait
    assert d.get("k")["value"] == b"new" and d.stats()["l1_holders"] == 1
    assert d.events() == [(f"session:{s}", ["invalidate", "k", 4])]


# -- limits -------------------------------------------------------------------------------------


def test_limits_are_checked_before_anything_changes():
    d = Driver()
    d.apply("cache.set", "k", b"v", None)
    long_key = "k" * (limits.NAME_MAX_BYTES + 1)
    assert d.code("cache.set", long_key, b"v", None) == "limit_exceeded"
    assert d.code("cache.set", "bad key", b"v", None) == "bad_command"
    assert d.code("cache.set", "", b"v", None) == "bad_command"
    assert d.code("cache.set", 5, b"v", None) == "bad_command"
    assert d.code("cache.set", "k", "text", None) == "bad_command"
    big = b"x" * (limits.VALUE_MAX_BYTES + 1)
    assert d.code("cache.set", "k", big, None) == "limit_exceeded"
    assert d.code("cache.set", "k", b"v", 0) == "limit_exceeded"
    assert d.code("cache.set", "k", b"v", limits.CACHE_TTL_MS[1] + 1) == "limit_exceeded"
    assert d.code("cache.set", "k", b"v", True) == "bad_command"
    assert d.code("cache.set", "k", b"v") == "bad_command"  # arity
    assert d.code("cache.touch", "k", -1) == "limit_exceeded"
    too_many = [[f"k{i}", b""] for i in range(limits.BATCH_MAX + 1)]
    assert d.code("cache.set_many", too_many, None) == "limit_exceeded"
    assert d.code("cache.set_many", [["ok", b""], ["bad key", b""]], None) == "bad_command"
    assert d.code("cache.set_many", [["ok"]], None) == "bad_command"
    assert d.code("cache.set_many", [["ok", b""]], -5) == "limit_exceeded"
    keys = [f"k{i}" for i in range(limits.BATCH_MAX + 1)]
    assert d.code("cache.delete_many", keys) == "limit_exceeded"
    assert d.code("cache.delete_many", "k") == "bad_command"
    assert d.code("cache.clear", 1) == "bad_command"
    assert d.code("cache.frobnicate") == "bad_command"
    with pytest.raises(CommandRejected) as info:
        d.query("cache.get_many", keys)
    assert info.value.code == "limit_exceeded"
    with pytest.raises(CommandRejected):
        d.query("cache.get", "bad key")
    assert d.get("k")["version"] == 1


# -- snapshots ----------------------------------------------------------------------------------


def _script(d: Driver, s: int, step: int):
    """One step of a mixed workload, deterministic in ``step``; a rejection gives its code."""
    try:
        return _step(d, s, step)
    except CommandRejected as exc:
        return exc.code


def _step(d: Driver, s: int, step: int):
    key = f"k{step % 6}"
    kind = step % 10
    if kind == 0:
        return d.apply("cache.fill", s, key, 300)
    if kind == 1:
        return d.apply("cache.set", key, str(step).encode(), None if step % 2 else 250)
    if kind == 2:
        return d.apply("cache.incr", "n", 1) if "n" in d.cache.store.data else d.apply(
            "cache.set", "n", b"0", 10_000
        )  # fmt: skip
    if kind == 3:
        return d.apply("cache.delete", key)
    if kind == 4:
        return d.apply("cache.release", s, [f"k{(step + 3) % 6}"])
    if kind == 5:
        d.now += 70
        return d.tick()
    if kind == 6:
        return d.apply("cache.set_many", [[key, b"x" * step], ["m", b"y"]], 400)
    if kind == 7:
        return d.apply("cache.touch", key, 100)
    if kind == 8 and step % 40 == 8:
        return d.apply("cache.clear")
    return d.apply("cache.cas", key, d.cache.store.version(key), b"c", None)


def test_snapshot_restore_mid_way_then_identical_behaviour():
    d = Driver(max_bytes=600)
    s = d.session()
    for step in range(60):
        _script(d, s, step)
    d.done(), d.events()
    assert d.stats()["pending_writes"] > 0  # restored with writes waiting
    copy = d.restored()
    assert copy.m.snapshot() == d.m.snapshot()
    assert copy.cache.changes_since(0) == d.cache.changes_since(0)
    assert copy.m.next_deadline() == d.m.next_deadline()
    for step in range(60, 200):
        assert _script(copy, s, step) == _script(d, s, step)
        assert copy.done() == d.done()
        assert copy.events() == d.events()
        assert copy.stats() == d.stats()
        assert copy.m.next_deadline() == d.m.next_deadline()
    assert copy.m.snapshot() == d.m.snapshot()
    assert d.stats()["evictions_total"] > 0


def test_snapshot_with_queued_writes_restores_them_exactly():
    d = Driver()
    s1, s2 = d.session(), d.session()  # 1, 2
    d.apply("cache.set_many", [["a", b"1"], ["b", b"2"], ["n", b"5"]], 1_000)  # 3
    d.apply("cache.fill", s1, "a", 5_000)  # 4
    d.apply("cache.fill", s2, "n", 500)  # 5
    d.apply("cache.set", "a", b"x", 200)  # 6
    d.apply("cache.cas", "a", 6, b"y", None)  # 7
    d.apply("cache.set_many", [["a", b"z"], ["b", b"z"]], None)  # 8
    d.apply("cache.incr", "n", 2)  # 9
    d.apply("cache.delete_many", ["b", "n"])  # 10
    d.apply("cache.clear")  # 11
    d.apply("cache.touch", "b", 50)  # 12
    d.events()
    copy = d.restored()
    assert copy.m.snapshot() == d.m.snapshot()
    assert copy.cache.queue.ops == d.cache.queue.ops
    assert copy.cache.queue.ops[8] == [
        "set_many",
        [[["a", b"z"], ["b", b"z"]], None],
        ["a", "b"],
        ["a", "b"],
    ]
    assert copy.cache.queue.ops[11][2:] == [None, None]
    assert list(copy.cache.queue.by_key["b"]) == [8, 10, 12]
    assert copy.cache.latest_change() == d.cache.latest_change() == 3
    assert copy.m.next_deadline() == d.m.next_deadline() == T0 + 500
    for drv in (d, copy):
        drv.now += 500
        drv.tick()  # n's lease: incr goes (but not delete_many: behind the set_many on b)
        drv.apply("cache.release", s1, ["a"])
        drv.now += 1_000
        drv.tick()
    assert (
        d.done()
        == copy.done()
        == [
            (9, True, 7),  # at the tick: n's holder is gone
            (6, True, 6),  # at the release: a's writes, then what waited behind them
            (7, True, 7),
            (8, True, [8, 8]),
            (10, True, 2),
            (11, True, 1),  # only a (z) existed by then
            (12, True, False),  # b was cleared
        ]
    )
    assert d.m.snapshot() == copy.m.snapshot()
    assert d.events() == copy.events() == []


# -- stateful comparison against a naive model --------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d"])
VALUES = st.sampled_from([b"", b"0", b"7", b"-3", b"x", b"hello", b"9" * 19, b"abc" * 5])
TTLS = st.sampled_from([None, 1, 10, 50, 100])
INT64_MAX = 2**63 - 1
_DECIMAL = re.compile(rb"-?[0-9]{1,19}")


class CacheModel(RuleBasedStateMachine):
    """Answers, completions, reads, holders and the Redis mirror against a naive model.

    Model: committed ``key -> (value, version, expires)``; one session's L1 ``key ->
    lease_until``; queued writes as a plain list in log order, each ``[token, kind, args, keys,
    wait]``, examined by brute force (a write may go when no earlier queued write shares a key
    or is a clear, and no key it waits on is held; a clear when it is first and nothing is
    held). Registrations whose lease ran out are dropped at the end of every entry, then queued
    writes go, in log order. The budget is small, so keys get evicted; the model does not
    predict eviction but reads which keys are evicted before each entry (only ``incr`` and
    ``touch`` care). The mirror follows ``changes_since`` after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.d = Driver(max_bytes=4 * cache_mod.ENTRY_OVERHEAD + 40)
        self.sid = self.d.session(ttl=3_600_000)
        self.model: dict[str, tuple[bytes, int, int | None]] = {}
        self.holds: dict[str, int] = {}
        self.queued: list[list] = []
        self.in_redis: set[str] = set()  # evicted keys (their value lives only in Redis)
        self.expected: list[tuple[int, bool, object]] = []
        self.mirror: dict[str, tuple[bytes | None, int, int | None]] = {}
        self.mirror_seq = 0

    # model helpers

    def alive(self, key: str, now: int | None = None) -> tuple[bytes, int, int | None] | None:
        """The key's record if it has not expired at ``now`` (default: the next entry's time)."""
        now = self.d.now if now is None else now
        rec = self.model.get(key)
        if rec is None or (rec[2] is not None and now >= rec[2]):
            return None
        return rec

    def evaluate(self, kind: str, args: list, version: int, commit: bool):
        """(answer, keys changed), changing the model only when ``commit``; or raises."""
        now = self.d.now

        def put(key: str, value: bytes, expires: int | None) -> None:
            if commit:
                self.model[key] = (value, version, expires)
                self.in_redis.discard(key)

        def remove(key: str) -> None:
            if commit:
                del self.model[key]
                self.in_redis.discard(key)

        def expires(ttl: int | None) -> int | None:
            return None if ttl is None else now + ttl

        if kind == "set":
            key, value, ttl = args
            put(key, value, expires(ttl))
            return version, [key]
        if kind in ("add", "cas"):
            key, value, ttl = args[0], args[-2], args[-1]
            rec = self.alive(key)
            if (rec is not None) if kind == "add" else ((rec and rec[1]) != args[1]):
                return (None if kind == "add" else False), []
            put(key, value, expires(ttl))
            return version, [key]
        if kind in ("delete", "delete_many"):
            keys = args[0] if kind == "delete_many" else args
            present = [key for key in dict.fromkeys(keys) if self.alive(key)]
            for key in present:
                remove(key)
            return (len(present) if kind == "delete_many" else bool(present)), present
        if kind in ("incr", "touch"):
            key = args[0]
            rec = self.alive(key)
            if rec is None:
                if kind == "touch":
                    return False, []
                raise CommandRejected(cache_mod.UNKNOWN_KEY, "")
            if key in self.in_redis:
                raise CommandRejected(cache_mod.EVICTED, "")
            if kind == "touch":
                put(key, rec[0], expires(args[1]))
                return True, [key]
            if not _DECIMAL.fullmatch(rec[0]):
                raise CommandRejected("not_integer", "")
            new = int(rec[0]) + args[1]
            if not -(2**63) <= new <= INT64_MAX:
                raise CommandRejected("limit_exceeded", "")
            put(key, str(new).encode(), rec[2])
            return new, [key]
        if kind == "set_many":
            pairs, ttl = args
            for key, value in pairs:
                put(key, value, expires(ttl))
            return [version] * len(pairs), list(dict.fromkeys(k for k, _ in pairs))
        assert kind == "clear"
        live = [key for key in self.model if self.alive(key)]
        if commit:
            self.model.clear()
            self.in_redis.clear()
        return len(live), live

    def blocked(self, keys: list[str] | None, earlier: list[list]) -> bool:
        if keys is None:
            return bool(earlier)
        return any(q[3] is None or set(q[3]) & set(keys) for q in earlier)

    def begin(self) -> None:
        self.in_redis = set(self.d.cache.store.evicted)

    def end(self) -> None:
        """End of an entry (not a rejected one: that changes nothing): leases that ran out go,
        then every queued write that may go."""
        now = self.d.now
        for key in [k for k, until in self.holds.items() if until <= now]:
            del self.holds[key]
        while True:
            for i, (_, _, _, keys, wait) in enumerate(self.queued):
                if self.blocked(keys, self.queued[:i]):
                    continue
                if not (self.holds if wait is None else set(wait) & set(self.holds)):
                    break
            else:
                break
            token, kind, args, _, _ = self.queued.pop(i)
            try:
                result, _ = self.evaluate(kind, args, token, True)
            except CommandRejected as exc:
                self.expected.append((token, False, exc.code))
            else:
                self.expected.append((token, True, result))
        assert self.d.done() == self.expected
        self.expected = []

    def write(self, op: str, kind: str, args: list, keys: list[str] | None, *cmd) -> None:
        self.begin()
        token, now = self.d.index + 1, self.d.now
        if keys != [] and self.blocked(keys, self.queued):
            self.queued.append([token, kind, args, keys, keys])
            expect: tuple = ("pending",)
        else:
            try:
                result, changes = self.evaluate(kind, args, token, False)
            except CommandRejected as exc:
                expect = ("rejected", exc.code)
            else:
                if keys is None:
                    held = bool(changes) and any(u > now for u in self.holds.values())
                else:
                    held = any(self.holds.get(k, now) > now for k in changes)
                if held:
                    wait = None if keys is None else changes
                    self.queued.append([token, kind, args, keys, wait])
                    expect = ("pending",)
                else:
                    self.evaluate(kind, args, token, True)
                    expect = ("ok", result)
        try:
            got = self.d.apply(op, *cmd)
        except CommandRejected as exc:
            assert expect == ("rejected", exc.code)
            assert self.d.done() == []
            return
        assert (("pending",) if got == Pending(token) else ("ok", got)) == expect
        self.end()

    # rules

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key, value, ttl):
        self.write("cache.set", "set", [key, value, ttl], [key], key, value, ttl)

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def add(self, key, value, ttl):
        self.write("cache.add", "add", [key, value, ttl], [key], key, value, ttl)

    @rule(key=KEYS)
    def delete(self, key):
        self.write("cache.delete", "delete", [key], [key], key)

    @rule(key=KEYS, delta=st.sampled_from([1, -1, 5, INT64_MAX]))
    def incr(self, key, delta):
        self.write("cache.incr", "incr", [key, delta], [key], key, delta)

    @rule(key=KEYS, value=VALUES, ttl=TTLS, which=st.sampled_from(["current", "none", "old"]))
    def cas(self, key, value, ttl, which):
        rec = self.alive(key)
        expected = {"current": rec and rec[1], "none": None, "old": 1}[which]
        args = [key, expected, value, ttl]
        self.write("cache.cas", "cas", args, [key], *args)

    @rule(key=KEYS, ttl=TTLS)
    def touch(self, key, ttl):
        self.write("cache.touch", "touch", [key, ttl], [key], key, ttl)

    @rule(keys=st.lists(KEYS, max_size=3), value=VALUES, ttl=TTLS)
    def set_many(self, keys, value, ttl):
        pairs = [[key, value] for key in keys]
        unique = list(dict.fromkeys(keys))
        self.write("cache.set_many", "set_many", [pairs, ttl], unique, pairs, ttl)

    @rule(keys=st.lists(KEYS, max_size=3))
    def delete_many(self, keys):
        unique = list(dict.fromkeys(keys))
        self.write("cache.delete_many", "delete_many", [keys], unique, keys)

    @precondition(lambda self: self.d.index % 5 == 0)
    @rule()
    def clear(self):
        self.write("cache.clear", "clear", [], None)

    @rule(key=KEYS, lease=st.sampled_from([100, 150, 1_000]))
    def fill(self, key, lease):
        self.begin()
        now = self.d.now
        rec = self.alive(key)
        got = self.d.apply("cache.fill", self.sid, key, lease)
        if any(q[3] is None or key in q[3] for q in self.queued):
            self.holds.pop(key, None)  # counts as released; nothing registered
            until = now
        else:
            until = now + lease
            if rec is not None and rec[2] is not None:
                until = min(until, rec[2])
            self.holds[key] = until
        assert got["lease_until"] == until
        assert got["version"] == (rec[1] if rec else None)
        if not got.get("evicted"):
            assert got["value"] == (rec[0] if rec else None)
        self.end()

    @rule(keys=st.lists(KEYS, max_size=3))
    def release(self, keys):
        self.begin()
        held = {k for k in keys if k in self.holds}
        assert self.d.apply("cache.release", self.sid, keys) == len(held)
        for key in held:
            del self.holds[key]
        self.end()

    @rule(ms=st.sampled_from([1, 10, 50, 99]))
    def advance(self, ms):
        self.d.now += ms  # no entry yet: queries still see the previous entry's time

    @rule()
    def tick(self):
        self.begin()
        self.d.tick()
        self.end()

    @rule()
    def snapshot_and_restore(self):
        self.d = self.d.restored()

    # checks

    @invariant()
    def holders_and_queue_match(self):
        stats = self.d.stats()
        assert stats["l1_holders"] == len(self.holds)
        assert stats["pending_writes"] == len(self.queued)
        assert list(self.d.cache.queue.ops) == [q[0] for q in self.queued]

    @invariant()
    def reads_match(self):
        for key in ["a", "b", "c", "d"]:
            rec = self.alive(key, self.d.applied_now)
            got = self.d.get(key)
            if rec is None:
                assert got is None
            elif got.get("evicted"):
                assert (got["version"], got["expires_ms"]) == rec[1:]
            else:
                assert got == {"value": rec[0], "version": rec[1], "expires_ms": rec[2]}

    @invariant()
    def mirror_follows(self):
        cache = self.d.cache
        changes = cache.changes_since(self.mirror_seq)
        if changes is None:  # full resync: memory, plus evicted keys the mirror already has
            kept = {k: self.mirror[k] for k, v in cache.store.evicted.items() if k in self.mirror}
            self.mirror = {k: (v, ver, exp) for k, v, ver, exp in cache.current_values()}
            self.mirror.update({k: r for k, r in kept.items() if r[1] == cache.store.evicted[k]})
        else:
            for key, value, version, expires in changes:
                if key not in self.mirror or self.mirror[key][1] < version:  # the Redis guard
                    self.mirror[key] = (value, version, expires)
        self.mirror_seq = cache.latest_change()
        for key in ["a", "b", "c", "d"]:
            rec = self.alive(key)
            got = self.mirror.get(key)
            if rec is not None and key in cache.store.evicted and (got is None or got[1] < rec[1]):
                continue  # evicted before the mirror copied it: a miss (readers check versions)
            if rec is not None:
                assert got == rec
            else:  # gone, deleted, or expired (Redis's own TTL drops it)
                assert (
                    got is None or got[0] is None or (got[2] is not None and got[2] <= self.d.now)
                )


CacheModel.TestCase.settings = settings(
    max_examples=examples(quick=100, deep=300),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_cache_matches_a_naive_model = CacheModel.TestCase


# -- linearizability of clients with L1s --------------------------------------------------------

SIM_KEYS = ["x", "y"]


class SimClient:
    """A client process following the L1 protocol: ``fill`` on a miss and keep the answer until
    ``lease_until`` (its clock is log time) unless an ``invalidate`` event arrives first; on an
    event drop the key at once and send ``release`` (possibly later, but never after re-filling
    the key: the fill already released the old registration)."""

    def __init__(self, name: str, sid: int) -> None:
        self.name = name
        self.sid = sid
        self.l1: dict[str, tuple[bytes | None, int]] = {}  # key -> (value, lease_until)
        self.seen: dict[str, tuple[bytes | None, int | None]] = {}  # key -> (value, version)
        self.releases: list[str] = []


class L1Simulation:
    """Three clients with L1s, random ops, delayed (sometimes lost) invalidation events, delayed
    releases, time passing (ticks when due), client restarts and snapshot restores. Records the
    history per key (times are simulation steps; an L1 hit, a query and a fill are instant; a
    write spans from its entry to its completion) for the linearizability checker."""

    def __init__(self, seed: int, waits_for_holders: bool = True) -> None:
        self.rng = random.Random(seed)
        self.d = Driver()
        self.d.cache.waits_for_holders = waits_for_holders
        self.clients = [SimClient(f"c{i}", self.d.session(3_600_000)) for i in range(3)]
        self.history: list[Operation] = []
        self.inflight: dict[int, tuple[str, int, list[tuple[str, str, object]]]] = {}
        self.deliveries: list[tuple[int, int, str]] = []  # (due step, session, key)
        self.serial = itertools.count()
        self.clock = 0

    def client(self, sid: int) -> SimClient | None:
        return next((c for c in self.clients if c.sid == sid), None)

    def record(self, client: str, key: str, kind: str, inp, out, call: int, ret) -> None:
        self.history.append(Operation(client, key, kind, inp, out, call, ret))

    def finish(self, client: str, call: int, parts, result) -> None:
        swapped = not (result is None or result is False)  # add: None, cas: False
        for key, kind, inp in parts:
            self.record(
                client, key, kind, inp, swapped if kind == "cas" else None, call, self.clock
            )

    def after_entry(self) -> None:
        rng = self.rng
        for topic, (_, key, _) in self.d.events():
            if rng.random() < 0.1:
                continue  # lost: the holder serves until its lease ends, writes wait for that
            self.deliveries.append((self.clock + rng.randint(0, 8), int(topic[8:]), key))
        for token, ok, value in self.d.done():
            assert ok, value
            self.finish(*self.inflight.pop(token), value)

    # actions

    def read(self, c: SimClient, key: str) -> None:
        cached = c.l1.get(key)
        if cached is not None and self.d.applied_now < cached[1]:
            self.record(c.name, key, "read", None, cached[0], self.clock, self.clock)
            return
        c.l1.pop(key, None)
        # A fill replaces (or, while writes wait, drops) this session's registration: a release
        # still to be sent for the key would now drop the new one while the client caches it.
        c.releases = [k for k in c.releases if k != key]
        got = self.d.apply("cache.fill", c.sid, key, self.rng.choice([100, 300, 2_000]))
        self.record(c.name, key, "read", None, got["value"], self.clock, self.clock)
        c.seen[key] = (got["value"], got["version"])
        if got["lease_until"] > self.d.applied_now:
            c.l1[key] = (got["value"], got["lease_until"])
        self.after_entry()

    def query(self, c: SimClient, key: str) -> None:
        got = self.d.get(key) or {"value": None, "version": None}
        self.record(c.name, key, "read", None, got["value"], self.clock, self.clock)
        c.seen[key] = (got["value"], got["version"])

    def write(self, c: SimClient, key: str) -> None:
        rng = self.rng
        kind = rng.choices(
            ["set", "delete", "add", "cas", "set_many", "delete_many", "clear"],
            [6, 2, 2, 4, 2, 1, 0.3],
        )[0]
        value = f"{c.name}.{next(self.serial)}".encode()
        if kind == "set":
            cmd, parts = ["cache.set", key, value, None], [(key, "write", value)]
        elif kind == "delete":
            cmd, parts = ["cache.delete", key], [(key, "write", None)]
        elif kind == "add":
            cmd, parts = ["cache.add", key, value, None], [(key, "cas", (None, value))]
        elif kind == "cas":
            seen_value, version = c.seen.get(key, (None, None))
            cmd = ["cache.cas", key, version, value, None]
            parts = [(key, "cas", (seen_value, value))]
        elif kind == "set_many":
            items = [[k, value + k.encode()] for k in SIM_KEYS]
            cmd, parts = ["cache.set_many", items, None], [(k, "write", v) for k, v in items]
        else:
            cmd = ["cache.delete_many", SIM_KEYS] if kind == "delete_many" else ["cache.clear"]
            parts = [(k, "write", None) for k in SIM_KEYS]
        if rng.random() < 0.5:  # a polite client drops what it overwrites from its own L1
            for k, _, _ in parts:
                if c.l1.pop(k, None) is not None:
                    c.releases.append(k)
        result = self.d.apply(*cmd)
        if isinstance(result, Pending):
            self.inflight[result.token] = (c.name, self.clock, parts)
        else:
            self.finish(c.name, self.clock, parts, result)
        self.after_entry()

    def deliver(self) -> None:
        due = [x for x in self.deliveries if x[0] <= self.clock]
        self.deliveries = [x for x in self.deliveries if x[0] > self.clock]
        for _, sid, key in due:
            c = self.client(sid)
            if c is not None:  # else: a session that ended; its L1 is gone
                c.l1.pop(key, None)
                c.releases.append(key)

    def release(self, c: SimClient) -> None:
        if c.releases:
            self.d.apply("cache.release", c.sid, c.releases)
            c.releases = []
            self.after_entry()

    def advance(self, ms: int) -> None:
        self.d.now += ms
        deadline = self.d.m.next_deadline()
        if deadline is not None and deadline <= self.d.now:
            self.d.tick()
            self.after_entry()

    def restart(self, c: SimClient) -> None:
        self.d.apply("session.close", c.sid)
        self.after_entry()
        c.sid = self.d.session(3_600_000)
        c.l1.clear()
        c.releases.clear()

    def run(self, steps: int) -> list[Operation]:
        rng = self.rng
        actions = ["read", "query", "write", "deliver", "release", "advance", "restart", "restore"]
        for _ in range(steps):
            self.clock += 1
            c, key = rng.choice(self.clients), rng.choice(SIM_KEYS)
            action = rng.choices(actions, [8, 2, 6, 4, 3, 3, 0.2, 0.2])[0]
            if action == "read":
                self.read(c, key)
            elif action == "query":
                self.query(c, key)
            elif action == "write":
                self.write(c, key)
            elif action == "deliver":
                self.deliver()
            elif action == "release":
                self.release(c)
            elif action == "advance":
                self.advance(rng.choice([1, 30, 150, 600]))
            elif action == "restart":
                self.restart(c)
            else:
                self.d = self.d.restored()
        self.clock += 1  # quiesce: every event arrives, every lease ends
        self.deliveries = [(0, sid, key) for _, sid, key in self.deliveries]
        self.deliver()
        for c in self.clients:
            self.release(c)
        self.advance(61_000)
        for client, call, parts in self.inflight.values():
            for key, kind, inp in parts:
                self.record(client, key, kind, inp, None, call, None)
        return self.history


def test_clients_with_l1_caches_see_a_linearizable_cache():
    for seed in range(seeds(quick=100, deep=300)):
        sim = L1Simulation(seed)
        history = sim.run(200)
        assert not sim.inflight, f"seed {seed}: writes still waiting after every lease ended"
        assert sum(op.kind == "read" for op in history) > 30
        result = check_operations(history, RegisterModel())
        assert result.ok is True, f"seed {seed}: {result.explanation}"


def test_the_old_immediate_effect_is_caught_by_the_checker():
    failures = [
        seed
        for seed in range(40)
        if check_operations(
            L1Simulation(seed, waits_for_holders=False).run(150), RegisterModel()
        ).ok
        is False
    ]
    assert len(failures) >= 10, failures


def test_set_hold_keeps_the_writer_as_holder_of_its_own_value():
    d = Driver()
    s1, s2 = d.session(), d.session()  # 1, 2
    got = d.apply("cache.set_hold", s1, "k", b"v", None, 1_000)  # 3
    assert got == {"version": 3, "registration": 3, "lease_ms": 1_000}
    assert d.stats()["l1_holders"] == 1
    # Another writer now waits for the holder, who is told, as after a fill.
    assert d.apply("cache.set", "k", b"w", None) == Pending(4)
    assert d.events() == [(f"session:{s1}", ["invalidate", "k", 4])]
    assert d.get("k") == _rec(b"v", 3)
    assert d.apply("cache.release", s1, [["k", 3]]) == 1
    assert d.done() == [(4, True, 4)]
    # A set_hold queued behind a held key registers when it takes effect.
    d.apply("cache.fill", s2, "k", 1_000)  # 6
    assert d.apply("cache.set_hold", s1, "k", b"x", None, 1_000) == Pending(7)
    d.apply("cache.release", s2, ["k"])  # 8: lets it go
    ((token, ok, value),) = d.done()
    assert (token, ok) == (7, True) and value["registration"] == 7
