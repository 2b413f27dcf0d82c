"""Semaphores through ``CoordinationMachine``: limit, FIFO grants with completions, timeouts,
session death freeing slots and failing waits, monotonic tokens, limit errors, re-entry, and a
snapshot round trip (plus restoring a snapshot taken before the part existed); then a
hypothesis run of random operations checking that never more than ``limit`` slots are held and
that grants follow arrival order."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordination.errors import typed
from coordination.exceptions import LimitExceeded, SemaphoreLimitError
from coordination.primitives.machine import TICK, CoordinationMachine
from coordination.primitives.semaphores import Semaphores
from raft_node.client import Rejected
from raft_node.core.fsm import CommandRejected, Pending

START_MS = 1_000_000


class _LateSessions:
    target: Any = None

    def require(self, session_id: Any) -> int:
        return self.target.require(session_id)


def sem_machine() -> CoordinationMachine:
    sessions = _LateSessions()
    machine = CoordinationMachine(parts=[Semaphores(sessions)])  # type: ignore[arg-type]
    sessions.target = machine.sessions
    return machine


class Driver:
    def __init__(self, machine: CoordinationMachine | None = None) -> None:
        self.m = machine or sem_machine()
        self.index = 0
        self.now = START_MS
        self.done: dict[int, tuple[bool, Any]] = {}

    def apply(self, op: str, *args: Any, raw: bytes | None = None) -> Any:
        self.index += 1
        try:
            return self.m.apply(self.index, raw or msgpack.packb([op, *args]), self.now)
        finally:
            for token, ok, value in self.m.drain_completions():
                assert token not in self.done, f"token {token} completed twice"
                self.done[token] = (ok, value)

    def session(self, ttl_ms: int = 10_000) -> int:
        return self.apply("session.open", ttl_ms, "t")["session"]

    def acquire(self, sid: int, name: str = "s", limit: int = 2, wait_ms: int = 0, owner=""):
        return self.apply("sem.acquire", sid, name, limit, owner, wait_ms)

    def tick(self) -> None:
        self.apply("", raw=TICK)

    def inspect(self, name: str = "s") -> dict[str, Any]:
        return self.m.query(msgpack.packb(["sem.inspect", name]))

    def rejected(self, op: str, *args: Any) -> CommandRejected:
        with pytest.raises(CommandRejected) as info:
            self.apply(op, *args)
        return info.value


def test_default_machine_hosts_the_semaphores_part():
    assert isinstance(CoordinationMachine().part("semaphores"), Semaphores)


def test_limit_slots_are_granted_then_tries_fail_and_release_frees_one():
    d = Driver()
    a, b, c = d.session(), d.session(), d.session()
    ra, rb = d.acquire(a), d.acquire(b)
    assert ra["acquired"] and rb["acquired"] and ra["limit"] == 2
    assert d.acquire(c) == {"acquired": False, "limit": 2, "holders": 2}
    assert d.apply("sem.release", a, "s", "") == {"released": True, "count": 0}
    assert d.acquire(c)["acquired"]
    info = d.inspect()
    assert info["limit"] == 2 and [h["session"] for h in info["holders"]] == [b, c]


def test_waiters_are_granted_strictly_in_arrival_order_with_completions():
    d = Driver()
    holders = [d.session() for _ in range(2)]
    for sid in holders:
        d.acquire(sid, wait_ms=5_000)
    waiters = [d.session() for _ in range(5)]
    tokens = []
    for sid in waiters:
        pending = d.acquire(sid, wait_ms=5_000)
        assert isinstance(pending, Pending)
        tokens.append(pending.token)
    assert [w["session"] for w in d.inspect()["waiters"]] == waiters
    # A try arriving now does not jump the queue, though a slot is about to free.
    late = d.session()
    d.apply("sem.release", holders[0], "s", "")
    assert d.done[tokens[0]][0] and tokens[1] not in d.done
    assert d.acquire(late)["acquired"] is False
    d.apply("sem.release", holders[1], "s", "")
    assert d.done[tokens[1]][0]
    for sid in waiters[:4]:  # each release grants the next waiter, in order
        d.apply("sem.release", sid, "s", "")
    granted = [t for t in tokens if t in d.done]
    assert granted == tokens
    order = [d.done[t][1]["token"] for t in tokens]
    assert order == sorted(order) and len(set(order)) == len(order)


def test_a_long_queue_never_starves_the_first_waiter():
    d = Driver()
    holder = d.session()
    d.acquire(holder, limit=1)
    first = d.session()
    first_wait = d.acquire(first, limit=1, wait_ms=60_000).token
    for _ in range(50):  # a crowd arrives after it
        d.acquire(d.session(), limit=1, wait_ms=60_000)
    d.apply("sem.release", holder, "s", "")
    assert d.done[first_wait][0] and d.done[first_wait][1]["acquired"]
    assert len(d.done) == 1


def test_session_death_frees_its_slots_and_fails_its_waits():
    d = Driver()
    short = d.session(ttl_ms=1_000)
    other = d.session(ttl_ms=60_000)
    d.acquire(short, limit=1)
    waiter = d.session(ttl_ms=60_000)
    wait_token = d.acquire(waiter, limit=1, wait_ms=30_000).token
    doomed = d.session(ttl_ms=2_000)
    doomed_wait = d.acquire(doomed, limit=1, wait_ms=30_000).token
    d.acquire(other, name="t", limit=1)
    d.now += 1_500  # the short session expires: its slot goes to the first waiter
    d.tick()
    assert d.done[wait_token][0] and d.done[wait_token][1]["acquired"]
    assert [h["session"] for h in d.inspect()["holders"]] == [waiter]
    d.now += 1_000  # the doomed waiter's session ends: its wait fails, typed
    d.tick()
    ok, (code, message, _details) = d.done[doomed_wait]
    assert not ok and code == "session_expired" and "semaphore s" in message
    assert d.inspect()["waiters"] == []
    d.apply("session.close", waiter)
    assert d.inspect()["limit"] is None  # idle semaphores are dropped
    assert [h["session"] for h in d.inspect("t")["holders"]] == [other]


def test_waits_time_out_by_log_time():
    d = Driver()
    d.acquire(d.session(), limit=1)
    token = d.acquire(d.session(), limit=1, wait_ms=2_000).token
    assert d.m.next_deadline() == START_MS + 2_000
    d.now += 2_000
    d.tick()
    assert d.done[token] == (True, {"acquired": False, "timed_out": True})
    assert d.inspect()["waiters"] == []


def test_tokens_increase_even_when_one_entry_grants_several_slots_and_after_a_drop():
    d = Driver()
    dying = d.session(ttl_ms=1_000)
    d.acquire(dying, limit=3, owner="a")
    d.acquire(dying, limit=3, owner="b")
    d.acquire(dying, limit=3, owner="c")
    waits = [d.acquire(d.session(), limit=3, wait_ms=30_000).token for _ in range(3)]
    d.now += 1_500
    d.tick()  # one entry frees three slots and grants three waiters
    granted = [d.done[t][1]["token"] for t in waits]
    assert granted == sorted(granted) and len(set(granted)) == 3
    holders = [h["session"] for h in d.inspect()["holders"]]
    for sid in holders:
        d.apply("sem.release", sid, "s", "")
    assert d.inspect()["limit"] is None
    again = d.acquire(d.session(), limit=3)
    assert again["token"] > max(granted)
    assert d.m.query(msgpack.packb(["sem.check_token", "s", again["token"]])) is True
    assert d.m.query(msgpack.packb(["sem.check_token", "s", granted[0]])) is False


def test_reentry_counts_and_keeps_the_token():
    d = Driver()
    sid = d.session()
    first = d.acquire(sid, limit=1)
    second = d.acquire(sid, limit=1)
    assert second["token"] == first["token"] and second["count"] == 2
    assert d.apply("sem.release", sid, "s", "")["count"] == 1
    assert d.inspect()["holders"][0]["count"] == 1


def test_limit_mismatch_and_bad_limits_are_typed_errors():
    d = Driver()
    a = d.session()
    d.acquire(a, limit=2)
    exc = d.rejected("sem.acquire", d.session(), "s", 3, "", 0)
    assert exc.code == "semaphore_limit" and exc.details["limit"] == 2
    assert isinstance(typed(Rejected(exc.code, exc.message, exc.details)), SemaphoreLimitError)
    for bad in (0, -1, 10_001):
        exc = d.rejected("sem.acquire", a, "u", bad, "", 0)
        assert exc.code == "limit_exceeded"
        assert isinstance(typed(Rejected(exc.code, exc.message)), LimitExceeded)
    assert d.rejected("sem.acquire", a, "x" * 201, 1, "", 0).code == "limit_exceeded"
    assert d.rejected("sem.acquire", a, "u", True, "", 0).code == "bad_command"
    assert d.rejected("sem.release", a, "s", "other").code == "not_holder"
    assert d.rejected("sem.acquire", 999_999, "s", 2, "", 0).code == "unknown_session"
    d.apply("sem.release", a, "s", "")  # idle: the next acquire sets the limit afresh
    assert d.acquire(a, limit=5)["limit"] == 5


def test_one_wait_per_owner_and_semaphore():
    d = Driver()
    d.acquire(d.session(), limit=1)
    sid = d.session()
    d.acquire(sid, limit=1, wait_ms=5_000)
    assert d.rejected("sem.acquire", sid, "s", 1, "", 5_000).code == "bad_command"
    assert isinstance(d.acquire(sid, limit=1, wait_ms=5_000, owner="other"), Pending)


def test_snapshot_round_trip_keeps_holders_waiters_deadlines_and_tokens():
    d = Driver()
    h1, h2 = d.session(), d.session()
    d.acquire(h1, limit=2)
    d.acquire(h2, limit=2)
    w = d.session(ttl_ms=60_000)
    wait_token = d.acquire(w, limit=2, wait_ms=4_000).token
    d.acquire(h1, name="other", limit=1)
    snap = d.m.snapshot()

    restored = sem_machine()
    restored.restore(snap)
    r = Driver(restored)
    r.index, r.now = d.index, d.now
    assert r.inspect() == d.inspect() and r.m.snapshot() == snap
    assert r.m.next_deadline() == d.m.next_deadline()
    r.apply("sem.release", h1, "s", "")
    assert r.done[wait_token][0]
    assert r.done[wait_token][1]["token"] > max(h["token"] for h in d.inspect()["holders"])
    r.apply("session.close", h1)  # the restored session index still frees its other slot
    assert r.inspect("other")["limit"] is None


def test_a_snapshot_without_the_part_restores_empty():
    old = msgpack.packb([1, {"sessions": [[], []]}], use_bin_type=True)
    m = sem_machine()
    m.restore(old)
    assert m.part("semaphores").to_state() == {"last_token": 0, "sems": []}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["acq", "wait", "rel", "close", "tick"]), st.integers(0, 5)),
        max_size=60,
    )
)
def test_random_operations_never_exceed_the_limit_and_grant_in_arrival_order(steps):
    d = Driver()
    limit = 2
    sessions = [d.session(ttl_ms=3_000) for _ in range(6)]
    pending: list[int] = []  # request tokens, arrival order
    granted_order: list[int] = []
    for action, i in steps:
        sid = sessions[i]
        before = set(d.done)
        try:
            if action == "acq":
                d.acquire(sid, limit=limit)
            elif action == "wait":
                result = d.acquire(sid, limit=limit, wait_ms=2_000)
                if isinstance(result, Pending):
                    pending.append(result.token)
            elif action == "rel":
                d.apply("sem.release", sid, "s", "")
            elif action == "close":
                d.apply("session.close", sid)
            else:
                d.now += 700
                d.tick()
        except CommandRejected:
            pass
        granted_order += [
            t
            for t in pending
            if t in set(d.done) - before and d.done[t][0] and d.done[t][1].get("acquired")
        ]
        info = d.inspect()
        assert len(info["holders"]) <= limit
        if info["waiters"]:
            assert len(info["holders"]) == limit  # nobody waits while a slot is free
        tokens = [h["token"] for h in info["holders"]]
        assert len(set(tokens)) == len(tokens)
    assert granted_order == sorted(granted_order)  # FIFO: earlier requests granted first
