"""Fenced writes (``cache.fenced``) and transactions (``cache.txn``) through
``CoordinationMachine``: the token is checked in the entry that writes, a queued (L1-held) write
checks it when it takes effect, txn branches, bounds and bad input, lock releases, the change
history, determinism across replicas, and snapshots. The conftest also runs ``validate`` on
every command applied here and checks it agrees with ``apply``."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from coordination.primitives import commands as c
from coordination.primitives import limits
from coordination.primitives.machine import TICK, CoordinationMachine
from raft_node.core.fsm import CommandRejected, Pending

put, delete = c.txn_put, c.txn_delete


class Node:
    def __init__(self) -> None:
        self.m = CoordinationMachine()
        self.index = 0
        self.now = 1_000

    def do(self, command: bytes) -> Any:
        self.index += 1
        return self.m.apply(self.index, command, self.now)

    def code(self, command: bytes) -> str:
        before = self.m.snapshot()
        with pytest.raises(CommandRejected) as info:
            self.do(command)
        after = msgpack.unpackb(self.m.snapshot(), strict_map_key=False)
        old = msgpack.unpackb(before, strict_map_key=False)
        for state in (after, old):  # log time still moves on a rejected entry
            state[1]["cache"]["counters"][3] = None
            state[1]["results"]["counters"][0] = None
            state[1]["ratelimits"]["counters"][0] = None
        assert after == old, "a rejected command changed state"
        return info.value.code

    def tick(self, advance_ms: int) -> None:
        self.now += advance_ms
        self.do(self.m.tick_command())

    def get(self, key: str) -> Any:
        return self.m.query(c.cache_get(key))

    def session(self, ttl: int = 10_000) -> int:
        return self.do(c.session_open(ttl, "t"))["session"]

    def acquire(self, sid: int, name: str = "L", owner: str = "o", wait_ms: int = 0) -> Any:
        return self.do(c.lock_acquire(sid, name, "exclusive", owner, wait_ms))


def test_a_fenced_write_with_the_current_token_is_applied():
    n = Node()
    sid = n.session()
    token = n.acquire(sid)["token"]
    assert n.do(c.cache_fenced("L", token, [put("k", b"v", 5_000), delete("absent")])) == [3, False]
    assert n.get("k") == {"value": b"v", "version": 3, "expires_ms": 6_000}


def test_a_superseded_holders_fenced_write_is_rejected_after_its_session_expired():
    n = Node()
    a, b = n.session(ttl=1_000), n.session(ttl=60_000)
    stale = n.acquire(a)["token"]
    assert n.acquire(b, owner="b", wait_ms=30_000) == Pending(n.index)
    n.tick(1_500)  # a's session expires, b is granted
    fresh = n.m.query(c.lock_inspect("L"))["holders"][0]["token"]
    assert fresh > stale
    assert n.code(c.cache_fenced("L", stale, [put("k", b"stale", None)])) == "stale_token"
    assert n.get("k") is None
    assert n.do(c.cache_fenced("L", fresh, [put("k", b"fresh", None)])) == [n.index]


def test_a_fenced_write_after_release_or_with_a_made_up_token_is_rejected():
    n = Node()
    sid = n.session()
    token = n.acquire(sid)["token"]
    assert n.code(c.cache_fenced("L", token + 1, [put("k", b"v", None)])) == "stale_token"
    assert n.code(c.cache_fenced("other", token, [put("k", b"v", None)])) == "stale_token"
    n.do(c.lock_release(sid, "L", "o"))
    with pytest.raises(CommandRejected) as info:
        n.do(c.cache_fenced("L", token, [delete("k")]))
    assert info.value.details == {"lock": "L", "token": token}


def test_a_fenced_write_to_an_l1_held_key_checks_the_token_when_it_takes_effect():
    """The write waits for the L1 holder; if the lock moved meanwhile, it is refused then (the
    check and the effect are one entry), and the value never changes."""
    n = Node()
    reader, a, b = n.session(60_000), n.session(1_000), n.session(60_000)
    n.do(c.cache_set("k", b"old", None))
    n.do(c.cache_fill(reader, "k", 5_000))
    stale = n.acquire(a)["token"]
    queued = n.do(c.cache_fenced("L", stale, [put("k", b"stale", None)]))
    assert queued == Pending(n.index)  # token current now; waits for the reader's L1
    n.m.drain_completions()
    assert n.acquire(b, owner="b", wait_ms=30_000) == Pending(n.index)
    n.tick(1_500)  # a expires: b granted
    n.do(c.cache_release(reader, ["k"]))  # the queued fenced write takes effect now: refused
    done = [d for d in n.m.drain_completions() if d[0] == queued.token]
    assert done == [
        (queued.token, False, ("stale_token", done[0][2][1], {"lock": "L", "token": stale}))
    ]
    assert n.get("k")["value"] == b"old"


def test_a_queued_fenced_write_whose_token_is_still_current_takes_effect():
    n = Node()
    reader, a = n.session(60_000), n.session(60_000)
    n.do(c.cache_fill(reader, "k", 5_000))
    token = n.acquire(a)["token"]
    queued = n.do(c.cache_fenced("L", token, [put("k", b"v", None)]))
    assert isinstance(queued, Pending)
    n.do(c.cache_release(reader, ["k"]))
    assert (queued.token, True, [queued.token]) in n.m.drain_completions()
    assert n.get("k")["version"] == queued.token


def test_txn_runs_the_success_branch_when_every_compare_holds():
    n = Node()
    sid = n.session()
    v = n.do(c.cache_set("a", b"1", None))
    token = n.acquire(sid)["token"]
    compares = [
        ["version", "a", "==", v],
        ["version", "b", "==", 0],  # absent
        ["version", "a", ">", 0],
        ["value", "a", "==", b"1"],
        ["value", "b", "==", None],
        ["lock", "L", token],
    ]
    success = [put("b", b"2"), delete("a"), ["release", sid, "L", "o"]]
    result = n.do(c.cache_txn(compares, success, [put("failed", b"x")]))
    assert result == {
        "succeeded": True,
        "results": [n.index, True, {"released": True, "count": 0}],
    }
    assert n.get("a") is None and n.get("b")["value"] == b"2" and n.get("failed") is None
    assert n.m.query(c.lock_inspect("L"))["holders"] == []


def test_txn_runs_the_failure_branch_when_a_compare_fails():
    n = Node()
    n.do(c.cache_set("a", b"1", None))
    for compare in (
        ["version", "a", "!=", 1],
        ["version", "a", "<", 1],
        ["value", "a", "!=", b"1"],
        ["value", "a", "==", None],
        ["lock", "L", 1],
    ):
        result = n.do(c.cache_txn([compare], [put("a", b"won")], [put("lost", b"y")]))
        assert result == {"succeeded": False, "results": [n.index]}, compare
    assert n.get("a")["value"] == b"1"


def test_txn_is_all_or_nothing_when_a_release_is_refused():
    n = Node()
    sid = n.session()
    before = n.do(c.cache_set("a", b"1", None))
    txn = c.cache_txn([], [put("a", b"2"), ["release", sid, "L", "o"]], [])
    assert n.code(txn) == "not_holder"
    assert n.get("a")["version"] == before


def test_txn_release_grants_the_next_waiter_in_the_same_entry():
    n = Node()
    a, b = n.session(), n.session()
    n.acquire(a)
    waiting = n.acquire(b, owner="b", wait_ms=30_000)
    result = n.do(c.cache_txn([], [put("k", b"done"), ["release", a, "L", "o"]], []))
    assert result["succeeded"]
    granted = [d for d in n.m.drain_completions() if d[0] == waiting.token]
    assert granted and granted[0][2]["token"] == n.index


def test_a_value_compare_on_an_evicted_key_is_refused_but_its_version_compares():
    n = Node()
    n.m.part("cache").max_bytes = 200
    v = n.do(c.cache_set("big", b"x" * 100, None))
    n.do(c.cache_set("other", b"y" * 100, None))  # evicts "big"
    assert n.get("big").get("evicted")
    assert n.code(c.cache_txn([["value", "big", "==", b"x"]], [], [])) == "evicted"
    assert n.do(c.cache_txn([["version", "big", "==", v]], [], []))["succeeded"]


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (c.cache_txn([], [put("k", b"1"), put("k", b"2")], []), "bad_command"),
        (c.cache_txn([], [put("k", b"1"), delete("k")], []), "bad_command"),
        (c.cache_txn([], [["release", 1, "L", "o"]] * 2, []), "bad_command"),
        (c.cache_txn([["version", "k", "<=", 1]], [], []), "bad_command"),
        (c.cache_txn([["value", "k", "<", b"1"]], [], []), "bad_command"),
        (c.cache_txn([["version", "k", "==", -1]], [], []), "limit_exceeded"),
        (c.cache_txn([["lock", "L"]], [], []), "bad_command"),
        (c.cache_txn([["nope", "k"]], [], []), "bad_command"),
        (c.cache_txn([], [["get", "k"]], []), "bad_command"),
        (c.cache_txn([], [put("a key", b"1")], []), "bad_command"),
        (c.cache_txn([], [put("k", "text")], []), "bad_command"),
        (c.cache_txn([], [put(f"k{i}", b"v") for i in range(65)], []), "limit_exceeded"),
        (
            c.cache_txn(
                [["version", f"k{i}", "==", 0] for i in range(32)],
                [put(f"k{i}", b"v") for i in range(32)],
                [delete("x")],
            ),
            "limit_exceeded",
        ),
        (msgpack.packb(["cache.txn", [], {}, []]), "bad_command"),
        (c.cache_fenced("L", 0, [put("k", b"v")]), "limit_exceeded"),
        (c.cache_fenced("L", "7", [put("k", b"v")]), "bad_command"),
        (c.cache_fenced("L", 7, [["release", 1, "L", "o"]]), "bad_command"),
        (msgpack.packb(["cache.fenced", "L", 7, "k"]), "bad_command"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(command: bytes, code: str) -> None:
    n = Node()
    assert n.code(command) == code
    try:
        n.m.validate(command)
    except CommandRejected as exc:
        assert exc.code == code
    else:
        raise AssertionError("validate let it through")


def test_the_largest_txn_is_accepted():
    n = Node()
    half = limits.TXN_OPS_MAX // 2
    compares = [["version", f"k{i}", "==", 0] for i in range(half)]
    result = n.do(c.cache_txn(compares, [put(f"k{i}", b"v") for i in range(half)], []))
    assert result["succeeded"] and len(result["results"]) == half


def test_txn_and_fenced_changes_are_recorded_for_watch():
    n = Node()
    sid = n.session()
    token = n.acquire(sid)["token"]
    n.do(c.cache_fenced("L", token, [put("a", b"1")]))
    n.do(c.cache_txn([["lock", "L", token]], [delete("a"), ["release", sid, "L", "o"]], []))
    events = n.m.query(c.history_since("", False, 0, 100))["events"]
    assert [(e[3], e[4], e[5]) for e in events] == [
        ("lock", "acquired", "L"),
        ("cache", "put", "a"),
        ("cache", "delete", "a"),
        ("lock", "released", "L"),
    ]


def _random_log(seed: int) -> list[tuple[bytes, int]]:
    rng = random.Random(seed)
    log: list[tuple[bytes, int]] = [
        (c.session_open(2_000, "a"), 0),
        (c.session_open(60_000, "b"), 0),
    ]
    keys = ["k1", "k2", "k3"]
    for _ in range(200):
        sid = rng.choice([1, 2])
        roll = rng.random()
        if roll < 0.2:
            log.append((c.lock_acquire(sid, "L", "exclusive", "o", rng.choice([0, 5_000])), 0))
        elif roll < 0.3:
            log.append((c.lock_release(sid, "L", "o"), 0))
        elif roll < 0.5:
            log.append((c.cache_fenced("L", rng.randint(1, 40), [put(rng.choice(keys), b"f")]), 0))
        elif roll < 0.7:
            compares = [["version", rng.choice(keys), rng.choice(["==", ">"]), rng.randint(0, 40)]]
            then = [put(rng.choice(keys), bytes([rng.randint(0, 255)]))]
            log.append((c.cache_txn(compares, then, [delete(rng.choice(keys))]), 0))
        elif roll < 0.8:
            log.append((c.cache_fill(sid, rng.choice(keys), 1_000), 0))
        elif roll < 0.85:
            log.append((c.session_keepalive(sid), 0))
        elif roll < 0.9:
            log.append((TICK, rng.randint(0, 1_500)))
        else:
            log.append((c.cache_release(sid, keys), rng.randint(0, 800)))
    return log


def _replay(log: list[tuple[bytes, int]], snapshot_at: int | None = None) -> tuple[bytes, list]:
    m, now, outcomes = CoordinationMachine(), 1_000, []
    for index, (command, advance) in enumerate(log, start=1):
        if snapshot_at == index:
            restored = CoordinationMachine()
            restored.restore(m.snapshot())
            assert restored.snapshot() == m.snapshot()
            m = restored
        now += advance
        try:
            outcomes.append(("ok", m.apply(index, command, now)))
        except CommandRejected as exc:
            outcomes.append(("rejected", exc.code))
        outcomes.extend(m.drain_completions())
    return m.snapshot(), outcomes


@pytest.mark.parametrize("seed", range(8))
def test_replicas_agree_and_a_snapshot_midway_changes_nothing(seed: int) -> None:
    """The same log gives the same answers and state on every replica, also on one restored
    from a snapshot midway (queued txns and fenced writes included)."""
    log = _random_log(seed)
    state, outcomes = _replay(log)
    assert _replay(log) == (state, outcomes)
    assert _replay(log, snapshot_at=len(log) // 2) == (state, outcomes)
    assert any(o[0] == "rejected" and o[1] == "stale_token" for o in outcomes if len(o) == 2)
