"""The results primitive, driven through ``CoordinationMachine`` with msgpack commands at
increasing indexes and a hand-moved log clock: directed transcripts for every op, waits and
their timeouts, expiry, limits, snapshot round trips, the applier's exactly-once answer to a
retried wait, and a stateful property test against a plain reference model."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from search_depth import examples

from coordination.primitives import errors, limits
from coordination.primitives.machine import CoordinationMachine
from coordination.primitives.results import MEMBER_OVERHEAD, RECORD_OVERHEAD, Results
from raft_node.core.fsm import CommandRejected, Pending
from raft_node.core.messages import Entry
from raft_node.host.applier import Applier, encode_command


class Node:
    """One replica's state machine, fed by hand."""

    def __init__(self) -> None:
        self.m = CoordinationMachine()
        self.index = 0
        self.now = 1_000

    @property
    def part(self) -> Results:
        part = self.m.part("results")
        assert isinstance(part, Results)
        return part

    def do(self, op: str, *args: Any) -> Any:
        self.index += 1
        return self.m.apply(self.index, msgpack.packb([op, *args], use_bin_type=True), self.now)

    def query(self, op: str, *args: Any) -> Any:
        return self.m.query(msgpack.packb([op, *args], use_bin_type=True))

    def tick(self, advance_ms: int = 0) -> dict[int, tuple[bool, Any]]:
        self.now += advance_ms
        self.index += 1
        self.m.apply(self.index, self.m.tick_command(), self.now)
        return self.done()

    def done(self) -> dict[int, tuple[bool, Any]]:
        return {token: (ok, value) for token, ok, value in self.m.drain_completions()}

    def rejected(self, code: str, op: str, *args: Any) -> str:
        with pytest.raises(CommandRejected) as info:
            self.do(op, *args)
        assert info.value.code == code, info.value.message
        return info.value.message

    def set(self, key: str, value: bytes, ttl: int | None = None, final=True, keep=False) -> Any:
        return self.do("result.set", key, value, ttl, final, keep)

    def get(self, key: str) -> Any:
        return self.query("result.get", key)


@pytest.fixture
def node() -> Node:
    return Node()


def state_bytes(machine: CoordinationMachine) -> bytes:
    return msgpack.packb(machine.part("results").to_state(), use_bin_type=True)


# -- set / get / keep -----------------------------------------------------------------------------


def test_set_get_versions_and_replace(node: Node) -> None:
    assert node.get("r:1") is None
    assert node.set("r:1", b"one", final=False) == {"version": 1, "stored": True}
    assert node.get("r:1") == {"value": b"one", "version": 1, "final": False, "expires_ms": None}
    assert node.set("r:1", b"two") == {"version": 2, "stored": True}
    assert node.get("r:1")["value"] == b"two" and node.get("r:1")["final"] is True
    assert node.query("result.get_many", ["r:1", "nope"]) == [node.get("r:1"), None]
    assert node.part.bytes == len("r:1") + 3 + RECORD_OVERHEAD


def test_a_kept_record_is_never_replaced_but_can_be_deleted(node: Node) -> None:
    node.set("r:ok", b"SUCCESS", keep=True)
    assert node.set("r:ok", b"late FAILURE") == {"version": 1, "stored": False}
    assert node.set("r:ok", b"again", keep=True) == {"version": 1, "stored": False}
    assert node.get("r:ok")["value"] == b"SUCCESS"
    assert node.do("result.delete", "r:ok") is True
    assert node.do("result.delete", "r:ok") is False
    assert node.set("r:ok", b"new") == {"version": 6, "stored": True}


# -- waits ----------------------------------------------------------------------------------------


def test_wait_answers_final_records_at_once_in_key_order(node: Node) -> None:
    node.set("b", b"B")
    node.set("a", b"A")
    node.set("c", b"started", final=False)
    found = node.do("result.wait", ["c", "a", "b", "a"], 10_000)
    assert [key for key, _ in found] == ["a", "b"]
    assert found[0][1] == node.get("a")
    assert node.do("result.wait", ["c"], 0) == []  # no wait: an empty answer at once
    assert not node.part.waiters


def test_a_blocked_wait_is_completed_by_the_first_final_set(node: Node) -> None:
    first = node.do("result.wait", ["x", "y"], 30_000)
    second = node.do("result.wait", ["y"], 30_000)
    assert first == Pending(1) and second == Pending(2)
    node.set("y", b"started", final=False)  # not final: nobody is woken
    assert node.done() == {}
    node.set("y", b"done")
    record = node.get("y")
    assert node.done() == {1: (True, [["y", record]]), 2: (True, [["y", record]])}
    assert not node.part.waiters and not node.part._by_key  # dropped from "x" too
    node.set("x", b"late")
    assert node.done() == {}


