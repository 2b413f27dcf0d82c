"""Values that cross the core's boundary: log entries, messages, hard state, snapshots.

Everything here is a frozen value. The core never mutates a message it received or sent, so a
host (or the simulator) may keep, duplicate, reorder or re-deliver messages freely: the protocol
must be correct under all of those, and immutability makes the tests honest about it.

Type tags are explicit small integers (``MessageType``, ``EntryType``) so the wire codec in the
transport can encode them without pickling and a future version can add tags without renumbering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

NodeId = str
"""A node's stable name, e.g. ``"n1"``. Never reused for a different machine's data."""

NONE: NodeId = ""
"""No node: used for "no vote" and "no known leader"."""


class MessageType(IntEnum):
    """What a message asks for. Values are part of the wire format: never renumber."""

    # Local messages: produced by the host's API calls, never sent over the network.
    HUP = 1  # election timeout fired: start a (pre-)campaign
    BEAT = 2  # heartbeat timeout fired: leader sends heartbeats
    PROP = 3  # client proposal
    CHECK_QUORUM = 4  # leader checks it heard from a quorum recently
    TRANSFER_LEADER = 5  # host asks the leader to hand leadership to ``frm``
    UNREACHABLE = 6  # transport reports a peer unreachable
    SNAP_STATUS = 7  # transport reports whether a snapshot send failed (reject=True)
    PEER_CLOSED = 8  # transport saw a peer's process close its connection (EOF or reset)

    # Network messages.
    APP = 10  # AppendEntries (possibly empty: probes and commit updates)
    APP_RESP = 11
    VOTE = 12  # RequestVote
    VOTE_RESP = 13
    PRE_VOTE = 14
    PRE_VOTE_RESP = 15
    HEARTBEAT = 16
    HEARTBEAT_RESP = 17
    SNAP = 18  # InstallSnapshot
    TIMEOUT_NOW = 19  # leadership transfer: campaign now, skipping PreVote and leases
    READ_INDEX = 20  # ReadIndex request (local from the host, or forwarded by a follower)
    READ_INDEX_RESP = 21


LOCAL_MESSAGES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.PROP,
        MessageType.CHECK_QUORUM,
        MessageType.TRANSFER_LEADER,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.PEER_CLOSED,
    }
)

RESPONSE_MESSAGES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.READ_INDEX_RESP,
    }
)


class EntryType(IntEnum):
    """Kinds of log entry. ``CONF_CHANGE`` carries a configuration (``raft_node.core.conf``)."""

    NORMAL = 0
    NOOP = 1  # the empty entry each new leader appends to commit its term (Raft section 5.4.2)
    CONF_CHANGE = 2


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``data`` is opaque to the core: the state machine's command bytes."""

    term: int
    index: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL

    def size(self) -> int:
        """Approximate wire size, used to cap AppendEntries batches."""
        return len(self.data) + 16


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before the node says anything that depends on it.

    ``term`` and ``vote`` make election safety survive restarts; ``commit`` only saves replaying
    work (it can always be rediscovered from the leader), but it must never be persisted beyond
    the entries that are persisted.
    """

    term: int = 0
    vote: NodeId = NONE
    commit: int = 0


EMPTY_HARD_STATE = HardState()


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Position of a snapshot in the log and the configuration in force there: ``voters``,
    ``learners`` and the host's ``context`` (node addresses; see ``raft_node.core.conf``)."""

    index: int = 0
    term: int = 0
    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()
    context: Any = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine image covering every entry up to ``meta.index``."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    @property
    def index(self) -> int:
        return self.meta.index

    @property
    def term(self) -> int:
        return self.meta.term


EMPTY_SNAPSHOT = Snapshot()


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. Field meaning depends on ``type`` (as in etcd/raft's raftpb.Message).

    - APP: ``index``/``log_term`` identify the entry preceding ``entries``; ``commit`` is the
      leader's commit index.
    - APP_RESP: ``index`` is the last index the follower now matches (accept) or the rejected
      ``index`` (reject), with ``reject_hint``/``log_term`` pointing the leader at a better probe
      position (fast backtracking by conflict term).
    - VOTE/PRE_VOTE: ``index``/``log_term`` describe the candidate's last entry; ``context`` is
      ``b"transfer"`` for a leadership-transfer campaign.
    - HEARTBEAT/HEARTBEAT_RESP: ``context`` carries the ReadIndex round being confirmed.
    - READ_INDEX/READ_INDEX_RESP: ``context`` identifies the read; ``index`` is the read index.
    """

    type: MessageType
    to: NodeId = NONE
    frm: NodeId = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: Snapshot | None = None
