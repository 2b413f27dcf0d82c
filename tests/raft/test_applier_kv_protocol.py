"""The applier's exactly-once rule, the KV state machine and the client protocol's validation."""

from __future__ import annotations

import msgpack
import pytest

from raft_node import kvstore
from raft_node.client import parse_addresses
from raft_node.core.fsm import CommandRejected, Pending
from raft_node.core.messages import Entry, EntryType
from raft_node.host.applier import Applier, encode_command
from raft_node.kvstore import KVStore
from raft_node.transport import client_protocol as p


def _entry(index: int, client: str, seq: int, body: bytes, stamp: int = 1000) -> Entry:
    return Entry(1, index, encode_command(client, seq, stamp, body))


def test_retried_request_applies_once_and_gets_the_first_result():
    ap = Applier(KVStore())
    first = ap.apply(_entry(1, "c", 1, kvstore.incr("x")))[0]
    again = ap.apply(_entry(2, "c", 1, kvstore.incr("x")))[0]
    assert first.value == again.value == 1
    assert ap.sm.data["x"] == b"1"
    older = ap.apply(_entry(3, "c", 1, kvstore.incr("x")))[0]
    assert older.value == 1  # still the same request
    ap.apply(_entry(4, "c", 2, kvstore.incr("x")))
    stale = ap.apply(_entry(5, "c", 1, kvstore.incr("x")))[0]
    assert not stale.ok and stale.value[0] == "duplicate"
    assert ap.sm.data["x"] == b"2"


def test_rejected_command_leaves_state_and_is_remembered():
    ap = Applier(KVStore())
    bad = ap.apply(_entry(1, "c", 1, msgpack.packb(("frobnicate",))))[0]
    assert not bad.ok and bad.value[0] == "bad_command"
    assert ap.apply(_entry(2, "c", 1, kvstore.put("k", b"v")))[0].value == bad.value


class _Refuser:
    """Refuses every command with the code, message and details it names."""

    def apply(self, index, command, now_ms):
        code, message, details = msgpack.unpackb(command)
        raise CommandRejected(code, message, details)

    def query(self, query):
        return None

    def snapshot(self):
        return b""

    def restore(self, data):
        pass


def test_a_rejection_keeps_its_code_message_and_details_through_retries_and_snapshots():
    ap = Applier(_Refuser())
    body = msgpack.packb(["deadlock", "cycle: 1 -> 2 -> 1", {"cycle": [1, 2, 1]}])
    first = ap.apply(_entry(1, "c", 1, body))[0]
    assert (first.ok, first.value) == (
        False,
        ("deadlock", "cycle: 1 -> 2 -> 1", {"cycle": [1, 2, 1]}),
    )
    assert ap.apply(_entry(2, "c", 1, body))[0].value == first.value  # a retry: remembered
    restored = Applier(_Refuser())
    restored.restore(ap.snapshot())
    assert restored.apply(_entry(3, "c", 1, body))[0].value == first.value
    ap.apply(_entry(5, "c", 2, body))
    older = ap.apply(_entry(6, "c", 1, body))[0]
    assert older.value == ("duplicate", "request superseded", {"seq": 2})


def test_a_snapshot_from_before_details_restores_rejections_with_empty_details():
    old = msgpack.packb((2, 7, 1000, [["c", 1, False, ["bad_key", "x"], 1000]], [], b""))
    ap = Applier(_Refuser())
    ap.restore(old)
    assert ap.apply(_entry(8, "c", 1, b"\x90"))[0].value == ("bad_key", "x", {})


def test_log_clock_never_goes_backwards():
    ap = Applier(KVStore())
    ap.apply(_entry(1, "a", 1, kvstore.put("k", b"1"), stamp=5000))
    ap.apply(_entry(2, "b", 1, kvstore.put("k", b"2"), stamp=4000))  # a new leader, behind
    assert ap.now_ms == 5000


def test_idle_clients_are_forgotten_by_log_time():
    ap = Applier(KVStore(), client_ttl_ms=1000)
    ap.apply(_entry(1, "old", 1, kvstore.put("k", b"1"), stamp=0))
    ap.apply(_entry(2, "new", 1, kvstore.put("k", b"2"), stamp=5000))
    assert list(ap.clients) == ["new"]


