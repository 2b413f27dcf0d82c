"""Directed election tests: the Raft paper's rules and etcd/raft's classic cases."""

from __future__ import annotations

from raft_node.core.messages import Message
from raft_node.core.messages import MessageType as MT
from raft_node.core.ready import Role
from raft_node.sim.harness import Net

ABC = ["a", "b", "c"]


def test_single_node_elects_itself_and_commits():
    net = Net(["a"])
    net.campaign("a")
    assert net.leaders() == ["a"]
    index, term = net.propose("a", b"x")
    assert net.raft("a").log.committed == index
    assert net.sm["a"].applied[-1] == (index, term, b"x")


def test_three_nodes_elect_one_leader_and_replicate():
    net = Net(ABC)
    net.campaign("a")
    assert net.leaders() == ["a"]
    assert {net.raft(n).term for n in ABC} == {1}
    index, _ = net.propose("a", b"hello")
    net.tick("a")  # heartbeat carries the new commit index to the followers
    for n in ABC:
        assert net.sm[n].applied[-1][2] == b"hello"
        assert net.raft(n).log.committed >= index


def test_election_by_timeout_without_explicit_campaign():
    net = Net(ABC, seed=3)
    net.tick_all(25)
    assert len(net.leaders()) == 1


def test_dueling_candidates_end_with_one_leader_per_term():
    """etcd's TestDuelingCandidates: a and c campaign while cut off from each other."""
    net = Net(ABC, pre_vote=False, check_quorum=False)
    net.cut("a", "c")
    net.campaign("a")
    net.campaign("c")
    # b voted for a (term 1); c cannot win: b's vote is taken and a's log is newer.
    assert net.raft("a").role == Role.LEADER
    assert net.raft("c").role == Role.CANDIDATE
    net.heal()
    # c campaigns again at a higher term; it has a stale log so it cannot win, but it
    # disrupts the leader (no PreVote/CheckQuorum here), which then wins again.
    net.campaign("c")
    assert net.raft("c").role == Role.FOLLOWER
    net.tick_all(30)
    leaders = net.leaders()
    assert len(leaders) == 1
    assert leaders[0] in ("a", "b")


def test_vote_is_one_per_term_and_survives_restart():
    net = Net(ABC, pre_vote=False, check_quorum=False)
    net.isolate("c")
    net.campaign("a")  # b grants its term-1 vote to a
    assert net.storage["b"].hard_state.vote == "a"
    net.crash("b")
    net.restart("b")
    assert (net.raft("b").term, net.raft("b").vote) == (1, "a")
    # A term-1 vote request from c must now be refused by b.
    net.raw("b").step(Message(MT.VOTE, to="b", frm="c", term=1, index=99, log_term=1))
    replies = net.process("b")
    assert [m.reject for m in replies if m.type == MT.VOTE_RESP] == [True]


def test_stale_messages_from_old_terms_are_ignored():
    """etcd's TestOldMessages: an append from a deposed leader's term changes nothing."""
    net = Net(ABC, pre_vote=False, check_quorum=False)
    net.campaign("a")
    net.campaign("b")
    net.campaign("a")  # a leads term 3
    assert net.raft("a").role == Role.LEADER and net.raft("a").term == 3
    before = net.log_terms("a")
    old = Message(MT.APP, to="a", frm="b", term=2, index=3, log_term=2, commit=3)
    net.deliver([old])
    assert net.raft("a").role == Role.LEADER
    assert net.log_terms("a") == before
    net.propose("a", b"after")
    net.tick("a")
    for n in ABC:
        assert net.log_terms(n) == net.log_terms("a")


def test_stale_leader_learns_new_term_from_a_rejection():
    net = Net(ABC)
    net.campaign("a")
    net.isolate("a")
    net.tick_all(30)  # b/c elect a new leader; a steps down via CheckQuorum
    new = [n for n in net.leaders() if n != "a"]
    assert len(new) == 1
    assert net.raft("a").role != Role.LEADER
    net.heal()
    net.tick_all(3)
    assert net.raft("a").term == net.raft(new[0]).term


def test_prevote_keeps_a_rejoining_node_from_bumping_terms():
    net = Net(ABC)
    net.campaign("a")
    term = net.raft("a").term
    net.isolate("c")
    net.tick("c", 100)  # c pre-campaigns again and again, alone
    assert net.raft("c").term == term
    net.heal()
    net.tick_all(5)
    assert net.leaders() == ["a"]
    assert net.raft("a").term == term


