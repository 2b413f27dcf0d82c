"""The leader's view of one follower: how far it matches and how to send it more.

A follower is in one of three states (as in etcd/raft):

- PROBE: we do not know where its log matches ours. Send one AppendEntries at ``next - 1`` and
  wait for the answer before sending another; a heartbeat response allows another only once
  the last probe is a heartbeat interval old (``probe_ticks``), since it may have been lost.
- REPLICATE: its log matches up to ``match``; stream entries optimistically (``next`` runs ahead
  of ``match``), at most ``max_inflight`` messages unacknowledged.
- SNAPSHOT: it is behind our compaction point; a snapshot is on its way and nothing else is
  sent until it is acknowledged or reported failed.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """Bounded window of AppendEntries in flight, each remembered by its last index."""

    __slots__ = ("capacity", "last_indexes")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.last_indexes: deque[int] = deque()

    def full(self) -> bool:
        return len(self.last_indexes) >= self.capacity

    def add(self, last_index: int) -> None:
        self.last_indexes.append(last_index)

    def free_le(self, index: int) -> None:
        """Acknowledgement up to ``index`` frees every message ending at or before it."""
        q = self.last_indexes
        while q and q[0] <= index:
            q.popleft()

    def free_first(self) -> None:
        if self.last_indexes:
            self.last_indexes.popleft()

    def reset(self) -> None:
        self.last_indexes.clear()


class Progress:
    __slots__ = (
        "inflights",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "probe_ticks",
        "recent_active",
        "snapshot_ticks",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, match: int = 0) -> None:
        self.match = match
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.probe_ticks = 0  # leader ticks since the last probe was sent
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.recent_active = False
        self.inflights = Inflights(max_inflight)

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.probe_ticks = 0
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        # Coming back from a snapshot, the follower has at least the snapshot.
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index``. True if ``match`` advanced."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the append at ``rejected``. True unless stale (then ``next`` moved)."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale: we already know it matches there
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # stale: not the answer to our latest probe
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, count: int, last_index: int) -> None:
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True
            self.probe_ticks = 0

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name} match={self.match} next={self.next} "
            f"inflight={len(self.inflights.last_indexes)})"
        )
