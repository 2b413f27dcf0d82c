"""Directed replication tests, including Raft paper Figures 7 and 8."""

from __future__ import annotations

import dataclasses

import pytest

from raft_node.core.leader import PROBE_MAX_BYTES
from raft_node.core.messages import Message
from raft_node.core.messages import MessageType as MT
from raft_node.core.raft import ProposalDropped, Raft
from raft_node.core.ready import Role
from raft_node.sim.bugs import CommitOldTermRaft
from raft_node.sim.harness import Net


def _assert_applied_consistent(net: Net) -> None:
    """State machine safety over the test's nodes: applied sequences are prefixes of each other."""
    seqs = [net.sm[n].applied for n in net.ids]
    longest = max(seqs, key=len)
    for s in seqs:
        if s != longest[: len(s)]:
            raise AssertionError("state machine safety violated: nodes applied different entries")


FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


def test_figure_7_divergent_follower_logs_are_repaired():
    ids = ["L", *FIGURE_7_FOLLOWERS]
    net = Net(ids)
    net.preload("L", FIGURE_7_LEADER, hard_term=7)
    for node, terms in FIGURE_7_FOLLOWERS.items():
        net.preload(node, terms, hard_term=7)
    net.campaign("L")
    assert net.raft("L").role == Role.LEADER and net.raft("L").term == 8
    net.propose("L", b"x")
    net.tick("L", 2)
    expected = net.log_terms("L")
    assert expected == [*FIGURE_7_LEADER, 8, 8]
    for node in FIGURE_7_FOLLOWERS:
        assert net.log_terms(node) == expected, node
        assert net.storage[node].entries == net.storage["L"].entries
    _assert_applied_consistent(net)


def test_fast_backtracking_probes_once_per_conflicting_term():
    """Follower f's 8 wrong entries cost a handful of probes, not one per index."""
    net = Net(["L", "f", "x"])
    net.preload("L", FIGURE_7_LEADER, hard_term=7)
    net.preload("f", FIGURE_7_FOLLOWERS["f"], hard_term=7)
    net.preload("x", FIGURE_7_LEADER, hard_term=7)
    net.campaign("L")
    rejections = [m for m in net.delivered if m.type == MT.APP_RESP and m.reject and m.frm == "f"]
    assert 1 <= len(rejections) <= 3
    assert net.log_terms("f") == net.log_terms("L")


def _figure_8(raft_class: type[Raft]) -> tuple[Net, int]:
    """Raft paper Figure 8 on s1..s5, without PreVote/CheckQuorum (the commit rule alone).

    Terms are the paper's minus one (our first leader is in term 1): X is a term-1 entry, s5's
    lone entry is term 2, s1 leads term 3 and s5 term 4. Returns the net and X's index.
    """
    net = Net(
        ["s1", "s2", "s3", "s4", "s5"],
        pre_vote=False,
        check_quorum=False,
        raft_class=raft_class,
        max_size_per_msg=1,
    )
    net.campaign("s1")
    net.tick("s1")
    # (a) s1 (term 1) replicates X to s2 only.
    for other in ("s3", "s4", "s5"):
        net.cut("s1", other)
    index, _ = net.propose("s1", b"X")
    net.crash("s1")
    net.heal()
    # (b) s5 wins term 2 with votes from s3 and s4; its term-2 no-op stays local.
    net.drop_rules.append(lambda m: m.frm == "s5" and m.type == MT.APP)
    net.campaign("s5")
    assert net.raft("s5").role == Role.LEADER and net.raft("s5").term == 2
    net.crash("s5")
    net.heal()
    # (c) s1 restarts and wins term 3 (its term-2 campaign is refused by s3/s4). It replicates
    # X to s3, but nothing of term 3 reaches anyone, and nobody hears of a commit index that
    # covers X.
    net.restart("s1")
    net.rewrites.append(_strip_entries_of_term(3))
    net.drop_rules.append(lambda m: m.frm == "s1" and m.commit >= index)
    net.campaign("s1")
    net.campaign("s1")
    assert net.raft("s1").role == Role.LEADER and net.raft("s1").term == 3
    net.tick("s1", 3)
    assert net.raft("s3").log.term(index) == 1  # X is now on a majority: s1, s2, s3
    net.crash("s1")
    net.heal()
    # (d) s5 restarts and wins term 4 (its last term 2 beats the others' 1), overwrites X's
    # index on s2 and s3 with its term-2 entry, and commits it.
    net.restart("s5")
    net.campaign("s5")
    net.campaign("s5")
    assert net.raft("s5").role == Role.LEADER and net.raft("s5").term == 4
    net.propose("s5", b"Y")
    net.tick("s5", 2)
    return net, index


def _strip_entries_of_term(term: int):
    def rewrite(m):
        if m.type != MT.APP or not m.entries:
            return m
        kept = tuple(e for e in m.entries if e.term != term)
        return dataclasses.replace(m, entries=kept)

    return rewrite


def test_figure_8_old_term_entry_is_not_committed_by_counting():
    net, index = _figure_8(Raft)
    assert net.raft("s5").log.term(index) == 2  # X was overwritten...
    assert all(i < index for i, _, _ in net.sm["s1"].applied)  # ...and s1 never applied it
    _assert_applied_consistent(net)


def test_figure_8_bug_committing_old_terms_is_caught():
    net, index = _figure_8(CommitOldTermRaft)
    assert (index, 1, b"X") in net.sm["s1"].applied  # the buggy leader applied X...
    with pytest.raises(AssertionError, match="state machine safety"):
        _assert_applied_consistent(net)  # ...and s5 applied a different entry there