def test_snapshot_roundtrip_keeps_dedup_table():
    ap = Applier(KVStore())
    ap.apply(_entry(1, "c", 1, kvstore.incr("x")))
    copy = Applier(KVStore())
    copy.restore(ap.snapshot())
    assert copy.apply(_entry(2, "c", 1, kvstore.incr("x")))[0].value == 1
    assert copy.sm.data == {"x": b"1"} and copy.now_ms == ap.now_ms


class Gate:
    """A toy blocking state machine: "wait" blocks until "open"; ticks time waits out."""

    def __init__(self) -> None:
        self.waiting: dict[int, int] = {}  # token -> deadline
        self.done: list[tuple[int, bool, object]] = []

    def apply(self, index, command, now_ms):
        if command == b"wait":
            self.waiting[index] = now_ms + 100
            return Pending(index)
        if command == b"open":
            self.done += [(t, True, "opened") for t in self.waiting]
            self.waiting.clear()
            return "ok"
        if command == b"tick":
            for t, deadline in list(self.waiting.items()):
                if deadline <= now_ms:
                    self.done.append((t, True, "timed out"))
                    del self.waiting[t]
            return None
        raise CommandRejected("bad_command", "?")

    def drain_completions(self):
        done, self.done = self.done, []
        return done

    def next_deadline(self):
        return min(self.waiting.values(), default=None)

    def tick_command(self):
        return b"tick"

    def query(self, q):
        return None

    def snapshot(self):
        return msgpack.packb(sorted(self.waiting.items()))

    def restore(self, data):
        self.waiting = dict(msgpack.unpackb(data))


def test_pending_request_completes_later_and_retries_see_it():
    ap = Applier(Gate())
    (first,) = ap.apply(_entry(1, "c", 1, b"wait"))
    assert first.pending
    (retry,) = ap.apply(_entry(2, "c", 1, b"wait"))  # retried while still waiting
    assert retry.pending and ap.sm.waiting == {1: 1100}
    outs = ap.apply(_entry(3, "other", 1, b"open"))
    assert [(o.client_id, o.value) for o in outs] == [("other", "ok"), ("c", "opened")]
    (late,) = ap.apply(_entry(4, "c", 1, b"wait"))  # a retry after completion gets the result
    assert (late.pending, late.value) == (False, "opened")


def test_system_ticks_expire_waits_and_survive_snapshots():
    ap = Applier(Gate())
    ap.apply(_entry(1, "c", 1, b"wait", stamp=1000))
    assert ap.next_deadline() == 1100 and ap.tick_command() == b"tick"
    copy = Applier(Gate())
    copy.restore(ap.snapshot())
    outs = copy.apply(_entry(2, "", 0, b"tick", stamp=1200))  # system command: no dedup
    assert [(o.client_id, o.seq, o.value) for o in outs] == [("c", 1, "timed out")]
    assert copy.apply(_entry(3, "", 0, b"bogus", stamp=1300)) == []  # refusals are ignored


def test_noop_entries_produce_no_outcome():
    assert Applier(KVStore()).apply(Entry(1, 1, b"", EntryType.NOOP)) == []


@pytest.mark.parametrize(
    "command",
    [
        kvstore.put("", b"v"),
        kvstore.put("k" * 2000, b"v"),
        msgpack.packb(("put", "k", "not-bytes")),
        msgpack.packb(("cas", "k")),
        b"\xc1garbage",
        msgpack.packb(42),
    ],
)
def test_kv_rejects_bad_commands_with_a_code(command: bytes):
    from raft_node.core.fsm import CommandRejected

    with pytest.raises(CommandRejected) as info:
        KVStore().apply(1, command, 0)
    assert info.value.code.startswith("bad_")


def test_kv_operations():
    kv = KVStore()
    assert kv.apply(1, kvstore.put("a", b"1"), 0) == 1
    assert kv.apply(2, kvstore.cas("a", b"1", b"2"), 0) is True
    assert kv.apply(3, kvstore.cas("a", b"1", b"3"), 0) is False
    assert kv.apply(4, kvstore.incr("a", 5), 0) == 7
    assert kv.query(kvstore.get("a")) == b"7"
    assert kv.apply(5, kvstore.delete("a"), 0) is True
    assert kv.query(kvstore.get("a")) is None


