"""Definite and uncertain outcomes (issue 15, item 2), without a cluster: how one call's
attempts classify its ending (``Attempts``), what a node marks definite on the wire, the
``OutcomeUnknown`` error itself, and the applier behaviour ``resolve`` relies on.

The real-process side (an answer lost on the way back, then resolved) is
``tests/realprocess/test_outcome_unknown.py``."""

from __future__ import annotations

import pickle
import time
from types import SimpleNamespace
from typing import Any

import pytest

from raft_node import kvstore
from raft_node.client import ClusterUnavailable, OutcomeUnknown, Rejected, Timeout
from raft_node.client.errors import RESOLVE_WINDOW_S, PendingWrite
from raft_node.client.policy import Attempts, Targets
from raft_node.core.messages import Entry, EntryType
from raft_node.host.applier import DEFAULT_CLIENT_TTL_MS, Applier, encode_command
from raft_node.host.node_host import ProposalDropped
from raft_node.host.requests import RequestHandler
from raft_node.kvstore import KVStore
from raft_node.transport import client_protocol as p
from raft_node.transport.codec import decode_payload

SEEDS = [("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)]


def _write(seq: int = 7, body: bytes = b"cmd") -> PendingWrite:
    return PendingWrite("c1", seq, body, time.monotonic())


def _attempts(write: PendingWrite | None, timeout: float = 5.0) -> Attempts:
    return Attempts(Targets(SEEDS), timeout, True, 5.0, write)


def _answer(kind: str, definite: bool = False) -> p.Response:
    return p.parse_response(p.err(1, kind, "no", "", definite=definite))


# -- how a write's attempts end ------------------------------------------------------------------


def test_a_write_nobody_received_is_definitely_not_applied():
    tries = _attempts(_write())
    for _ in range(3):
        tries.unreachable(ConnectionRefusedError())
    error = tries.give_up()
    assert type(error) is ClusterUnavailable and error.definite
    assert "not applied" in error.message


def test_definite_refusals_from_reached_nodes_stay_definite():
    tries = _attempts(_write())
    tries.reached = True
    assert not tries.answered(_answer(p.NOT_LEADER, definite=True))  # dropped before the log
    assert not tries.answered(_answer(p.UNAVAILABLE, definite=True))  # overloaded
    error = tries.give_up()
    assert type(error) is ClusterUnavailable and error.definite


@pytest.mark.parametrize(
    "attempt",
    [
        lambda t: t.no_answer(),  # sent; the node went silent (paused, partitioned)
        lambda t: t.lost(ConnectionResetError()),  # sent; the connection died (kill -9)
        lambda t: t.answered(_answer(p.NOT_LEADER)),  # leadership lost with it in the log
        lambda t: t.answered(_answer(p.UNAVAILABLE)),  # the node stopped while it waited
        lambda t: t.answered(_answer(p.TIMEOUT)),  # the node's own deadline passed
    ],
)
def test_a_write_that_may_be_in_a_log_ends_outcome_unknown_with_its_id(attempt):
    tries = _attempts(_write(seq=7))
    tries.reached = True
    attempt(tries)
    tries.unreachable(ConnectionRefusedError())  # later definite failures change nothing
    error = tries.give_up()
    assert isinstance(error, OutcomeUnknown) and isinstance(error, Timeout)
    assert not error.definite and error.request_id == ("c1", 7)
    assert error.code == "outcome_unknown" and error.details == {"client_id": "c1", "seq": 7}


def test_a_rejection_is_definite_even_after_an_uncertain_attempt():
    tries = _attempts(_write())
    tries.no_answer()  # the retry then reached the leader, which had applied and refused it
    rejection = p.parse_response(p.rejected(1, "not_holder", "no", {}))
    with pytest.raises(Rejected) as info:
        tries.answered(rejection)
    assert info.value.definite and not isinstance(info.value, Timeout)


def test_reads_never_end_outcome_unknown():
    tries = _attempts(None)
    tries.reached = True
    tries.no_answer()
    tries.answered(_answer(p.NOT_LEADER))
    assert type(tries.give_up()) is Timeout


def test_credentials_refused_after_an_uncertain_attempt_still_say_unknown():
    from raft_node.client import AuthenticationFailed

    refused = AuthenticationFailed("bad secret")
    assert _attempts(_write()).fatal(refused) is refused
    tries = _attempts(_write())
    tries.lost(ConnectionResetError())
    error = tries.fatal(refused)
    assert isinstance(error, OutcomeUnknown) and error.__cause__ is refused


def test_a_resolve_that_reaches_no_leader_leaves_the_write_unknown():
    """``resolve`` re-sends a write an earlier call left in doubt. If this attempt finds no
    leader (every node unreachable, or each refusing it before its log), that says nothing
    about the earlier one, which may have been applied: the write stays unknown. (It used to
    end ``ClusterUnavailable``, "not applied", and a chaos run's lock history showed a release
    so reported that had in fact been applied.)"""
    tries = Attempts(Targets(SEEDS), 5.0, True, 5.0, _write(seq=4), in_doubt=True)
    tries.reached = True
    tries.answered(_answer(p.NOT_LEADER, definite=True))
    tries.unreachable(ConnectionRefusedError())
    error = tries.give_up()
    assert isinstance(error, OutcomeUnknown) and not error.definite
    assert error.request_id == ("c1", 4)
    refused = tries.fatal(Rejected("auth", "no", {}))
    assert isinstance(refused, OutcomeUnknown)  # credentials refused now: still unknown
    rejection = p.parse_response(p.rejected(1, "not_holder", "no", {}))
    with pytest.raises(Rejected):  # the cluster's own answer is the outcome
        tries.answered(rejection)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_both_clients_resolve_to_unknown_when_no_node_answers(flavour: str):
    import asyncio
    import socket

    from raft_node.client import AsyncRaftClient, RaftClient

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    unknown = OutcomeUnknown("lost", write=_write(seq=9))
    if flavour == "sync":
        with (
            RaftClient([address], "secret", timeout=0.3) as client,
            pytest.raises(OutcomeUnknown) as info,
        ):
            client.resolve(unknown)
    else:

        async def main() -> None:
            client = AsyncRaftClient([address], "secret", timeout=0.3)
            try:
                await client.resolve(unknown)
            finally:
                await client.close()

        with pytest.raises(OutcomeUnknown) as info:
            asyncio.run(main())
    assert info.value.request_id == ("c1", 9) and not info.value.definite


def test_a_silent_node_gets_half_the_budget_then_the_retry_gets_the_rest():
    tries = _attempts(_write(), timeout=2.0)
    assert tries.answer_wait(2.0) == 1.0  # time left to re-send to the next leader
    tries.no_answer()
    assert tries.answer_wait(0.9) == 0.9
    blocking = Attempts(Targets(SEEDS), 60.0, True, 5.0, _write())  # a node holds it on purpose
    assert blocking.answer_wait(59.0) == 59.0


# -- what a node marks definite ------------------------------------------------------------------


def test_a_node_that_drops_a_proposal_marks_its_answer_definite():
    class NotTheLeader:
        id = "n1"

        def __init__(self) -> None:
            self.leader_listeners: list[Any] = []

        def propose(self, *args: Any) -> None:
            raise ProposalDropped("not the leader", "n2")

    config = SimpleNamespace(cluster={"n2": ("127.0.0.1", 7002)}, max_frame_bytes=4 << 20)
    handler = RequestHandler(NotTheLeader(), config)  # type: ignore[arg-type]
    answers: list[bytes] = []
    handler.propose(p.Propose(5, "c1", 1, b"x"), answers.append)
    resp = p.parse_response(decode_payload(answers[0]))
    assert resp.kind == p.NOT_LEADER and resp.error is not None
    assert resp.error.details == {p.DEFINITE: True} and resp.leader_hint == "127.0.0.1:7002"
    plain = p.parse_response(p.err(1, p.NOT_LEADER, "leadership lost; retry"))
    assert plain.error is not None and plain.error.details == {}  # lost leadership: unknown


# -- the error -----------------------------------------------------------------------------------


def test_outcome_unknown_survives_pickling_but_only_the_original_resolves():
    error = OutcomeUnknown("lost", write=_write(seq=3))
    assert error.resend().seq == 3
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is OutcomeUnknown and copy.request_id == ("c1", 3)
    with pytest.raises(ValueError, match="no body"):
        copy.resend()


def test_outcome_unknown_refuses_to_resend_once_the_cluster_may_have_forgotten():
    old = PendingWrite("c1", 1, b"x", time.monotonic() - RESOLVE_WINDOW_S - 1)
    with pytest.raises(OutcomeUnknown, match="stays unknown"):
        OutcomeUnknown("lost", write=old).resend()
    assert RESOLVE_WINDOW_S * 1000 <= DEFAULT_CLIENT_TTL_MS / 2  # margin for a fast leader clock


# -- the exactly-once table resolve reads ------------------------------------------------------


def _entry(index: int, client: str, seq: int, body: bytes, stamp: int = 0) -> Entry:
    return Entry(index, 1, encode_command(client, seq, stamp, body), EntryType.NORMAL)


def test_a_resent_write_gets_its_recorded_result_or_is_applied_once():
    ap = Applier(KVStore())
    assert ap.apply(_entry(1, "c", 1, kvstore.incr("x")))[0].value == 1  # applied; answer lost
    assert ap.apply(_entry(2, "c", 1, kvstore.incr("x")))[0].value == 1  # resolve: recorded
    assert ap.apply(_entry(3, "d", 1, kvstore.incr("x")))[0].value == 2  # never seen: applied
    assert ap.sm.data == {"x": b"2"}


def test_the_window_a_resolve_has_is_the_client_ttl_of_log_time():
    ap = Applier(KVStore(), client_ttl_ms=1000)
    ap.apply(_entry(1, "c", 1, kvstore.incr("x"), stamp=0))
    ap.apply(_entry(2, "other", 1, kvstore.incr("y"), stamp=999))
    assert ap.apply(_entry(3, "c", 1, kvstore.incr("x"), stamp=999))[0].value == 1  # remembered
    ap.apply(_entry(4, "other", 2, kvstore.incr("y"), stamp=2000))  # "c" forgotten
    assert ap.apply(_entry(5, "c", 1, kvstore.incr("x"), stamp=2000))[0].value == 2  # twice!
