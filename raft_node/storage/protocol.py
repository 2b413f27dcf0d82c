"""The Storage contract between the Raft core and the disk, and its in-memory twin.

The core keeps the log since the last compaction in memory (``RaftLog``) and reads storage only
once, at start-up, through ``load()``. Everything after that flows one way: the host takes each
``Ready`` and writes its snapshot, entries and hard state with ``save()``, which must be durable
when it returns (one fsync for the whole batch: group commit). The core never assumes a write
happened until the host calls ``advance()``.

Why this shape (and not etcd's "storage is also the read path"): a Python core that re-reads
entries from disk for every AppendEntries would be slow, and compaction keeps the in-memory log
small anyway. It also makes crash testing simple: the simulator's "disk" is a ``MemoryStorage``
and a crash is "drop the node object, keep the storage".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from raft_node.core.messages import EMPTY_HARD_STATE, EMPTY_SNAPSHOT, Entry, HardState, Snapshot


class StorageError(Exception):
    """The storage cannot honour its contract (bad write order, corrupt data, failed fsync)."""


@dataclass(frozen=True, slots=True)
class PersistentState:
    """What survives a crash: hard state, the latest snapshot and the log entries after it."""

    hard_state: HardState = EMPTY_HARD_STATE
    snapshot: Snapshot = EMPTY_SNAPSHOT
    entries: tuple[Entry, ...] = field(default=())


class Storage(Protocol):
    """Durable home of one node's Raft state. Implementations: ``MemoryStorage`` (tests and the
    simulator) and the durable store used by the node process."""

    def load(self) -> PersistentState:
        """Everything persisted so far. Entries start right after the snapshot (or earlier, if the
        host compacted less than it snapshotted; the core drops those)."""
        ...

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> None:
        """Persist a ``Ready`` atomically enough for Raft, then make it durable before returning.

        Order: ``snapshot`` first (it replaces the whole log: a follower installing a snapshot
        discards every entry it had), then ``entries`` (the first entry's index may be at or below
        the last stored index: the stored suffix from there on is replaced), then ``hard_state``.

        ``sync=False`` (``Ready.must_sync`` is False) comes only with a hard state whose term
        and vote did not change: only the commit index moved, which may be lost in a crash (it is
        rediscovered from the leader), so the write need not wait for the disk.
        """
        ...

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot the host took of its own state machine. Entries are kept."""
        ...

    def compact(self, index: int) -> None:
        """Drop stored entries with ``entry.index <= index``. ``index`` never exceeds the latest
        snapshot's index, so nothing unrecoverable is dropped."""
        ...

    def prepare_snapshot(self, snapshot: Snapshot) -> None:
        """Optional head start for ``save_snapshot``: write the snapshot's data durably, from any
        thread, without touching the log (the durable store writes the file here, so the node
        can do it off its event loop). ``save_snapshot`` must still be called afterwards."""
        ...
