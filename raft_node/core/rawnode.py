"""``RawNode``: the host-facing API of the core (the only class a host or simulator drives).

Inputs: ``tick``, ``step``, ``propose``, ``read_index``, ``transfer_leadership``, and the reports
``report_unreachable`` / ``report_snapshot`` / ``compact``. Output: ``ready()`` / ``advance()``;
see ``raft_node.core.ready`` for the order in which the host must handle a ``Ready``.

Between ``ready()`` and ``advance()`` the host may keep calling ``step``/``tick``/``propose``
(an asyncio host keeps receiving while its fsync runs), but must not call ``ready()`` again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from raft_node.core.conf import ConfChange, ConfState
from raft_node.core.messages import LOCAL_MESSAGES, NONE, HardState, Message, NodeId, Snapshot
from raft_node.core.messages import MessageType as MT
from raft_node.core.raft import Config, Raft
from raft_node.core.ready import Ready, Role, SoftState
from raft_node.storage.protocol import Storage


class ReadyNotAdvanced(Exception):
    """``ready()`` was called again before ``advance()`` for the previous ``Ready``."""


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    match: int
    next: int
    state: str
    recent_active: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    role: Role
    term: int
    vote: NodeId
    lead: NodeId
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    progress: dict[NodeId, FollowerStatus]


class RawNode:
    def __init__(self, config: Config, storage: Storage, raft_class: type[Raft] = Raft) -> None:
        # ``raft_class`` lets tests substitute a deliberately broken protocol to prove that the
        # simulator's checkers catch it; production code never passes it.
        self.raft = raft_class(config, storage)
        self._prev_soft = SoftState(self.raft.lead, self.raft.role)
        self._prev_hard = self.raft.hard_state()
        self._pending: Ready | None = None

    # -- inputs --------------------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def step(self, m: Message) -> None:
        """Deliver a message from the network. Local message types are refused."""
        if m.type in LOCAL_MESSAGES:
            raise ValueError(f"{m.type.name} is local; use the RawNode method instead")
        self.raft.step(m)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append one command; returns ``(index, term)``. Raises ``ProposalDropped``.

        The command is committed iff the entry at ``index`` is applied with term ``term``.
        """
        return self.raft.propose((data,))

    def propose_batch(self, payloads: Sequence[bytes]) -> tuple[int, int]:
        """Append several commands at consecutive indexes; returns the first ``(index, term)``."""
        return self.raft.propose(payloads)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; answered by a ``ReadState`` with this context.

        Contexts must be unique per request. A request can be lost (leader change); the host
        retries after a timeout.
        """
        if not context:
            raise ValueError("read context must be non-empty")
        self.raft.step(Message(type=MT.READ_INDEX, frm=NONE, context=context))

    def propose_conf_change(self, change: ConfChange) -> tuple[int, ConfState]:
        """Propose one membership change (leader only): its entry's index and the resulting
        configuration, in force at once; ``ConfChangeRefused`` when it cannot be made now."""
        return self.raft.propose_conf_change(change)

    def transfer_leadership(self, to: NodeId) -> None:
        self.raft.step(Message(type=MT.TRANSFER_LEADER, frm=to))

    def report_unreachable(self, node: NodeId) -> None:
        self.raft.step(Message(type=MT.UNREACHABLE, frm=node))

    def report_peer_closed(self, node: NodeId) -> None:
        """``node``'s process closed its connection to us (EOF or reset, as a crash or a
        restart does): if it is our leader, a follower elects a new one soon instead of after a
        whole election timeout (``Raft.suspect_leader``)."""
        self.raft.step(Message(type=MT.PEER_CLOSED, frm=node))

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        self.raft.step(Message(type=MT.SNAP_STATUS, frm=node, reject=not ok))

    def campaign(self) -> None:
        """Start an election now (tests and operator tooling)."""
        self.raft.step(Message(type=MT.HUP, frm=self.raft.id))

    def compact(self, index: int, data: bytes, keep_entries: int = 0) -> Snapshot:
        """Adopt the host's snapshot ``data`` taken at applied ``index``; returns the snapshot.

        The host then persists it (``Storage.save_snapshot``) and only after that compacts its
        storage to ``raft.log.offset``. A crash in between is harmless: the disk still holds the
        full log. ``keep_entries`` older entries stay in the log so a slightly
        lagging follower catches up by appends instead of a full snapshot.
        """
        return self.raft.compact(index, data, keep_entries)

    # -- output --------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self.raft
        log = r.log
        return bool(
            r.pending_broadcast
            or r.msgs
            or r.msgs_early
            or r.read_states
            or log.stabled < log.last_index()
            or log.pending_snapshot is not None
            or log.has_next_committed()
            or r.hard_state() != self._prev_hard
            or r.lead != self._prev_soft.lead
            or r.role != self._prev_soft.role
        )

    def ready(self) -> Ready:
        if self._pending is not None:
            raise ReadyNotAdvanced("advance() the previous Ready first")
        r = self.raft
        r.flush_broadcast()
        log = r.log
        soft = SoftState(r.lead, r.role)
        hard = r.hard_state()
        entries = tuple(log.unstable_entries())
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            snapshot=log.pending_snapshot,
            entries=entries,
            messages_early=tuple(r.msgs_early),
            messages=tuple(r.msgs),
            committed_entries=tuple(log.next_committed(r.config.max_committed_size_per_ready)),
            read_states=tuple(r.read_states),
            must_sync=bool(entries)
            or log.pending_snapshot is not None
            or (hard.term, hard.vote) != (self._prev_hard.term, self._prev_hard.vote),
        )
        r.msgs = []
        r.msgs_early = []
        r.read_states = []
        self._prev_soft = soft
        self._prev_hard = hard
        self._pending = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The host finished every step of ``rd`` (persisted, sent, applied)."""
        if rd is not self._pending:
            raise ReadyNotAdvanced("advance() must get the Ready returned by ready()")
        self._pending = None
        r = self.raft
        if rd.snapshot is not None and r.log.pending_snapshot is rd.snapshot:
            r.log.pending_snapshot = None
        if rd.committed_entries and rd.committed_entries[-1].index > r.log.applied:
            # (A snapshot restored between ready() and advance() may already be past them.)
            r.log.applied_to(rd.committed_entries[-1].index)
        if rd.entries:
            last = rd.entries[-1]
            r.on_persisted(last.index, last.term)

    # -- inspection ----------------------------------------------------------------------------

    @property
    def id(self) -> NodeId:
        return self.raft.id

    def hard_state(self) -> HardState:
        return self.raft.hard_state()

    def status(self) -> Status:
        r = self.raft
        progress = {}
        if r.role == Role.LEADER:
            progress = {
                v: FollowerStatus(pr.match, pr.next, pr.state.name, pr.recent_active)
                for v, pr in r.prs.items()
            }
        return Status(
            id=r.id,
            role=r.role,
            term=r.term,
            vote=r.vote,
            lead=r.lead,
            commit=r.log.committed,
            applied=r.log.applied,
            last_index=r.log.last_index(),
            snapshot_index=r.log.snapshot.index,
            progress=progress,
        )