@pytest.mark.parametrize(
    "request_obj",
    [
        "nope",
        [p.PROPOSE],
        [p.PROPOSE, -1, "c", 1, b""],
        [p.PROPOSE, 1, "", 1, b""],
        [p.PROPOSE, 1, "c", 0, b""],
        [p.PROPOSE, 1, "c", True, b""],
        [p.PROPOSE, 1, "c", 1, "text"],
        [p.PROPOSE, 1, "c", 1, b"x" * (p.MAX_BODY_BYTES + 1)],
        [p.READ, 1, b"", "yes"],
        [99, 1],
    ],
)
def test_protocol_rejects_malformed_requests(request_obj):
    with pytest.raises(p.ProtocolError):
        p.parse_request(request_obj)


def test_protocol_accepts_every_request_kind():
    assert isinstance(p.parse_request([p.PROPOSE, 1, "c", 1, b"x"]), p.Propose)
    assert isinstance(p.parse_request([p.READ, 2, b"q", False]), p.Read)
    assert isinstance(p.parse_request([p.STATUS, 3]), p.Status)
    assert isinstance(p.parse_request([p.TRANSFER, 4, "n2"]), p.Transfer)
    rejected = p.parse_response(p.rejected(5, "bad_key", "x", {"key": "k"}, "h:1"))
    assert rejected.leader_hint == "h:1" and rejected.kind == p.REJECTED
    assert rejected.error == p.ErrorRecord("bad_key", "x", {"key": "k"})
    timeout = p.parse_response(p.err(6, p.TIMEOUT, "retry"))
    assert timeout.kind == timeout.code == p.TIMEOUT and timeout.error.details == {}


def _record(**fields):
    return {"code": "deadlock", "message": "cycle", "details": {}, **fields}


@pytest.mark.parametrize(
    "response_obj",
    [
        [5, p.ERR, "made-up", _record(), ""],  # unknown kind
        [5, p.ERR, p.REJECTED, "deadlock: cycle", ""],  # the old "code: message" string
        [5, p.ERR, p.REJECTED, "deadlock", "cycle", ""],  # the old shape, with the code split off
        [5, p.ERR, p.REJECTED, ["deadlock", "cycle", {}], ""],
        [5, p.ERR, p.REJECTED, {"code": "deadlock", "message": "cycle"}, ""],  # no details
        [5, p.ERR, p.REJECTED, _record(extra=1), ""],
        [5, p.ERR, p.REJECTED, _record(code=""), ""],
        [5, p.ERR, p.REJECTED, _record(code=7), ""],
        [5, p.ERR, p.REJECTED, _record(code="c" * (p.MAX_ERROR_CODE + 1)), ""],
        [5, p.ERR, p.REJECTED, _record(message=None), ""],
        [5, p.ERR, p.REJECTED, _record(details=[]), ""],
        [5, p.ERR, p.REJECTED, _record(details={1: "x"}), ""],
        [5, p.ERR, p.TIMEOUT, _record(), ""],  # an engine kind names itself as the code
    ],
)
def test_protocol_rejects_malformed_error_responses(response_obj):
    with pytest.raises(p.ProtocolError):
        p.parse_response(response_obj)


def test_protocol_refuses_to_send_malformed_errors():
    with pytest.raises(p.ProtocolError):
        p.err(1, p.REJECTED, "a rejection needs the state machine's code")
    with pytest.raises(p.ProtocolError):
        p.error(1, p.UNAVAILABLE, p.ErrorRecord("deadlock", "kind and code disagree"))
    with pytest.raises(p.ProtocolError):
        p.error(1, "made-up", p.ErrorRecord("made-up", "unknown kind"))


def test_parse_addresses_forms():
    assert parse_addresses("a:1,b:2") == [("a", 1), ("b", 2)]
    assert parse_addresses("n1=a:1, n2=b:2") == [("a", 1), ("b", 2)]
    assert parse_addresses([("a", 1), "b:2"]) == [("a", 1), ("b", 2)]
    with pytest.raises(ValueError):
        parse_addresses("no-port")


def test_restores_snapshots_of_the_previous_format():
    """Rolling upgrades: a node on new code must read a snapshot written by the old code."""
    old = msgpack.packb(
        (1, 7, 5000, [["c", 1, True, 1, 5000]], KVStore().snapshot()), use_bin_type=True
    )
    ap = Applier(KVStore())
    ap.restore(old)
    assert ap.applied_index == 7 and ap.waits == {}
    assert ap.apply(_entry(8, "c", 1, kvstore.incr("x")))[0].value == 1  # dedup table kept
