"""ReadIndex, leadership transfer and InstallSnapshot."""

from __future__ import annotations

import pytest

from raft_node.core.messages import MessageType as MT
from raft_node.core.raft import ProposalDropped
from raft_node.core.ready import Role
from raft_node.sim.harness import Net

ABC = ["a", "b", "c"]


def test_read_index_on_leader_confirms_with_a_quorum():
    net = Net(ABC)
    net.campaign("a")
    net.propose("a", b"x")
    commit = net.raft("a").log.committed
    states = net.read_index("a", b"r1")
    assert [(s.index, s.context) for s in states] == [(commit, b"r1")]
    assert any(m.type == MT.HEARTBEAT and m.context == b"r1" for m in net.delivered)


def test_read_index_without_quorum_is_not_answered():
    net = Net(ABC)
    net.campaign("a")
    net.isolate("a")
    assert net.read_index("a", b"r1") == []


def test_read_index_on_follower_is_forwarded():
    net = Net(ABC)
    net.campaign("a")
    net.propose("a", b"x")
    states = net.read_index("b", b"rb")
    assert [s.context for s in states] == [b"rb"]
    assert states[0].index == net.raft("a").log.committed


def test_read_index_waits_for_the_new_leaders_first_commit():
    """A new leader's commit index may lag its predecessor's until its no-op commits."""
    net = Net(ABC, check_quorum=False)  # no leader lease: b may win right after a dies
    net.campaign("a")
    net.propose("a", b"x")
    net.crash("a")
    net.drop_rules.append(lambda m: m.frm == "b" and m.type == MT.APP)
    net.campaign("b")
    assert net.leaders() == ["b"]
    assert net.raft("b").log.term(net.raft("b").log.committed) != net.raft("b").term
    assert net.read_index("b", b"early") == []  # heartbeats are acked, but the read waits
    net.drop_rules.clear()
    net.tick("b")
    states = net.read_states["b"]
    assert [s.context for s in states] == [b"early"]
    assert states[0].index == net.raft("b").log.committed >= 3


def test_leadership_transfer_to_up_to_date_follower():
    net = Net(ABC)
    net.campaign("a")
    term = net.raft("a").term
    net.raw("a").transfer_leadership("b")
    net.deliver(net.process("a"))
    assert net.leaders() == ["b"]
    assert net.raft("b").term == term + 1


def test_leadership_transfer_to_lagging_follower_catches_it_up_first():
    net = Net(ABC)
    net.campaign("a")
    net.isolate("c")
    for i in range(10):
        net.propose("a", f"v{i}".encode())
    net.heal()
    net.raw("a").transfer_leadership("c")
    with pytest.raises(ProposalDropped):
        net.raw("a").propose(b"during transfer")
    net.deliver(net.process("a"))
    assert net.leaders() == ["c"]
    assert net.log_terms("c")[: len(net.log_terms("a"))] == net.log_terms("a")


def test_leadership_transfer_aborts_after_an_election_timeout():
    net = Net(ABC)
    net.campaign("a")
    net.isolate("c")
    net.raw("a").transfer_leadership("c")
    net.tick("a", 12)
    assert net.raft("a").role == Role.LEADER
    net.propose("a", b"works again")


def test_far_behind_follower_catches_up_by_install_snapshot():
    net = Net(ABC)
    net.campaign("a")
    net.isolate("c")
    for i in range(30):
        net.propose("a", f"v{i}".encode())
    net.tick("a")
    net.compact("a")
    net.compact("b")
    assert net.raft("a").log.offset > net.raft("c").log.last_index()
    net.heal()
    net.tick("a", 3)
    snaps = [m for m in net.delivered if m.type == MT.SNAP and m.to == "c"]
    assert len(snaps) == 1
    assert net.sm["c"].applied == net.sm["a"].applied
    assert net.storage["c"].snapshot.index == snaps[0].snapshot.index
    net.propose("a", b"after snapshot")
    net.tick("a")
    assert net.sm["c"].applied == net.sm["a"].applied
    # and it survives a restart from its own storage
    net.crash("c")
    net.restart("c")
    net.tick("a", 2)
    assert net.sm["c"].applied == net.sm["a"].applied


def test_lost_snapshot_is_retried():
    net = Net(ABC)
    net.campaign("a")
    net.isolate("c")
    for i in range(20):
        net.propose("a", f"v{i}".encode())
    net.tick("a")
    net.compact("a")
    net.heal()
    net.drop_rules.append(lambda m: m.type == MT.SNAP)
    net.tick("a", 3)
    net.drop_rules.clear()
    net.tick("a", 25)
    assert net.sm["c"].applied == net.sm["a"].applied