def test_a_wait_times_out_at_its_deadline_by_log_time(node: Node) -> None:
    token = node.do("result.wait", ["slow"], 5_000).token
    assert node.m.next_deadline() == node.now + 5_000
    assert node.tick(4_999) == {}
    assert node.tick(1) == {token: (True, [])}
    assert node.m.next_deadline() is None and not node.part.waiters
    node.set("slow", b"too late")
    assert node.done() == {}


def test_waiters_are_bounded(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "RESULT_WAITERS_MAX", 2)
    node.do("result.wait", ["a"], 1_000)
    node.do("result.wait", ["b"], 1_000)
    message = node.rejected(errors.LIMIT, "result.wait", ["c"], 1_000)
    assert "RESULT_WAITERS_MAX" in message
    node.tick(1_000)
    assert isinstance(node.do("result.wait", ["c"], 1_000), Pending)


def test_waited_keys_are_bounded_in_total(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "RESULT_WAITED_KEYS_MAX", 3)
    node.do("result.wait", ["a", "b"], 1_000)
    message = node.rejected(errors.LIMIT, "result.wait", ["c", "d"], 1_000)
    assert "RESULT_WAITED_KEYS_MAX" in message
    assert isinstance(node.do("result.wait", ["c"], 1_000), Pending)
    node.set("a", b"done")  # the first waiter is answered: its two keys are free again
    assert isinstance(node.do("result.wait", ["d", "e"], 1_000), Pending)
    assert node.part._waited == 3


def test_wait_arguments_are_checked(node: Node) -> None:
    node.rejected(errors.BAD_COMMAND, "result.wait", [], 1_000)
    node.rejected(errors.BAD_COMMAND, "result.wait", [f"k{i}" for i in range(1001)], 1_000)
    node.rejected(errors.LIMIT, "result.wait", ["k"], limits.WAIT_MS[1] + 1)
    node.rejected(errors.BAD_COMMAND, "result.wait", ["bad key"], 1_000)


def test_answers_are_size_capped_but_never_empty(node: Node, monkeypatch: pytest.MonkeyPatch):
    for key in ("a", "b", "c"):
        node.set(key, b"x" * 100)
    monkeypatch.setattr(limits, "RESULT_READ_BUDGET_BYTES", 250)
    assert len(node.query("result.get_many", ["a", "b", "c"])) == 2  # a prefix: ask again
    assert [k for k, _ in node.do("result.wait", ["a", "b", "c"], 0)] == ["a", "b"]
    monkeypatch.setattr(limits, "RESULT_READ_BUDGET_BYTES", 10)
    assert len(node.query("result.get_many", ["a", "b"])) == 1
    assert len(node.do("result.wait", ["c", "a"], 0)) == 1


# -- expiry ---------------------------------------------------------------------------------------


def test_records_expire_by_log_time_and_ticks_reclaim_them(node: Node) -> None:
    node.set("r", b"v", ttl=1_000)
    node.set("forever", b"v")
    assert node.get("r")["expires_ms"] == node.now + 1_000
    assert node.m.next_deadline() == node.now + 1_000
    node.now += 999
    node.do("result.delete", "nothing")  # any entry moves the log clock
    assert node.get("r") is not None
    node.now += 1
    node.set("other", b"v", ttl=60_000)
    assert node.get("r") is None  # expired for reads at once...
    assert "r" in node.part.records  # ...removed by the tick
    node.tick()
    assert "r" not in node.part.records and node.part.expired == 1
    assert node.part.bytes == sum(r.size for r in node.part.records.values())
    assert node.get("forever") is not None


def test_expire_moves_or_removes_the_deadline(node: Node) -> None:
    node.set("r", b"v", ttl=1_000)
    assert node.do("result.expire", "r", 10_000) is True
    node.tick(5_000)
    assert node.get("r") is not None  # the old deadline was skipped
    assert node.do("result.expire", "r", None) is True
    node.tick(10 * 3_600_000)
    assert node.get("r") is not None and node.get("r")["expires_ms"] is None
    assert node.do("result.expire", "missing", 1_000) is False
    node.do("result.expire", "r", 1)
    node.now += 1
    assert node.do("result.expire", "r", 5_000) is False  # expired: a write sees it absent


def test_a_write_to_an_expired_kept_record_replaces_it(node: Node) -> None:
    node.set("r", b"old", ttl=100, keep=True)
    node.now += 100
    assert node.set("r", b"new")["stored"] is True
    assert node.get("r")["value"] == b"new" and node.part.expired == 1


