"""The leader's half of the protocol: replication, commit, ReadIndex and leadership transfer.

A mixin of ``Raft``: it shares its state, typed by the ``RaftState`` protocol
(``raft_node.core.role_state``), so this module never imports ``raft.py``; see
``raft_node.core.raft`` for the invariants.
Kept in its own module because it is the largest role and the one with the performance-sensitive
paths: proposal batching (``flush_broadcast``), the per-follower pipeline (``_maybe_send_append``
bounded by ``Progress.inflights``), and commit counting (``maybe_commit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from raft_node.core.messages import NONE, Entry, EntryType, Message, NodeId, Snapshot, SnapshotMeta
from raft_node.core.messages import MessageType as MT
from raft_node.core.progress import Progress, ProgressState
from raft_node.core.read_only import ReadState
from raft_node.core.ready import Role

if TYPE_CHECKING:
    from raft_node.core.role_state import RaftState

    _Base = RaftState
else:
    _Base = object

PROBE_MAX_BYTES = 64 * 1024
"""Entries one probe carries at most. Where a probing follower's log matches is unknown, so a
probe may be rejected or duplicated; once one is accepted, replication goes on in batches of
``max_size_per_msg``. (A megabyte probe to a follower that had been down took it long enough
to decode that heartbeat answers asked for copies of it.)"""


class ProposalDropped(Exception):
    """This node cannot accept a proposal now (not leader, or handing leadership over).

    ``leader`` names the known leader, if any, so the host can redirect the client.
    """

    def __init__(self, reason: str, leader: NodeId = NONE) -> None:
        super().__init__(reason)
        self.leader = leader


class LeaderRole(_Base):
    # -- stepping --------------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self._bcast_heartbeat(self.read_only.last_pending_context())
            return
        if t == MT.CHECK_QUORUM:
            active = [v for v, pr in self.prs.items() if pr.recent_active or v == self.id]
            if not self.quorum.has_quorum(active):
                self.become_follower(self.term, NONE)
                return
            for v, pr in self.prs.items():
                if v != self.id:
                    pr.recent_active = False
            return
        if t == MT.READ_INDEX:
            self._leader_read_index(m)
            return
        if t == MT.TRANSFER_LEADER:
            self._leader_transfer(m.frm)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if t == MT.APP_RESP:
            self._handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            # A probe may have been lost: allow another, but once per heartbeat interval.
            # Every ReadIndex round is a heartbeat, so under reads the answers come far more
            # often; re-probing on each sent a lagging follower hundreds of identical appends
            # a second (up to a megabyte each) until it, and the leader, could do nothing else.
            if pr.probe_ticks >= self.heartbeat_timeout:
                pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                # The window may be full of lost messages: let one more through, whose answer
                # (accept, or reject and probe) gets replication moving again.
                pr.inflights.free_first()
            if pr.match < self.log.last_index():
                self._maybe_send_append(m.frm)
            if m.context:
                self._handle_read_ack(m)
        elif t == MT.SNAP_STATUS:
            if pr.state == ProgressState.SNAPSHOT:
                pr.become_probe()
                if m.reject:
                    pr.probe_sent = True  # wait for the next heartbeat response before retrying
        elif t == MT.UNREACHABLE and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            probe = m.reject_hint
            if m.log_term > 0:
                probe = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._maybe_send_append(m.frm)
            return
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self.maybe_commit():
            self._on_commit_advanced()
        while self._maybe_send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._reply(m.frm, MT.TIMEOUT_NOW)

    def maybe_commit(self) -> bool:
        match = {v: pr.match for v, pr in self.prs.items()}
        return self.log.maybe_commit(self.quorum.committed_index(match), self.term)

    def _on_commit_advanced(self) -> None:
        # Followers learn the new commit index from the next append, sent for new entries or,
        # failing that, at the next tick: under load the next batch carries it at no cost,
        # where an append of its own would cost every follower a message, a log write and an
        # answer per commit. Nothing waits on a follower's commit index: clients are answered
        # by the leader, and a follower's ReadIndex learns it from the heartbeat round.
        self.commit_unsent = True
        if self.pending_read_index and self._committed_in_current_term():
            pending, self.pending_read_index = self.pending_read_index, []
            for req in pending:
                self._leader_read_index(req)
        self.step_down_if_removed()

    def on_persisted(self, index: int, term: int) -> None:
        """The host fsynced our log up to ``(index, term)``: the leader may now count itself."""
        self.log.stable_to(index, term)
        if self.role == Role.LEADER:
            me = self.prs.get(self.id)
            if me is not None and me.maybe_update(self.log.stabled) and self.maybe_commit():
                self._on_commit_advanced()

    def _committed_in_current_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _leader_read_index(self, m: Message) -> None:
        if len(self.quorum) == 1:
            self._respond_read(m, self.log.committed)
            return
        if not self._committed_in_current_term():
            # Our commit index may lag the previous leader's until our no-op commits.
            self.pending_read_index.append(m)
            return
        self.read_only.add_request(self.log.committed, m)
        acks = self.read_only.recv_ack(self.id, m.context)
        if acks is not None and self.quorum.has_quorum(acks):
            self._release_reads(m.context)
        else:
            self._bcast_heartbeat(m.context)

    def _handle_read_ack(self, m: Message) -> None:
        acks = self.read_only.recv_ack(m.frm, m.context)
        if acks is not None and self.quorum.has_quorum(acks):
            self._release_reads(m.context)

    def _release_reads(self, ctx: bytes) -> None:
        for index, req in self.read_only.advance(ctx):
            self._respond_read(req, index)

    def _respond_read(self, req: Message, index: int) -> None:
        if req.frm in (NONE, self.id):
            self.read_states.append(ReadState(index, req.context))
        else:
            self._reply(req.frm, MT.READ_INDEX_RESP, index=index, context=req.context)

    def _leader_transfer(self, target: NodeId) -> None:
        if target not in self.prs or target == self.id:
            return
        if self.lead_transferee == target:
            return
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        self.lead_transferee = target
        if self.prs[target].match == self.log.last_index():
            self._reply(target, MT.TIMEOUT_NOW)
        else:
            self._maybe_send_append(target)

    # -- replication ---------------------------------------------------------------------------

    def propose(self, payloads: Sequence[bytes]) -> tuple[int, int]:
        """Append client commands; returns ``(first index, term)``. Leader only."""
        if self.role != Role.LEADER:
            raise ProposalDropped("not the leader", self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped("leadership transfer in progress", self.lead_transferee)
        first = self.log.last_index() + 1
        self._append_entries(payloads, EntryType.NORMAL)
        return first, self.term

    def _append_entries(self, payloads: Sequence[bytes], type_: EntryType) -> None:
        index, term = self.log.last_index(), self.term
        entries = []
        for data in payloads:
            index += 1
            entries.append(Entry(term, index, data, type_))
        self.log.append(entries)
        # Sent lazily by ``flush_broadcast`` so that all proposals between two Ready calls
        # travel in one AppendEntries per follower (proposal batching).
        self.pending_broadcast = True

    def flush_broadcast(self) -> None:
        if self.pending_broadcast and self.role == Role.LEADER:
            self.pending_broadcast = False
            self.commit_unsent = False
            for v in self.prs:
                if v != self.id:
                    self._maybe_send_append(v)

    def _maybe_send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        log = self.log
        prev_index = pr.next - 1
        prev_term = log.term(prev_index)
        if prev_term is None or prev_index < log.offset:
            return self._send_snapshot(to, pr)
        entries: list[Entry] = []
        if pr.next <= log.last_index():
            limit = self.max_size_per_msg
            if pr.state == ProgressState.PROBE:
                limit = min(limit, PROBE_MAX_BYTES)
            entries = log.slice(pr.next, log.last_index() + 1, limit)
        if not entries and not send_if_empty:
            return False
        self.send(
            Message(
                type=MT.APP,
                to=to,
                frm=self.id,
                term=self.term,
                index=prev_index,
                log_term=prev_term,
                entries=tuple(entries),
                commit=log.committed,
            )
        )
        pr.sent_entries(len(entries), entries[-1].index if entries else prev_index)
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # it may be down; do not ship a snapshot into the void
        snap = self.log.snapshot
        if snap.index == 0:
            return False
        if not snap.meta.voters:  # taken before snapshots carried their configuration
            base = self.conf_log.base
            meta = SnapshotMeta(snap.index, snap.term, base.voters, base.learners, base.context)
            snap = Snapshot(meta, snap.data)
        pr.become_snapshot(snap.index)
        self._reply(to, MT.SNAP, snapshot=snap)
        return True

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for v, pr in self.prs.items():
            if v != self.id:
                commit = min(pr.match, self.log.committed)
                self._reply(v, MT.HEARTBEAT, commit=commit, context=ctx)
