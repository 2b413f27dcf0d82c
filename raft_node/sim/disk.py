"""The simulator's disk: a ``MemoryStorage`` that survives node crashes, can tear the last
write, and keeps a hash chain over the stored log so log-matching checks are O(1) per entry.

The chain hash of index ``i`` covers every entry up to ``i`` (``h[i] = hash(h[i-1], term,
data)``), so two logs with equal chain hashes at ``i`` hold identical prefixes. The base of a
chain after a snapshot comes from the checker's record of what was applied at that index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from raft_node.core.messages import Entry, HardState, Snapshot
from raft_node.storage.memory import MemoryStorage


def chain_step(prev: int, entry: Entry) -> int:
    return hash((prev, entry.term, entry.data))


class SimDisk(MemoryStorage):
    def __init__(self, base_hash: Callable[[int], int]) -> None:
        super().__init__()
        self._base_hash = base_hash
        self.chain: list[int] = []  # chain[k] is the chain hash of entries[k]
        self.writes = 0
        self.synced_hard_state = self.hard_state

    def chain_at(self, index: int) -> int | None:
        pos = index - self.first_index()
        if 0 <= pos < len(self.chain):
            return self.chain[pos]
        if index == self.snapshot.index:
            return self._base_hash(index)
        return None

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> None:
        self.writes += 1
        if snapshot is not None:
            super().save(None, (), snapshot)
            self.chain = []
        if entries:
            first = entries[0].index
            super().save(None, entries)
            keep = first - self.first_index()
            del self.chain[max(keep, 0) :]
            prev = self.chain_at(first - 1)
            assert prev is not None, "append after a gap"
            for e in entries:
                prev = chain_step(prev, e)
                self.chain.append(prev)
        if hard_state is not None:
            super().save(hard_state, ())
        if sync:
            self.synced_hard_state = self.hard_state

    def crash(self) -> None:
        """Lose what was written without an fsync: only ever a hard state's commit index."""
        lost = self.hard_state
        if (lost.term, lost.vote) != (self.synced_hard_state.term, self.synced_hard_state.vote):
            raise AssertionError(f"term/vote {lost} was written without sync")
        self.hard_state = self.synced_hard_state

    def save_torn(self, entries: Sequence[Entry], keep: int) -> None:
        """A crash in the middle of ``save``: only the first ``keep`` entries reached the disk,
        and neither the hard state nor anything after them did."""
        if keep > 0:
            self.save(None, entries[:keep])

    def compact(self, index: int) -> None:
        drop = index - self.first_index() + 1
        super().compact(index)
        if drop > 0:
            del self.chain[:drop]