# -- counters -------------------------------------------------------------------------------------


def test_incr_counts_once_per_member(node: Node) -> None:
    assert node.do("result.incr", "c", 1, None, "t1:0") == {
        "value": 1,
        "counted": True,
        "last": "t1:0",
    }
    assert node.do("result.incr", "c", 1, None, "t2:1")["value"] == 2
    again = node.do("result.incr", "c", 1, None, "t1:0")
    assert again == {"value": 2, "counted": False, "last": "t2:1"}
    assert node.do("result.incr", "c", 5, None, None) == {"value": 7, "counted": True, "last": None}
    assert node.get("c")["value"] == 7 and node.get("c")["final"] is False
    size = len("c") + 8 + RECORD_OVERHEAD + 2 * (len("t1:0") + MEMBER_OVERHEAD)
    assert node.part.bytes == size


def test_incr_ttl_type_and_range(node: Node) -> None:
    node.do("result.incr", "c", 1, 1_000, None)
    assert node.get("c")["expires_ms"] == node.now + 1_000
    node.tick(1_000)
    assert node.get("c") is None
    node.set("v", b"value")
    assert "counter" in node.rejected(errors.NOT_INTEGER, "result.incr", "v", 1, None, None)
    node.do("result.incr", "big", 2**63 - 1, None, None)
    node.rejected(errors.LIMIT, "result.incr", "big", 1, None, None)
    node.rejected(errors.BAD_COMMAND, "result.incr", "c", 1, None, "")


# -- limits ---------------------------------------------------------------------------------------


def test_value_size_limit_names_the_limit(node: Node) -> None:
    value = b"x" * (limits.RESULT_VALUE_MAX_BYTES + 1)
    message = node.rejected(errors.LIMIT, "result.set", "big", value, None, True, False)
    assert "RESULT_VALUE_MAX_BYTES" in message and "'big'" in message
    node.set("fits", b"x" * limits.RESULT_VALUE_MAX_BYTES)
    assert node.get("big") is None and node.get("fits") is not None


def test_record_and_byte_limits_refuse_rather_than_evict(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "RESULT_RECORDS_MAX", 2)
    node.set("a", b"1")
    node.do("result.incr", "b", 1, None, None)
    assert "RESULT_RECORDS_MAX" in node.rejected(
        errors.LIMIT, "result.set", "c", b"", None, True, False
    )
    node.rejected(errors.LIMIT, "result.incr", "c", 1, None, None)
    node.set("a", b"replaced")  # replacing needs no new record
    monkeypatch.setattr(limits, "RESULT_TOTAL_MAX_BYTES", node.part.bytes + 10)
    message = node.rejected(errors.LIMIT, "result.set", "a", b"x" * 100, None, True, False)
    assert "RESULT_TOTAL_MAX_BYTES" in message
    node.rejected(errors.LIMIT, "result.incr", "b", 1, None, "a-long-member-name")
    assert node.get("a")["value"] == b"replaced" and node.get("b")["value"] == 1


def test_counter_members_are_bounded(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "RESULT_COUNTER_MEMBERS_MAX", 2)
    node.do("result.incr", "c", 1, None, "m1")
    node.do("result.incr", "c", 1, None, "m2")
    message = node.rejected(errors.LIMIT, "result.incr", "c", 1, None, "m3")
    assert "RESULT_COUNTER_MEMBERS_MAX" in message
    assert node.do("result.incr", "c", 1, None, "m1")["counted"] is False  # a repeat still answers


def test_malformed_commands(node: Node) -> None:
    node.rejected(errors.BAD_COMMAND, "result.set", "k", "text", None, True, False)
    node.rejected(errors.BAD_COMMAND, "result.set", "k", b"v", None, 1, False)
    node.rejected(errors.BAD_COMMAND, "result.set", "k", b"v", None, True)
    node.rejected(errors.LIMIT, "result.set", "k", b"v", 0, True, False)
    node.rejected(errors.LIMIT, "result.set", "k" * 201, b"v", None, True, False)
    with pytest.raises(CommandRejected):
        node.query("result.get_many", [])


# -- snapshots and replicas -----------------------------------------------------------------------


def _script(node: Node) -> list[Any]:
    out: list[Any] = []
    out.append(node.set("a", b"A", ttl=5_000, final=False))
    out.append(node.do("result.wait", ["a", "b"], 20_000))
    out.append(node.do("result.wait", ["c"], 3_000))
    out.append(node.do("result.incr", "chord", 1, 60_000, "t1:0"))
    out.append(node.set("k", b"kept", keep=True))
    out.append(node.tick(1_000))
    return out


