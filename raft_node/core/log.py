"""The replicated log as one node sees it: entries since compaction plus four cursors.

Invariants (checked by the simulator after every step, asserted here where cheap)::

    offset <= applied <= committed
    applied <= stabled            (only persisted entries are applied)
    committed <= last_index
    snapshot.index >= offset      (a follower behind ``offset`` needs the snapshot)

``offset`` is the index just before ``entries[0]``; its term is remembered so a probe at
``offset`` still works. ``stabled`` is the last index known to be on disk: the entries after it
are what the next ``Ready`` asks the host to persist. A conflicting append below ``stabled``
lowers it, so the next ``Ready``'s first entry tells the host where to truncate.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from raft_node.core.messages import Entry, Snapshot


class LogError(Exception):
    """A request that would break a log invariant: a bug in the caller, never a network event."""


class RaftLog:
    def __init__(self, snapshot: Snapshot, entries: Sequence[Entry], committed: int) -> None:
        self.snapshot = snapshot
        self.offset = snapshot.index
        self.offset_term = snapshot.term
        kept = [e for e in entries if e.index > snapshot.index]
        if kept and kept[0].index != snapshot.index + 1:
            raise LogError(
                f"stored log starts at {kept[0].index}, snapshot ends at {snapshot.index}"
            )
        for prev, nxt in pairwise(kept):
            if nxt.index != prev.index + 1 or nxt.term < prev.term:
                raise LogError(f"stored log is not contiguous at index {nxt.index}")
        self.entries: list[Entry] = kept
        self.stabled = self.last_index()
        self.committed = max(min(committed, self.last_index()), snapshot.index)
        self.applied = snapshot.index
        self.pending_snapshot: Snapshot | None = None

    # -- reading -------------------------------------------------------------------------------

    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None when compacted away or not yet written."""
        if index == self.offset:
            return self.offset_term
        pos = index - self.offset - 1
        if 0 <= pos < len(self.entries):
            return self.entries[pos].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft section 5.4.1: a candidate's log is at least as up to date as ours."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries with ``lo <= index < hi``, at least one, then up to ``max_size`` bytes."""
        if lo <= self.offset:
            raise LogError(f"entries from {lo} are compacted (offset {self.offset})")
        start, end = lo - self.offset - 1, min(hi, self.last_index() + 1) - self.offset - 1
        if max_size is None or end - start <= 1:
            return self.entries[start:end]
        out, size = [], 0
        for e in self.entries[start:end]:
            size += e.size()
            if out and size > max_size:
                break
            out.append(e)
        return out

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.stabled - self.offset :]

    def has_next_committed(self) -> bool:
        return min(self.committed, self.stabled) > self.applied

    def next_committed(self, max_size: int) -> list[Entry]:
        """Committed, persisted, not yet applied entries (bounded so one Ready stays small)."""
        hi = min(self.committed, self.stabled)
        if hi <= self.applied:
            return []
        return self.slice(self.applied + 1, hi + 1, max_size)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or disagrees in term; 0 if all already match."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest ``i <= index`` whose term is ``<= term`` (fast backtracking, Raft thesis 5.3).

        Every entry after ``i`` up to ``index`` has a term the other side cannot have at that
        position, so one probe skips the whole run.
        """
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.term(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

    # -- writing -------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Append entries starting at most at ``last_index + 1``, truncating on conflict."""
        if not entries:
            return self.last_index()
        first = entries[0].index
        if first <= self.committed:
            raise LogError(f"append at {first} would overwrite committed {self.committed}")
        if first > self.last_index() + 1:
            raise LogError(f"append at {first} leaves a gap after {self.last_index()}")
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)
        self.stabled = min(self.stabled, first - 1)
        return self.last_index()

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: Sequence[Entry]
    ) -> int | None:
        """Follower side of AppendEntries. Returns the new last matching index, or None when the
        consistency check at ``(index, log_term)`` fails."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise LogError(f"entry {conflict} conflicts with committed {self.committed}")
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise LogError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader commit rule (Figure 8): only an entry of the current term commits by counting."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index < self.applied or index > min(self.committed, self.stabled):
            raise LogError(
                f"applied {index} outside [{self.applied}, {min(self.committed, self.stabled)}]"
            )
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        """The host persisted entries up to ``(index, term)``; ignored if since overwritten."""
        if index > self.stabled and self.match_term(index, term):
            self.stabled = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log with a snapshot received from the leader (to be persisted first)."""
        self.snapshot = snapshot
        self.offset = snapshot.index
        self.offset_term = snapshot.term
        self.entries = []
        self.committed = snapshot.index
        self.applied = snapshot.index
        self.stabled = snapshot.index
        self.pending_snapshot = snapshot

    def compact(self, snapshot: Snapshot, keep_from: int) -> None:
        """Adopt a snapshot the host took and drop entries before ``keep_from``."""
        if snapshot.index > self.applied:
            raise LogError(f"snapshot at {snapshot.index} beyond applied {self.applied}")
        if snapshot.index <= self.snapshot.index:
            return
        self.snapshot = snapshot
        new_offset = min(max(keep_from - 1, self.offset), snapshot.index)
        new_offset_term = self.term(new_offset)
        if new_offset_term is None:
            raise LogError(f"no term for compaction point {new_offset}")
        del self.entries[: new_offset - self.offset]
        self.offset, self.offset_term = new_offset, new_offset_term
