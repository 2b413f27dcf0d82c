"""``Ready``: everything the core needs the host to do, in the order it must be done.

The host loop is::

    while True:
        feed inputs: rawnode.tick() / step(msg) / propose(data) / read_index(ctx) ...
        if rawnode.has_ready():
            rd = rawnode.ready()
            1. send rd.messages_early          (optional: may also go after step 2)
            2. persist rd.snapshot, rd.entries, rd.hard_state, then fsync   (storage.save)
            3. send rd.messages
            4. restore the state machine from rd.snapshot if any, then apply
               rd.committed_entries in order; serve rd.read_states once applied >= index
            5. rawnode.advance(rd)

Why this order:

- Step 2 before step 3: a vote, or an AppendEntries acknowledgement, is a promise about what is on
  disk. Sending it before the fsync would let a crash break election safety or lose a committed
  entry.
- ``messages_early`` holds only a leader's AppendEntries, heartbeats and snapshots. A leader may
  replicate entries it has not yet persisted itself (Raft thesis 10.2.1): it counts itself toward
  the commit quorum only after ``advance`` reports its own fsync, so overlapping the two is safe.
- Step 4 after step 2: committed entries handed out are always already persisted locally, and a
  snapshot replaces the state machine before later entries are applied on top of it.
- ``advance`` last: it tells the core what is durable and applied, which may let the leader commit
  (its own vote in the quorum) and produce the next ``Ready``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from raft_node.core.messages import Entry, HardState, Message, NodeId, Snapshot
from raft_node.core.read_only import ReadState


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile, informational state: who leads, and our own role. Never persisted."""

    lead: NodeId
    role: Role


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    messages_early: tuple[Message, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool
    """Step 2 must fsync: there are entries or a snapshot, or term or vote changed. A hard state
    whose only change is the commit index may be written without waiting for the disk (as in
    etcd/raft): a lost commit index is rediscovered from the leader."""

    @property
    def must_write(self) -> bool:
        """Whether step 2 has anything to write at all."""
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None