def _script_after(node: Node) -> list[Any]:
    out: list[Any] = []
    out.append(node.tick(2_500))  # the "c" wait times out
    out.append(node.set("b", b"B"))
    out.append(node.done())
    out.append(node.do("result.incr", "chord", 1, 60_000, "t1:0"))
    out.append(node.tick(5_000))  # "a" expires
    out.append(node.query("result.get_many", ["a", "b", "chord", "k"]))
    out.append(node.query("result.stats"))
    return out


def test_snapshot_round_trips_exactly_and_replicas_behave_the_same() -> None:
    original = Node()
    _script(original)
    state = original.part.to_state()
    copy = Results()
    copy.from_state(msgpack.unpackb(msgpack.packb(state), raw=False, strict_map_key=False))
    assert copy.to_state() == state and copy.bytes == original.part.bytes
    replica = Node()
    replica.m.restore(original.m.snapshot())
    replica.index, replica.now = original.index, original.now
    assert state_bytes(replica.m) == state_bytes(original.m)
    assert replica.m.next_deadline() == original.m.next_deadline()
    expected = _script_after(original)
    assert _script_after(replica) == expected
    assert state_bytes(replica.m) == state_bytes(original.m)
    assert expected[2] and expected[0]  # completions happened on both


def test_two_replicas_fed_the_same_log_have_identical_snapshots() -> None:
    left, right = Node(), Node()
    for node in (left, right):
        _script(node)
        _script_after(node)
    assert left.m.snapshot() == right.m.snapshot()


def test_a_snapshot_from_before_the_results_part_restores_empty() -> None:
    node = Node()
    node.set("a", b"A")
    version, state = msgpack.unpackb(node.m.snapshot(), raw=False, strict_map_key=False)
    del state["results"]
    fresh = CoordinationMachine()
    fresh.restore(msgpack.packb([version, state], use_bin_type=True))
    assert fresh.part("results").to_state() == Results().to_state()


def test_a_retried_wait_is_told_pending_then_answered_once_through_the_applier() -> None:
    """What happens when a client re-sends a blocked wait after a leader change: the applier
    dedups it by (client, seq) and the completion answers the original request."""
    applier = Applier(CoordinationMachine())
    wait = msgpack.packb(["result.wait", ["job"], 30_000], use_bin_type=True)
    first = applier.apply(Entry(1, 1, data=encode_command("c1", 1, 5_000, wait)))
    assert first[0].pending
    retry = applier.apply(Entry(2, 2, data=encode_command("c1", 1, 5_100, wait)))
    assert [o.pending for o in retry] == [True]
    store = msgpack.packb(["result.set", "job", b"v", None, True, True], use_bin_type=True)
    outcomes = applier.apply(Entry(3, 2, data=encode_command("c2", 1, 5_200, store)))
    answer = [o for o in outcomes if o.client_id == "c1"]
    assert len(answer) == 1 and answer[0].seq == 1 and answer[0].value[0][0] == "job"
    late = applier.apply(Entry(4, 2, data=encode_command("c1", 1, 5_300, wait)))
    assert late[0].value == answer[0].value and not late[0].pending


# -- stateful property test against a reference model ---------------------------------------------

KEYS = ["a", "b", "c"]