def test_without_prevote_a_rejoining_node_disrupts_the_cluster():
    """The contrast case: the same scenario without PreVote bumps the term."""
    net = Net(ABC, pre_vote=False, check_quorum=False)
    net.campaign("a")
    term = net.raft("a").term
    net.isolate("c")
    net.tick("c", 100)
    assert net.raft("c").term > term
    net.heal()
    net.tick_all(40)
    assert net.raft("a").term > term


def test_checkquorum_leader_in_minority_steps_down():
    net = Net(["a", "b", "c", "d", "e"])
    net.campaign("a")
    for other in ("c", "d", "e"):
        net.cut("a", other)
        net.cut("b", other)
    net.tick("a", 25)
    assert net.raft("a").role == Role.FOLLOWER


def test_leader_lease_ignores_disruptive_vote_requests():
    net = Net(ABC)
    net.campaign("a")
    term = net.raft("a").term
    # c (somehow at a higher term) asks for votes while a is healthy: ignored in-lease.
    vote = Message(MT.VOTE, to="b", frm="c", term=term + 5, index=100, log_term=term)
    net.deliver([vote])
    assert net.raft("b").term == term
    assert net.leaders() == ["a"]


# -- a leader whose process closed its connections (crash, kill -9, restart) -----------------


def _elect_a_then_crash_it(seed: int) -> Net:
    net = Net(ABC, seed=seed)
    net.campaign("a")
    net.tick_all(3)  # heartbeats: b and c hold a's lease
    net.crash("a")
    return net


def _ticks_until_someone_campaigns(net: Net, limit: int = 40) -> int:
    for ticks in range(1, limit + 1):
        net.tick("b")
        net.tick("c")
        if any(net.raft(n).role != Role.FOLLOWER or net.raft(n).term > 1 for n in ("b", "c")):
            return ticks
    raise AssertionError(f"nobody campaigned within {limit} ticks")


def test_a_closed_leader_connection_brings_the_election_forward():
    """Both followers saw a's connection close: one campaigns after at most a heartbeat, a tick
    and half an election timeout (not the randomized 1x-2x timeout), and wins."""
    for seed in range(20):
        net = _elect_a_then_crash_it(seed)
        for n in ("b", "c"):
            net.raw(n).report_peer_closed("a")
            assert net.raft(n).lead_suspect
        cfg = net.raft("b")
        bound = cfg.heartbeat_timeout + 1 + cfg.election_timeout // 2
        assert _ticks_until_someone_campaigns(net) <= bound, seed
        net.tick_all(10)
        assert len([n for n in ("b", "c") if net.raft(n).role == Role.LEADER]) == 1, seed


def test_without_the_close_the_followers_wait_the_whole_timeout():
    """The same crash with no close seen (a dead machine, a partition): nobody campaigns before
    the election timeout. This is what the test above improves on, and proves it can fail."""
    for seed in range(20):
        net = _elect_a_then_crash_it(seed)
        assert _ticks_until_someone_campaigns(net) >= net.raft("b").election_timeout - 3, seed


def test_a_close_seen_by_one_follower_cannot_depose_a_live_leader():
    """b saw a's connection reset but a lives and c still hears it: b's pre-vote is refused
    (c is in a's lease, and a leads), and a's next heartbeat clears b's suspicion."""
    net = Net(ABC, seed=1)
    net.campaign("a")
    net.tick_all(3)
    net.cut("a", "b")  # a's heartbeats do not reach b for now
    net.raw("b").report_peer_closed("a")
    for _ in range(net.raft("b").heartbeat_timeout + 1 + net.raft("b").election_timeout // 2):
        net.tick("b")
    assert net.raft("b").role in (Role.PRE_CANDIDATE, Role.FOLLOWER)
    assert net.leaders() == ["a"] and net.raft("a").term == 1
    net.heal()
    net.tick("a", 2)  # a heartbeat reaches b
    assert net.raft("b").role == Role.FOLLOWER and net.raft("b").lead == "a"
    assert not net.raft("b").lead_suspect


def test_a_close_from_a_peer_that_is_not_the_leader_changes_nothing():
    net = Net(ABC, seed=2)
    net.campaign("a")
    net.tick_all(3)
    before = net.raft("b").election_elapsed
    net.raw("b").report_peer_closed("c")
    net.raw("a").report_peer_closed("b")  # and a leader ignores closes altogether
    assert not net.raft("b").lead_suspect and net.raft("b").election_elapsed == before
    assert net.leaders() == ["a"]
