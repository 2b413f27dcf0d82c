"""Membership changes in the core (single-server changes, Raft thesis ch. 4): learners catch up
without counting, promotion and removal move the quorum, one change at a time, a new leader
commits in its term first, the leader can remove itself, a truncated configuration entry is
undone, snapshots and restarts carry the configuration, and a removed node cannot disrupt."""

from __future__ import annotations

import pytest

from raft_node.core.conf import ADD_LEARNER, PROMOTE, REMOVE, ConfChange, ConfChangeRefused
from raft_node.core.messages import EntryType
from raft_node.core.messages import MessageType as MT
from raft_node.core.ready import Role
from raft_node.sim.harness import Net

ABCD = ["a", "b", "c", "d"]


def _cluster() -> Net:
    """a, b, c vote; d is a machine that is not a member yet."""
    net = Net(ABCD, voters=["a", "b", "c"])
    net.campaign("a")
    net.tick("a")
    return net


def _committed_data(net: Net, node: str) -> list[bytes]:
    return [d for _, _, d in net.sm[node].applied if d]


def test_a_learner_gets_the_log_but_is_not_counted():
    net = _cluster()
    net.propose("a", b"before")
    index, conf = net.change("a", ConfChange(ADD_LEARNER, "d"))
    assert conf.voters == ("a", "b", "c") and conf.learners == ("d",)
    assert net.raft("a").log.committed >= index
    net.tick("a")
    assert b"before" in _committed_data(net, "d")
    assert net.raft("d").learners == {"d"} and not net.raft("d").promotable()
    # With two voters down, the learner's copy does not make a majority.
    net.crash("b")
    net.crash("c")
    index, _ = net.propose("a", b"needs a voter")
    assert net.raft("a").log.committed < index
    assert net.raft("d").log.last_index() >= index  # replicated to the learner all the same


def test_promotion_and_removal_move_the_quorum():
    net = _cluster()
    net.change("a", ConfChange(ADD_LEARNER, "d"))
    net.tick("a")
    index, conf = net.change("a", ConfChange(PROMOTE, "d"))
    assert conf.voters == ("a", "b", "c", "d") and conf.learners == ()
    net.tick("a")
    net.change("a", ConfChange(REMOVE, "b"))
    net.tick("a")
    assert net.raft("a").quorum.voters == ("a", "c", "d")
    net.crash("b")
    net.crash("c")  # a and d are a majority of a, c, d
    index, _ = net.propose("a", b"on a and d")
    assert net.raft("a").log.committed >= index


def test_one_change_at_a_time():
    net = _cluster()
    net.cut("a", "b")
    net.cut("a", "c")
    net.change("a", ConfChange(ADD_LEARNER, "d"))  # cannot commit: no voter answers
    with pytest.raises(ConfChangeRefused) as info:
        net.change("a", ConfChange(PROMOTE, "d"))
    assert info.value.code == "pending"
    net.heal()
    net.tick("a")
    net.change("a", ConfChange(PROMOTE, "d"))  # the first one committed: allowed now


def test_a_new_leader_commits_in_its_term_before_a_change():
    net = Net(ABCD, voters=["a", "b", "c"])
    net.drop_rules.append(lambda m: m.frm == "b" and m.type == MT.APP)  # its no-op stalls
    net.campaign("b")
    assert net.raft("b").role == Role.LEADER
    with pytest.raises(ConfChangeRefused) as info:
        net.raw("b").propose_conf_change(ConfChange(ADD_LEARNER, "d"))
    assert info.value.code == "not_ready"
    net.heal()
    net.tick("b")
    net.change("b", ConfChange(ADD_LEARNER, "d"))