def test_leader_in_minority_loses_uncommitted_entries_after_heal():
    net = Net(["a", "b", "c", "d", "e"])
    net.campaign("a")
    for o in ("c", "d", "e"):
        net.cut("a", o)
        net.cut("b", o)
    index, _ = net.propose("a", b"lost")
    assert net.raft("a").log.committed < index
    net.tick_all(40)  # a steps down; c/d/e elect a leader
    majority_leader = [n for n in net.leaders() if n in ("c", "d", "e")]
    assert len(majority_leader) == 1
    new = majority_leader[0]
    net.propose(new, b"kept")
    net.heal()
    net.tick_all(5)
    for n in net.ids:
        data = [d for _, _, d in net.sm[n].applied]
        assert b"lost" not in data and b"kept" in data
        assert net.log_terms(n) == net.log_terms(new)


def test_follower_rejects_proposals_with_leader_hint():
    net = Net(["a", "b", "c"])
    net.campaign("a")
    with pytest.raises(ProposalDropped) as info:
        net.raw("b").propose(b"x")
    assert info.value.leader == "a"


def test_proposals_between_readies_travel_in_one_append():
    net = Net(["a", "b", "c"])
    net.campaign("a")
    net.tick("a")
    net.delivered.clear()
    for i in range(50):
        net.raw("a").propose(f"p{i}".encode())
    net.deliver(net.process("a"))
    appends = [m for m in net.delivered if m.type == MT.APP and m.entries]
    assert len(appends) == 2  # one per follower
    assert all(len(m.entries) == 50 for m in appends)


def test_a_commit_advance_rides_on_the_next_append_or_the_next_tick():
    """The leader sends no append of its own for a commit advance: the next batch carries it,
    or, with nothing to send, its next tick does (followers apply at most a tick later)."""
    net = Net(["a", "b", "c"])
    net.campaign("a")
    net.tick("a")
    net.delivered.clear()
    first, _ = net.propose("a", b"one")
    assert net.raft("a").log.committed == first
    empty = [m for m in net.delivered if m.type == MT.APP and not m.entries]
    assert empty == []  # the old behaviour sent one per follower here
    assert all(net.raft(n).log.committed < first for n in "bc")
    second, _ = net.propose("a", b"two")
    carried = [m for m in net.delivered if m.type == MT.APP and m.entries[-1:]]
    assert all(m.commit == first for m in carried if m.entries[0].index == second)
    assert all(net.raft(n).log.committed == first for n in "bc")  # learnt from the batch
    net.delivered.clear()
    net.tick("a")  # nothing new to send: the tick carries the commit of "two"
    assert {m.to for m in net.delivered if m.type == MT.APP and m.commit == second} == {"b", "c"}
    assert all(net.raft(n).log.committed == second for n in "bc")
    assert net.sm["b"].applied == net.sm["a"].applied
    net.delivered.clear()
    net.tick("a")  # and only once
    assert [m for m in net.delivered if m.type == MT.APP] == []


def test_restart_replays_committed_entries_from_storage():
    net = Net(["a", "b", "c"])
    net.campaign("a")
    for i in range(5):
        net.propose("a", f"v{i}".encode())
    net.tick("a")
    before = list(net.sm["b"].applied)
    net.crash("b")
    net.restart("b")
    net.tick("a", 2)
    assert net.sm["b"].applied == before


def _lagging_follower_in_probe(net: Net) -> Raft:
    """``L`` leads; ``a`` missed 40 entries of 3 KB and is being probed (as after it restarts:
    where its log matches is unknown)."""
    net.campaign("L")
    net.cut("L", "a")
    for i in range(40):
        net.propose("L", b"%03d" % i + b"x" * 3000)
    net.heal()
    leader = net.raft("L")
    leader.prs["a"].become_probe()
    return leader


def _appends_to_a(net: Net) -> list[Message]:
    return [m for m in net.process("L") if m.type == MT.APP and m.to == "a"]


def test_heartbeat_answers_re_probe_a_lagging_follower_once_per_heartbeat_interval():
    """Every ReadIndex round is a heartbeat, so a leader serving reads gets heartbeat answers
    far more often than it ticks. Each used to allow another probe: a follower that had been
    down got hundreds of identical appends a second, each as big as an append may be (a chaos
    run logged 640 in one second), and it and the leader did little else."""
    net = Net(["L", "a", "b"])
    leader = _lagging_follower_in_probe(net)
    rn = net.raw("L")
    answer = Message(type=MT.HEARTBEAT_RESP, frm="a", to="L", term=leader.term)
    probes = _appends_to_a(net)
    for _ in range(50):  # 50 read rounds answered within one heartbeat interval
        rn.step(answer)
        probes += _appends_to_a(net)
    assert len(probes) == 1, [(m.index, len(m.entries)) for m in probes]
    for _ in range(leader.heartbeat_timeout):
        rn.tick()
        net.process("L")  # (the heartbeats themselves go nowhere)
    rn.step(answer)
    again = _appends_to_a(net)
    assert len(again) == 1 and again[0].index == probes[0].index  # the lost probe, once more


def test_a_probe_carries_at_most_probe_max_bytes_then_replication_streams():
    net = Net(["L", "a", "b"])
    leader = _lagging_follower_in_probe(net)
    net.raw("L").step(Message(type=MT.HEARTBEAT_RESP, frm="a", to="L", term=leader.term))
    (probe,) = _appends_to_a(net)
    size = sum(e.size() for e in probe.entries)
    assert 1 <= len(probe.entries) < 40 and size <= PROBE_MAX_BYTES + 3100
    net.deliver([probe])  # accepted: "a" is replicated to in full batches from here
    assert net.log_terms("a") == net.log_terms("L")
    assert leader.prs["a"].state.name == "REPLICATE"
