"""The leader checks a client command before it takes a log entry (issue 15: 300 garbage
proposals used to grow the log by 300 entries). Against three real node processes: garbage sent
through the raw client, to the leader and through a follower, is refused with the same typed
rejection as before, and the leader's log does not grow; well-formed commands still do."""

from __future__ import annotations

import random

import msgpack
import pytest

from coordination.client import Coordinator
from coordination.exceptions import BadRequest
from coordination.primitives import commands as c
from raft_node.client import Rejected
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]

GARBAGE_COUNT = 300
SLACK = 5  # entries the cluster may add on its own meanwhile (ticks, a new leader's grace)


def _garbage(i: int, rng: random.Random) -> bytes:
    """Five kinds in turn: raw bytes, a non-array, an unknown op, wrong arity, wrong types."""
    kind = i % 5
    if kind == 0:
        return b"\xc1" + rng.randbytes(rng.randrange(0, 64))
    if kind == 1:
        return msgpack.packb({"op": "cache.set", "i": i})
    if kind == 2:
        return msgpack.packb([f"cache.nope{i}", "k"])
    if kind == 3:
        return msgpack.packb(["cache.set", f"k{i}"], use_bin_type=True)
    return msgpack.packb(["lock.acquire", "s", f"l{i}", "exclusive", "me", 0])


def _log(cluster: LocalCluster) -> tuple[int, int]:
    """(longest log, highest term) over the nodes: a leader change on a loaded machine moves
    the leader, and adds a few entries of its own (no-op, grace), counted per new term."""
    statuses = [s for s in (cluster.status(n, timeout=5.0) for n in cluster.ids) if s]
    assert statuses
    return max(s["last_index"] for s in statuses), max(s["term"] for s in statuses)


def test_garbage_proposals_are_rejected_without_taking_log_entries(
    coordination_cluster: LocalCluster,
) -> None:
    cluster = coordination_cluster
    leader = cluster.wait_for_leader(timeout=60)
    follower = next(n for n in cluster.ids if n != leader)
    rng = random.Random(15)
    before, term = _log(cluster)
    codes: list[str] = []
    with cluster.client([leader]) as to_leader, cluster.client([follower]) as via_follower:
        for i in range(GARBAGE_COUNT):
            client = to_leader if i % 3 else via_follower  # a follower forwards to the leader
            with pytest.raises(Rejected) as refused:
                client.propose(_garbage(i, rng))
            codes.append(refused.value.code)
        after, term_after = _log(cluster)
        grown, allowed = after - before, SLACK + 3 * (term_after - term)
        assert codes == ["bad_command"] * GARBAGE_COUNT
        assert grown <= allowed, f"{GARBAGE_COUNT} garbage proposals grew the log by {grown}"
        # The control: well-formed commands from the same clients still take one entry each.
        before, _ = _log(cluster)
        for i in range(20):
            to_leader.propose(c.cache_set(f"valid-{i}", b"v", None))
        assert _log(cluster)[0] - before >= 20


def test_the_coordination_client_gets_the_same_typed_error(
    coordination_cluster: LocalCluster,
) -> None:
    coord = Coordinator(list(coordination_cluster.addresses.values()), coordination_cluster.secret)
    try:
        for command in (b"\xc1", msgpack.packb(["tick"]), msgpack.packb(["cache.set", 1])):
            with pytest.raises(BadRequest) as refused:
                coord.propose(command)
            assert refused.value.code == "bad_command"
        assert coord.propose(c.cache_set("typed", b"v", None)) > 0  # and the client goes on
    finally:
        coord.close()
