"""``LogState``: ``MemoryStorage``'s state and rules, in the shape ``DurableStorage`` replays.

Live writes and recovery both go through this class, so what a reopened ``DurableStorage``
returns is by construction what ``MemoryStorage`` would hold after the same calls. It adds two
things replay needs: checkpoints (the whole state minus entry contents, written at the start of
every segment) and placeholders (``None`` entries standing for ones in deleted segments).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from raft_node.core.messages import EMPTY_HARD_STATE, Entry, HardState, SnapshotMeta
from raft_node.storage.durable_format import Checkpoint
from raft_node.storage.protocol import StorageError

EMPTY_META = SnapshotMeta()


class LogState:
    """``MemoryStorage``'s state and rules, shared by live writes and replay.

    ``entries[k]`` has index ``offset + 1 + k``; when ``entries`` is empty ``offset`` is the
    snapshot index, which makes ``first_index``/``last_index`` agree with ``MemoryStorage``.
    Invariant (as in ``MemoryStorage``): ``offset <= snapshot.index``. During replay an entry
    may be ``None``: a placeholder for one that lived in a deleted segment.
    """

    __slots__ = ("entries", "hard_state", "offset", "snapshot")

    def __init__(self) -> None:
        self.hard_state: HardState = EMPTY_HARD_STATE
        self.snapshot: SnapshotMeta = EMPTY_META
        self.offset = 0
        self.entries: list[Entry | None] = []

    @classmethod
    def from_checkpoint(cls, cp: Checkpoint) -> LogState:
        state = cls()
        state.hard_state, state.snapshot = cp.hard_state, cp.snapshot
        state.offset = cp.first_index - 1 if cp.first_index <= cp.last_index else cp.snapshot.index
        state.entries = [None] * max(cp.last_index - cp.first_index + 1, 0)
        return state

    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def checkpoint(self, seq: int) -> Checkpoint:
        return Checkpoint(
            seq, self.hard_state, self.snapshot, self.first_index(), self.last_index()
        )

    def check_save(self, entries: Sequence[Entry], reset: SnapshotMeta | None) -> None:
        """``MemoryStorage._append``'s checks, plus: a batch must be consecutive (the format
        stores only its first index)."""
        if not entries:
            return
        self.check_position(entries[0].index, reset)
        for prev, nxt in pairwise(entries):
            if nxt.index != prev.index + 1:
                raise StorageError(f"entries are not consecutive: {prev.index} then {nxt.index}")

    def check_position(self, first: int, reset: SnapshotMeta | None) -> None:
        """May a batch starting at ``first`` be appended after ``reset`` (if any)?"""
        snap_index = reset.index if reset is not None else self.snapshot.index
        last = reset.index if reset is not None else self.last_index()
        if first > last + 1:
            raise StorageError(
                f"append would leave a gap: last stored index {last}, first new index {first}"
            )
        if first <= snap_index:
            raise StorageError(f"append at {first} overwrites snapshot at {snap_index}")

    def apply_save(
        self, reset: SnapshotMeta | None, entries: Sequence[Entry], hs: HardState | None
    ) -> None:
        if reset is not None:
            self.snapshot, self.entries, self.offset = reset, [], reset.index
        if entries:
            del self.entries[entries[0].index - self.offset - 1 :]
            self.entries.extend(entries)
        if hs is not None:
            self.hard_state = hs

    def mark_snapshot(self, meta: SnapshotMeta) -> None:
        self.snapshot = meta
        if not self.entries:
            self.offset = meta.index

    def compact(self, index: int) -> bool:
        """Drop entries up to ``index``; True if anything was dropped."""
        drop = index - self.offset
        if drop <= 0 or not self.entries:
            return False
        del self.entries[:drop]
        self.offset = self.offset + drop if self.entries else self.snapshot.index
        return True

    def adopt(self, cp: Checkpoint) -> None:
        """Take a later segment's checkpoint: its entry range must be a suffix-aligned part of
        what we hold (equal, or compacted from the front), or empty (a reset)."""
        self.hard_state = cp.hard_state
        if cp.first_index > cp.last_index:
            self.snapshot, self.entries, self.offset = cp.snapshot, [], cp.snapshot.index
            return
        if cp.first_index < self.first_index() or cp.last_index != self.last_index():
            raise ValueError(
                f"checkpoint names entries {cp.first_index}..{cp.last_index}, "
                f"replay holds {self.first_index()}..{self.last_index()}"
            )
        del self.entries[: cp.first_index - self.first_index()]
        self.offset, self.snapshot = cp.first_index - 1, cp.snapshot