def test_refusals_are_typed():
    net = _cluster()
    for change, code in [
        (ConfChange(ADD_LEARNER, "b"), "exists"),
        (ConfChange(PROMOTE, "d"), "not_learner"),
        (ConfChange(REMOVE, "z"), "unknown_node"),
    ]:
        with pytest.raises(ConfChangeRefused) as info:
            net.change("a", change)
        assert info.value.code == code
    with pytest.raises(ConfChangeRefused) as info:
        net.change("b", ConfChange(ADD_LEARNER, "d"))
    assert info.value.code == "not_leader"
    single = Net(["a"])
    single.campaign("a")
    with pytest.raises(ConfChangeRefused) as info:
        single.change("a", ConfChange(REMOVE, "a"))
    assert info.value.code == "last_voter"


def test_the_leader_removes_itself_then_steps_down_and_stays_quiet():
    net = _cluster()
    _index, conf = net.change("a", ConfChange(REMOVE, "a"))
    assert conf.voters == ("b", "c")
    net.tick("a")
    assert net.raft("a").role == Role.FOLLOWER
    net.tick_all(40)
    leaders = net.leaders()
    assert leaders and leaders[0] in ("b", "c")
    assert not net.raft("a").promotable()
    term = net.raft(leaders[0]).term
    net.tick_all(60)  # a never campaigns again: the term stays
    assert net.raft(leaders[0]).term == term and net.leaders() == leaders


def test_a_truncated_configuration_entry_is_undone():
    """A follower appended a change that never committed; a leader that never had it
    overwrites that part of the log, and the follower's configuration goes back."""
    net = _cluster()
    net.isolate("c")
    net.drop_rules.append(lambda m: m.frm == "b" and m.type == MT.APP_RESP)
    index, _ = net.change("a", ConfChange(ADD_LEARNER, "d"))  # only a and b store it
    assert net.raft("b").conf.learners == ("d",) and net.raft("a").log.committed < index
    net.heal()
    net.crash("a")
    net.storage["a"].__init__()  # a returns without its log (test-only: lets c win with a's vote)
    net.restart("a")
    net.cut("b", "c")
    net.campaign("c")
    assert net.raft("c").role == Role.LEADER
    net.propose("c", b"overwrites")
    net.heal()
    net.tick("c", 3)
    assert net.raft("b").conf.learners == ()  # its entry was replaced: the old config again
    assert b"overwrites" in _committed_data(net, "b")


def test_snapshots_and_restarts_carry_the_configuration():
    net = Net([*ABCD, "e"], voters=["a", "b", "c"])
    net.campaign("a")
    net.change("a", ConfChange(ADD_LEARNER, "d"))
    net.tick("a")
    for i in range(5):
        net.propose("a", f"w{i}".encode())
    net.tick("a")
    net.compact("a")  # the entry that added d is compacted away: only the snapshot knows
    snap = net.storage["a"].snapshot
    assert snap.meta.voters == ("a", "b", "c") and snap.meta.learners == ("d",)
    net.change("a", ConfChange(ADD_LEARNER, "e"))  # a fresh machine: it needs the snapshot
    net.tick("a", 12)
    assert net.raft("e").log.snapshot.index == snap.index
    assert net.raft("e").conf.learners == ("d", "e")
    assert b"w4" in _committed_data(net, "e")
    net.crash("b")
    net.restart("b")  # from its stored log: the configuration entries are replayed
    assert net.raft("b").conf.learners == ("d", "e")
    assert any(e.type == EntryType.CONF_CHANGE for e in net.storage["b"].entries)
    net.crash("e")
    net.restart("e")  # from its stored snapshot, then the entry after it
    assert net.raft("e").conf.learners == ("d", "e")


def test_a_removed_node_that_comes_back_cannot_disrupt():
    net = _cluster()
    net.isolate("c")
    net.change("a", ConfChange(REMOVE, "c"))  # c never hears of it
    net.tick("a")
    net.propose("a", b"x")
    term = net.raft("a").term
    net.heal()
    for _ in range(40):
        net.tick("c")  # c still thinks it votes: it pre-campaigns, and nobody follows
        net.tick("a")
    assert net.raft("a").role == Role.LEADER and net.raft("a").term == term