class ResultsModel(RuleBasedStateMachine):
    """Records ``key -> [value, version, final, keep, expires, members, last]`` and waiters
    ``[token, keys, deadline]``. An expired record stays (reading as absent) until a tick or a
    write to its key removes it, as in the part. Completions are predicted and compared after
    every step."""

    def __init__(self) -> None:
        super().__init__()
        self.node = Node()
        self.recs: dict[str, list[Any]] = {}
        self.waiters: list[list[Any]] = []
        self.expected: dict[int, tuple[bool, Any]] = {}

    def peek(self, key: str) -> list[Any] | None:
        rec = self.recs.get(key)
        if rec is not None and rec[4] is not None and rec[4] <= self.node.now:
            return None
        return rec

    def live(self, key: str) -> list[Any] | None:
        """As a write sees it: an expired record is removed first."""
        rec = self.peek(key)
        if rec is None:
            self.recs.pop(key, None)
        return rec

    @staticmethod
    def view(rec: list[Any]) -> dict[str, Any]:
        return {"value": rec[0], "version": rec[1], "final": rec[2], "expires_ms": rec[4]}

    @rule(
        key=st.sampled_from(KEYS),
        value=st.binary(max_size=4),
        ttl=st.sampled_from([None, None, 500, 3_000]),
        final=st.booleans(),
        keep=st.booleans(),
    )
    def set(self, key: str, value: bytes, ttl: int | None, final: bool, keep: bool) -> None:
        got = self.node.set(key, value, ttl, final, keep)
        rec = self.live(key)
        if rec is not None and rec[3]:
            assert got == {"version": rec[1], "stored": False}
            return
        now, index = self.node.now, self.node.index
        rec = [value, index, final, keep, None if ttl is None else now + ttl, None, None]
        self.recs[key] = rec
        assert got == {"version": index, "stored": True}
        if final:
            for waiter in [w for w in self.waiters if key in w[1]]:
                self.waiters.remove(waiter)
                self.expected[waiter[0]] = (True, [[key, self.view(rec)]])

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        existed = self.live(key) is not None
        assert self.node.do("result.delete", key) is existed
        self.recs.pop(key, None)

    @rule(key=st.sampled_from(KEYS), ttl=st.sampled_from([None, 1, 2_000]))
    def expire(self, key: str, ttl: int | None) -> None:
        rec = self.live(key)
        assert self.node.do("result.expire", key, ttl) is (rec is not None)
        if rec is not None:
            rec[4] = None if ttl is None else self.node.now + ttl

    @rule(
        key=st.sampled_from(KEYS),
        delta=st.integers(-3, 3),
        member=st.sampled_from([None, "m1", "m2"]),
        ttl=st.sampled_from([None, None, 800]),
    )
    def incr(self, key: str, delta: int, member: str | None, ttl: int | None) -> None:
        rec = self.peek(key)
        if rec is not None and not isinstance(rec[0], int):
            self.node.rejected(errors.NOT_INTEGER, "result.incr", key, delta, ttl, member)
            return
        got = self.node.do("result.incr", key, delta, ttl, member)
        rec = self.live(key)
        if rec is None:
            rec = self.recs[key] = [0, 0, False, False, None, [], None]
        if ttl is not None:
            rec[4] = self.node.now + ttl
        if member is not None and member in rec[5]:
            assert got == {"value": rec[0], "counted": False, "last": rec[6]}
            return
        rec[0] += delta
        rec[1] = self.node.index
        rec[6] = member
        if member is not None:
            rec[5].append(member)
        assert got == {"value": rec[0], "counted": True, "last": member}

    @rule(
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
        wait=st.sampled_from([0, 1_000, 2_000]),
    )
    def wait(self, keys: list[str], wait: int) -> None:
        got = self.node.do("result.wait", keys, wait)
        finals = [[k, self.view(r)] for k in keys if (r := self.peek(k)) is not None and r[2]]
        if finals or wait == 0:
            assert got == finals
        else:
            assert got == Pending(self.node.index)
            self.waiters.append([self.node.index, keys, self.node.now + wait])

    @rule(advance=st.sampled_from([0, 300, 1_000, 2_500]))
    def tick(self, advance: int) -> None:
        node = self.node
        node.now += advance
        node.index += 1
        node.m.apply(node.index, node.m.tick_command(), node.now)
        for waiter in [w for w in self.waiters if w[2] <= node.now]:
            self.waiters.remove(waiter)
            self.expected[waiter[0]] = (True, [])
        for key in KEYS:
            self.live(key)

    @invariant()
    def matches_model(self) -> None:
        assert self.node.done() == self.expected
        self.expected = {}
        part = self.node.part
        assert set(part.records) == set(self.recs)
        for key in KEYS:
            rec = self.peek(key)
            assert self.node.get(key) == (None if rec is None else self.view(rec))
        assert part.bytes == sum(r.size for r in part.records.values())
        assert part._waited == sum(len(w[0]) for w in part.waiters.values())
        assert {t: (keys, d) for t, keys, d in self.waiters} == {
            t: (w[0], w[1]) for t, w in part.waiters.items()
        }
        deadlines = [w[2] for w in self.waiters]
        deadlines += [r[4] for r in self.recs.values() if r[4] is not None]
        assert part.next_deadline() == (min(deadlines) if deadlines else None)

    @invariant()
    def survives_snapshot(self) -> None:
        if self.node.index % 5:
            return
        replica = CoordinationMachine()
        replica.restore(self.node.m.snapshot())
        assert state_bytes(replica) == state_bytes(self.node.m)
        assert replica.part("results").to_state() == self.node.part.to_state()


ResultsModel.TestCase.settings = settings(
    max_examples=examples(quick=100, deep=300),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestResultsModel = ResultsModel.TestCase
