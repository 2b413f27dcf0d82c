"""``MemoryStorage``: the reference ``Storage``, the unit tests' store and the simulator's disk.

A crash in the simulator is "drop the node object, keep this storage", which is why it keeps
exactly what ``save()`` was given and nothing the core did not hand over.
"""

from __future__ import annotations

from collections.abc import Sequence

from raft_node.core.messages import EMPTY_HARD_STATE, EMPTY_SNAPSHOT, Entry, HardState, Snapshot
from raft_node.storage.protocol import PersistentState, StorageError


class MemoryStorage:
    """In-memory ``Storage``: the reference implementation and the simulator's disk."""

    def __init__(self) -> None:
        self.hard_state: HardState = EMPTY_HARD_STATE
        self.snapshot: Snapshot = EMPTY_SNAPSHOT
        self.entries: list[Entry] = []

    def load(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot, tuple(self.entries))

    def first_index(self) -> int:
        return self.entries[0].index if self.entries else self.snapshot.index + 1

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot.index

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> None:
        if snapshot is not None:
            self.snapshot = snapshot
            self.entries = []
        if entries:
            self._append(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def _append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        if first > self.last_index() + 1:
            raise StorageError(
                f"append would leave a gap: last stored index {self.last_index()}, "
                f"first new index {first}"
            )
        if first <= self.snapshot.index:
            raise StorageError(f"append at {first} overwrites snapshot at {self.snapshot.index}")
        keep = first - self.first_index()
        del self.entries[max(keep, 0) :]
        self.entries.extend(entries)

    def prepare_snapshot(self, snapshot: Snapshot) -> None:
        """Nothing to prepare in memory."""

    def save_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.index < self.snapshot.index:
            raise StorageError(
                f"snapshot at {snapshot.index} is older than stored {self.snapshot.index}"
            )
        self.snapshot = snapshot

    def compact(self, index: int) -> None:
        if index > self.snapshot.index:
            raise StorageError(f"compact({index}) beyond snapshot at {self.snapshot.index}")
        drop = index - self.first_index() + 1
        if drop > 0:
            del self.entries[:drop]
