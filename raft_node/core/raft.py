"""The Raft protocol as a pure state machine (no clock, sockets, threads or global randomness).

Design, in the manner of etcd/raft:

- Every input is a ``Message``. Host calls become local messages (``HUP`` from an election tick,
  ``BEAT`` from a heartbeat tick, ``READ_INDEX`` from a read, ...), so ``step`` is the single
  entry point and every transition is testable as "state + message -> state + outbox".
- ``step`` first applies the term rules that are the same for every role (Raft Figure 2: a higher
  term makes us a follower; a lower term is ignored, with two exceptions that keep PreVote and
  CheckQuorum live), then dispatches to one function per role: ``_step_leader``,
  ``_step_candidate`` (pre-candidates too) and ``_step_follower``.
- Output goes to ``self.msgs`` (sent after persistence) and ``self.msgs_early`` (a leader's
  appends, which may be sent before its own fsync); ``RawNode`` packs them into a ``Ready``.

Invariants kept here (and checked by the simulator from the outside):

- Election safety: at most one vote per term, and the vote is in the hard state that is persisted
  before any vote response leaves (``Ready`` ordering).
- Leader append-only: a leader only appends to its log; it never truncates it.
- Commit by counting only entries of the current term (``RaftLog.maybe_commit``); a new leader
  appends a no-op so that earlier entries commit through it (Raft Figure 8).
- The leader counts its own vote toward the commit quorum only for entries it has persisted
  (``on_persisted``), so sending appends before its own fsync is safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from raft_node.core.conf import ConfState
from raft_node.core.leader import LeaderRole, ProposalDropped
from raft_node.core.log import RaftLog
from raft_node.core.membership import MembershipRole, conf_of
from raft_node.core.messages import (
    NONE,
    EntryType,
    HardState,
    Message,
    NodeId,
    Snapshot,
)
from raft_node.core.messages import MessageType as MT
from raft_node.core.progress import Progress, ProgressState
from raft_node.core.quorum import VoteResult
from raft_node.core.read_only import ReadOnly, ReadState
from raft_node.core.ready import Role
from raft_node.storage.protocol import Storage

TRANSFER_CONTEXT = b"transfer"
"""Vote context of a campaign started by TimeoutNow: voters ignore their leader lease for it."""

__all__ = ["Config", "ProposalDropped", "Raft", "RandomSource"]

EARLY_TYPES = frozenset({MT.APP, MT.HEARTBEAT, MT.SNAP})


class RandomSource(Protocol):
    """The only randomness the core uses: an injected, seedable source (``random.Random``)."""

    def randrange(self, start: int, stop: int) -> int: ...


@dataclass
class Config:
    """Static parameters of one node. Times are in ticks; the host decides how long a tick is."""

    id: NodeId
    voters: Sequence[NodeId]
    rng: RandomSource
    election_tick: int = 10
    heartbeat_tick: int = 1
    check_quorum: bool = True
    pre_vote: bool = True
    max_size_per_msg: int = 1 << 20
    max_inflight: int = 64
    max_committed_size_per_ready: int = 4 << 20
    snapshot_retry_ticks: int = field(default=0)  # 0: use election_tick

    def validate(self) -> None:
        if not self.id:
            raise ValueError("node id must be non-empty")
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 1 <= heartbeat_tick < election_tick")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")


class Raft(LeaderRole, MembershipRole):
    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        state = storage.load()
        self.id = config.id
        self.config = config
        self.rng = config.rng
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.check_quorum = config.check_quorum
        self.pre_vote = config.pre_vote
        self.max_size_per_msg = config.max_size_per_msg
        self.snapshot_retry_ticks = config.snapshot_retry_ticks or config.election_tick
        self.log = RaftLog(state.snapshot, state.entries, state.hard_state.commit)
        self.prs: dict[NodeId, Progress] = {}
        self.term = state.hard_state.term
        self.vote = state.hard_state.vote
        self.lead: NodeId = NONE
        self.lead_suspect = False  # our leader's process closed its connection to us
        self.role = Role.FOLLOWER
        meta = state.snapshot.meta
        base = conf_of(meta) if meta.voters else ConfState(tuple(sorted(config.voters)))
        self.init_membership(base, state.entries)
        self.lead_transferee: NodeId = NONE
        self.votes: dict[NodeId, bool] = {}
        self.msgs: list[Message] = []
        self.msgs_early: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.pending_read_index: list[Message] = []
        self.pending_broadcast = False
        self.commit_unsent = False
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        self.become_follower(self.term, NONE)

    # -- outbox --------------------------------------------------------------------------------

    def send(self, m: Message) -> None:
        if self.role == Role.LEADER and m.type in EARLY_TYPES:
            self.msgs_early.append(m)
        else:
            self.msgs.append(m)

    def _reply(self, to: NodeId, type_: MT, **fields: object) -> None:
        fields.setdefault("term", self.term)
        self.send(Message(type=type_, to=to, frm=self.id, **fields))  # type: ignore[arg-type]

    # -- role changes --------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.lead_suspect = False
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            0, self.election_timeout
        )
        self.lead_transferee = NONE
        self.votes = {}
        self.pending_broadcast = False
        self.commit_unsent = False
        nxt = self.log.last_index() + 1
        inflight = self.config.max_inflight
        self.prs = {v: Progress(nxt, inflight) for v in self.conf.members()}
        if self.id in self.prs:
            self.prs[self.id].match = self.log.stabled
        self.read_only = ReadOnly()
        self.pending_read_index = []

    def become_follower(self, term: int, lead: NodeId) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def become_pre_candidate(self) -> None:
        # PreVote changes neither term nor vote: a partitioned node that keeps pre-campaigning
        # therefore cannot force the cluster to a higher term when it comes back.
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = NONE

    def become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        self._reset(self.term)
        self.pending_conf_index = self.log.last_index()  # no change before all of it commits
        self.lead = self.id
        self.role = Role.LEADER
        me = self.prs[self.id]
        me.become_replicate()
        me.match = self.log.stabled
        me.recent_active = True
        # The no-op commits everything before it once a quorum stores it (Figure 8).
        self._append_entries([b""], EntryType.NOOP)

    # -- ticks ---------------------------------------------------------------------------------

    def tick(self) -> None:
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(type=MT.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for pid, pr in self.prs.items():
            pr.probe_ticks += 1
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= self.snapshot_retry_ticks:
                    # The snapshot or its answer was lost: fall back to probing.
                    pr.become_probe()
                    self._maybe_send_append(pid)
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(type=MT.CHECK_QUORUM, frm=self.id))
            if self.role == Role.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # transfer did not finish in time: resume service
        if self.role != Role.LEADER:
            return
        if self.commit_unsent:  # no append carried the last commit advance: send it now
            self.pending_broadcast = True
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(type=MT.BEAT, frm=self.id))

    def suspect_leader(self, node: NodeId) -> None:
        """Our leader ``node``'s process closed its connection (a crash, kill -9 or restart
        closes every socket at once; a dead machine or a partition does not, and still waits for
        the election timeout). Campaign after a short random wait instead of the rest of the
        timeout, and stop defending its lease, so that a peer that saw the same close can win.

        Only timing changes, never safety: the pre-vote and vote rules are the usual ones. The
        wait (a heartbeat interval and a tick, plus a random part up to half an election
        timeout) lets a leader that is alive and merely reconnected (a TLS reload) prove itself
        first: any append or heartbeat from it clears the suspicion and restarts the normal
        timer. The random part keeps two followers that saw the same close from splitting the
        vote. ZooKeeper's followers act the same way on a lost leader socket."""
        if self.role != Role.FOLLOWER or node != self.lead or self.lead_suspect:
            return
        self.lead_suspect = True
        wait = (
            self.heartbeat_timeout + 1 + self.rng.randrange(0, max(1, self.election_timeout // 2))
        )
        self.election_elapsed = max(self.election_elapsed, self.randomized_election_timeout - wait)

    def promotable(self) -> bool:
        return self.id in self.quorum

    # -- the single entry point ----------------------------------------------------------------

    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == TRANSFER_CONTEXT
                in_lease = (
                    self.check_quorum
                    and self.lead != NONE
                    and not self.lead_suspect
                    and self.election_elapsed < self.election_timeout
                )
                if in_lease and not force:
                    # We heard from a live leader within the election timeout: a disruptive
                    # candidate (e.g. one that was partitioned away) must not depose it.
                    return
            if m.type == MT.PRE_VOTE:
                pass  # never change term for a pre-vote request
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # a granted pre-vote carries the term we would campaign in
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader that cannot reach a quorum would otherwise never learn our
                # term (PreVote keeps the others' terms low): tell it, so it steps down.
                self._reply(m.frm, MT.APP_RESP)
            elif m.type == MT.PRE_VOTE:
                self._reply(m.frm, MT.PRE_VOTE_RESP, reject=True)
            return

        if m.type == MT.HUP:
            self._hup(transfer=False)
        elif m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # -- elections -----------------------------------------------------------------------------

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self.promotable():
            return
        if self.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self.become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, self.term + 1
        else:
            self.become_candidate()
            vote_type, term = MT.VOTE, self.term
        if self._poll(self.id, True) == VoteResult.WON:
            # Single-voter cluster: we won on our own vote.
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self.become_leader()
            return
        context = TRANSFER_CONTEXT if transfer else b""
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for v in self.quorum.voters:
            if v != self.id:
                self.send(
                    Message(
                        type=vote_type,
                        to=v,
                        frm=self.id,
                        term=term,
                        index=last_index,
                        log_term=last_term,
                        context=context,
                    )
                )

    def _poll(self, node: NodeId, granted: bool) -> VoteResult:
        self.votes.setdefault(node, granted)
        return self.quorum.vote_result(self.votes)

    def _may_grant_vote(self, m: Message) -> bool:
        """Whether our vote is free for ``m.frm`` (the log check comes separately)."""
        return (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )

    def _handle_vote_request(self, m: Message) -> None:
        resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
        if self._may_grant_vote(m) and self.log.is_up_to_date(m.index, m.log_term):
            # Answer in the request's term: a pre-vote's term is one we have not reached.
            self._reply(m.frm, resp, term=m.term)
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._reply(m.frm, resp, reject=True)

    # -- follower ------------------------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead, self.lead_suspect = m.frm, False
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead, self.lead_suspect = m.frm, False
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead, self.lead_suspect = m.frm, False
            self._handle_snapshot(m)
        elif t == MT.PEER_CLOSED:
            self.suspect_leader(m.frm)
        elif t == MT.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t in (MT.TRANSFER_LEADER, MT.READ_INDEX):
            if self.lead != NONE:
                # Forward to the leader; term 0 keeps it a "local" request there.
                self.send(Message(type=t, to=self.lead, frm=m.frm or self.id, context=m.context))
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self._reply(m.frm, MT.APP_RESP, index=log.committed)
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            if m.entries:
                self.track_appended(m.entries)
            self._reply(m.frm, MT.APP_RESP, index=last_new)
            return
        hint = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        self._reply(
            m.frm,
            MT.APP_RESP,
            index=m.index,
            reject=True,
            reject_hint=hint,
            log_term=log.term(hint) or 0,
        )

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(its commit, our match), so this never commits unverified entries.
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._reply(m.frm, MT.HEARTBEAT_RESP, context=m.context)

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        if snap.index <= self.log.committed:
            self._reply(m.frm, MT.APP_RESP, index=self.log.committed)
        elif self.log.match_term(snap.index, snap.term):
            # We already have the snapshot's last entry: just fast-forward the commit index.
            self.log.commit_to(snap.index)
            self._reply(m.frm, MT.APP_RESP, index=self.log.last_index())
        else:
            self.log.restore(snap)
            self.install_conf(snap.meta)
            self._reply(m.frm, MT.APP_RESP, index=self.log.last_index())

    # -- candidate -----------------------------------------------------------------------------

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = MT.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MT.VOTE_RESP
        if t in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            # A leader exists in our term (or the one we were about to enter).
            self.become_follower(m.term, m.frm)
            self._step_follower(m)
        elif t == my_resp:
            result = self._poll(m.frm, not m.reject)
            if result == VoteResult.WON:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self.become_leader()
            elif result == VoteResult.LOST:
                self.become_follower(self.term, NONE)

    # -- host-facing helpers -------------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def compact(self, index: int, data: bytes, keep_entries: int = 0) -> Snapshot:
        """The host snapshotted its state machine at applied ``index``; compact the log."""
        term = self.log.term(index)
        if term is None:
            raise ValueError(f"cannot snapshot at {index}: no such entry")
        snap = Snapshot(self.snapshot_meta(index, term), data)
        self.log.compact(snap, keep_from=index - keep_entries + 1)
        return snap
