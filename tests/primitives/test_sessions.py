"""Sessions and the composing machine: open/keepalive/close, leader-driven expiry, grace."""

from __future__ import annotations

import msgpack
import pytest

from coordination.primitives.machine import GRACE, TICK, CoordinationMachine
from raft_node.core.fsm import CommandRejected


class Driver:
    """Applies ``[op, *args]`` commands at increasing indexes with a controllable log clock."""

    def __init__(self) -> None:
        self.m = CoordinationMachine()
        self.index = 0
        self.now = 1_000_000

    def apply(self, op: str, *args, raw: bytes | None = None):
        self.index += 1
        return self.m.apply(self.index, raw or msgpack.packb([op, *args]), self.now)

    def query(self, op: str, *args):
        return self.m.query(msgpack.packb([op, *args]))

    def tick(self):
        self.index += 1
        return self.m.apply(self.index, TICK, self.now)


def test_open_keepalive_and_expiry_by_leader_tick():
    d = Driver()
    sid = d.apply("session.open", 5_000, "worker-1")["session"]
    assert d.m.next_deadline() == d.now + 5_000
    d.now += 4_000
    assert d.apply("session.keepalive", sid)["expires_ms"] == d.now + 5_000
    d.now += 4_999
    d.tick()
    assert d.query("session.get", sid)["label"] == "worker-1"
    d.now += 1
    d.tick()
    assert d.query("session.get", sid) is None
    with pytest.raises(CommandRejected) as info:
        d.apply("session.keepalive", sid)
    assert info.value.code == "session_expired"


def test_unknown_and_closed_sessions_are_typed():
    d = Driver()
    with pytest.raises(CommandRejected) as info:
        d.apply("session.keepalive", 999)
    assert info.value.code == "unknown_session"
    sid = d.apply("session.open", 5_000, "")["session"]
    assert d.apply("session.close", sid) is True
    with pytest.raises(CommandRejected) as info:
        d.apply("session.close", sid)
    assert info.value.code == "session_expired"


def test_new_leader_grace_extends_every_session_by_one_ttl():
    d = Driver()
    sid = d.apply("session.open", 5_000, "")["session"]
    d.now += 4_500  # the old leader died; keepalives could not get through
    d.index += 1
    d.m.apply(d.index, GRACE, d.now)
    assert d.query("session.get", sid)["expires_ms"] == d.now + 5_000
    d.now += 4_000
    d.tick()
    assert d.query("session.get", sid) is not None


@pytest.mark.parametrize("ttl", [0, 999, 3_600_001, "10", True])
def test_session_ttl_limits(ttl):
    with pytest.raises(CommandRejected) as info:
        Driver().apply("session.open", ttl, "")
    assert info.value.code in ("limit_exceeded", "bad_command")


def test_bad_commands_are_rejected_without_side_effects():
    d = Driver()
    for raw in (b"\xc1", msgpack.packb({}), msgpack.packb([]), msgpack.packb(["nope"])):
        with pytest.raises(CommandRejected) as info:
            d.apply("", raw=raw)
        assert info.value.code == "bad_command"
    assert d.query("session.list") == []


def test_snapshot_restore_keeps_sessions_and_deadlines():
    d = Driver()
    a = d.apply("session.open", 5_000, "a")["session"]
    d.now += 1_000
    b = d.apply("session.open", 9_000, "b")["session"]
    copy = CoordinationMachine()
    copy.restore(d.m.snapshot())
    assert copy.snapshot() == d.m.snapshot()
    assert copy.next_deadline() == d.m.next_deadline()
    d.now += 5_000
    for m in (d.m, copy):
        m.apply(d.index + 1, TICK, d.now)
        assert [s["session"] for s in m.query(msgpack.packb(["session.list"]))] == [b]
    assert a != b


def test_keepalive_that_does_not_move_the_deadline_expires_once():
    """Regression: a second identical deadline entry must not end the session twice."""
    d = Driver()
    sid = d.apply("session.open", 1_000, "")["session"]
    d.apply("session.keepalive", sid)  # same log time: same deadline, pushed again
    d.now += 1_000
    d.tick()  # used to raise KeyError inside apply (fatal for a node)
    assert d.query("session.get", sid) is None


def test_session_rows_say_how_long_is_left_by_log_time():
    d = Driver()
    sid = d.apply("session.open", 5_000, "w")["session"]
    assert d.query("session.get", sid)["expires_in_ms"] == 5_000
    d.now += 1_500
    d.apply("session.open", 5_000, "other")  # any applied entry moves log time
    assert d.query("session.get", sid)["expires_in_ms"] == 3_500
    assert [row["expires_in_ms"] for row in d.query("session.list")] == [3_500, 5_000]
    copy = CoordinationMachine()  # restored, nothing applied since: log time is unknown
    copy.restore(d.m.snapshot())
    assert copy.query(msgpack.packb(["session.get", sid]))["expires_in_ms"] is None
