"""Definite outcomes on a real 3-node cluster (issue 15, item 2): a write whose answer is lost
ends ``OutcomeUnknown`` with its request id, and ``coord.resolve`` learns what really happened,
checked against the state; a definite failure never ends ``OutcomeUnknown``.

The answer is lost deterministically through a ``FaultProxy`` link between the client and the
leader: ``mute(..., "down")`` lets the request through and drops the answer (the write is
applied), ``mute(..., "up")`` drops the request (it is not). The last test pauses the leader
(SIGSTOP) with a request in its socket: the client's automatic same-seq retry reaches the new
leader, and a request the paused node reads after it resumes is applied no second time."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from client_adapters import LoopThread

from coordination.api.errors import exception_handler
from coordination.client import Coordinator
from coordination.client import operations as ops
from coordination.client.aio import AsyncCoordinator
from coordination.exceptions import (
    ClusterUnavailable,
    NotInteger,
    OutcomeUnknown,
    Timeout,
    UnknownQueue,
)
from raft_node.client.policy import Targets
from raft_node.testing.faultproxy import FaultProxy
from raft_node.testing.launcher import LocalCluster, free_port

pytestmark = pytest.mark.realprocess

Muter = Callable[[str], Callable[[], None]]  # mute one way ("up"/"down"); returns the heal


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(params=["sync", "async"])
def via_proxy(
    request: pytest.FixtureRequest,
    coordination_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    loop_thread: LoopThread,
) -> Iterator[tuple[Any, Muter]]:
    """A coordinator whose only way to the cluster is a proxy link to the leader, with its
    connection open (a muted link must not stop the handshake: the request is what we lose).
    Clients here ignore leader hints: a hint names the leader's own address, which would take
    the client around the proxy (the other nodes forward, so the ``direct`` one still works)."""
    monkeypatch.setattr(Targets, "leader_is", lambda self, hint: False)
    leader = coordination_cluster.wait_for_leader()
    proxy = FaultProxy()
    addr = proxy.add_link("client", leader, coordination_cluster.addresses[leader])
    if request.param == "sync":
        coord = Coordinator([addr], coordination_cluster.secret, timeout=1.0)
    else:  # the asyncio client behind a blocking wrapper (as the contract suite runs it)
        coord = loop_thread.call(AsyncCoordinator, [addr], coordination_cluster.secret, timeout=1.0)
    coord.sessions()  # opens the pooled connection
    try:

        def mute(direction: str) -> Callable[[], None]:
            proxy.mute("client", leader, direction)
            return proxy.heal

        yield coord, mute
    finally:
        proxy.heal()
        with contextlib.suppress(Exception):
            coord.close()
        proxy.close()


@pytest.fixture
def direct(coordination_cluster: LocalCluster) -> Iterator[Coordinator]:
    coord = Coordinator(list(coordination_cluster.addresses.values()), coordination_cluster.secret)
    yield coord
    coord.close()


def _queue() -> str:
    return f"outcome-{uuid.uuid4().hex[:10]}"


def _ids(coord: Coordinator, queue: str) -> list[int]:
    """The queue's message ids (none if no put ever created it)."""
    try:
        return [row["id"] for row in coord.run(ops.queue_peek(queue))]
    except UnknownQueue:
        return []


def _unknown_put(coord: Any, queue: str) -> OutcomeUnknown:
    with pytest.raises(OutcomeUnknown) as info:
        coord.run(ops.queue_put(queue, b"payload"))
    error = info.value
    assert isinstance(error, Timeout) and not error.definite
    client_id, seq = error.request_id
    assert client_id and seq >= 1
    return error


def test_a_lost_answer_is_unknown_and_resolves_to_the_applied_result(via_proxy, direct):
    coord, mute = via_proxy
    queue = _queue()
    heal = mute("down")
    error = _unknown_put(coord, queue)
    (applied,) = _ids(direct, queue)  # it did happen; the client could not know
    heal()
    assert coord.resolve(error) == {"id": applied, "duplicate": False}  # the recorded answer
    assert _ids(direct, queue) == [applied]  # and not a second time
    assert direct.resolve(error)["id"] == applied  # any coordinator can ask


def test_a_lost_request_is_unknown_and_resolve_applies_it_once(via_proxy, direct):
    coord, mute = via_proxy
    queue = _queue()
    heal = mute("up")
    error = _unknown_put(coord, queue)
    assert _ids(direct, queue) == []  # it did not happen (yet)
    heal()
    result = coord.resolve(error)
    assert _ids(direct, queue) == [result["id"]]
    assert coord.resolve(error) == result  # asked again: the same answer, still once
    assert _ids(direct, queue) == [result["id"]]


def test_the_api_answers_an_unknown_outcome_503_with_the_request_id(via_proxy):
    coord, mute = via_proxy
    mute("down")
    error = _unknown_put(coord, _queue())
    response = exception_handler(error, {})
    assert response is not None and response.status_code == 503
    assert response["Retry-After"] == "1"
    client_id, seq = error.request_id
    assert response.data == {
        "code": "unavailable",
        "detail": error.message,
        "outcome": "unknown",
        "request_id": {"client_id": client_id, "seq": seq},
    }


def test_definite_failures_are_never_unknown(direct, coordination_cluster):
    key = f"text-{uuid.uuid4().hex[:8]}"
    direct.run(ops.cache_set(key, b"words"))
    with pytest.raises(NotInteger) as refused:
        direct.run(ops.cache_incr(key))  # the state machine refuses: nothing happened
    assert refused.value.definite and not isinstance(refused.value, Timeout)
    nowhere = Coordinator([("127.0.0.1", free_port())], coordination_cluster.secret, timeout=0.5)
    with pytest.raises(ClusterUnavailable) as unreachable:
        nowhere.run(ops.queue_put(_queue(), b"x"))  # nothing was ever sent
    assert unreachable.value.definite and not isinstance(unreachable.value, Timeout)
    assert "not applied" in unreachable.value.message


def test_a_paused_leader_is_retried_with_the_same_seq_and_never_applies_twice(
    coordination_cluster, direct
):
    """SIGSTOP the leader with this client's connection open: the request sits in the paused
    node's socket. One coordinator sees only the leader (``OutcomeUnknown``); ``resolve``
    through the others applies it at the new leader; another coordinator, given every node,
    gets its answer within its deadline (the automatic retry). When the old leader resumes it
    reads both stale copies and forwards them: the exactly-once table answers them, applying
    nothing twice."""
    cluster = coordination_cluster
    leader = cluster.wait_for_leader()
    only_leader = Coordinator([cluster.addresses[leader]], cluster.secret, timeout=1.5)
    everyone = Coordinator(list(cluster.addresses.values()), cluster.secret, timeout=3.0)
    stuck_queue, retried_queue = _queue(), _queue()
    try:
        only_leader.sessions()
        everyone.run(ops.queue_put(retried_queue, b"warm-up"))  # now follows the leader
        (warm,) = _ids(direct, retried_queue)
        cluster.pause(leader)
        error = _unknown_put(only_leader, stuck_queue)
        retried = everyone.run(ops.queue_put(retried_queue, b"again"))  # same seq, new leader
        resolved = everyone.resolve(error)
        assert _ids(everyone, stuck_queue) == [resolved["id"]]
    finally:
        cluster.resume(leader)
        only_leader.close()
        everyone.close()
    cluster.wait_converged()
    assert _ids(direct, stuck_queue) == [resolved["id"]]
    assert _ids(direct, retried_queue) == [warm, retried["id"]]
