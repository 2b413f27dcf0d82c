"""Unit tests for RaftLog's cursor rules and compaction."""

from __future__ import annotations

import pytest

from raft_node.core.log import LogError, RaftLog
from raft_node.core.messages import EMPTY_SNAPSHOT, Entry, Snapshot, SnapshotMeta


def _log(terms: list[int], committed: int = 0) -> RaftLog:
    return RaftLog(EMPTY_SNAPSHOT, [Entry(t, i + 1) for i, t in enumerate(terms)], committed)


def test_find_conflict_by_term_skips_a_whole_term():
    log = _log([1, 1, 2, 2, 2, 5, 5])
    assert log.find_conflict_by_term(7, 4) == 5  # last index with term <= 4
    assert log.find_conflict_by_term(7, 1) == 2
    assert log.find_conflict_by_term(7, 9) == 7
    assert log.find_conflict_by_term(3, 0) == 0


def test_maybe_append_truncates_conflicting_suffix_and_lowers_stabled():
    log = _log([1, 1, 2, 2])
    assert log.stabled == 4
    assert log.maybe_append(2, 1, 3, [Entry(3, 3), Entry(3, 4), Entry(3, 5)]) == 5
    assert [e.term for e in log.entries] == [1, 1, 3, 3, 3]
    assert log.stabled == 2  # the host must rewrite from index 3
    assert log.committed == 3
    assert log.maybe_append(5, 2, 5, []) is None  # (5, term 2) does not match


def test_append_below_commit_is_a_bug_not_a_network_event():
    log = _log([1, 1, 1], committed=2)
    with pytest.raises(LogError):
        log.maybe_append(1, 1, 3, [Entry(2, 2)])


def test_committed_entries_wait_for_persistence():
    log = _log([1, 1])
    log.append([Entry(1, 3)])
    log.commit_to(3)
    assert [e.index for e in log.next_committed(1 << 20)] == [1, 2]
    log.stable_to(3, 1)
    assert [e.index for e in log.next_committed(1 << 20)] == [1, 2, 3]


def test_slice_respects_size_cap_but_returns_at_least_one():
    log = RaftLog(EMPTY_SNAPSHOT, [Entry(1, i, b"x" * 100) for i in range(1, 11)], 0)
    assert len(log.slice(1, 11, max_size=1)) == 1
    assert len(log.slice(1, 11, max_size=250)) == 2
    assert len(log.slice(1, 11)) == 10


def test_compact_keeps_requested_tail_and_term_of_offset():
    log = _log([1, 1, 2, 2, 3, 3], committed=6)
    log.applied = 6
    log.compact(Snapshot(SnapshotMeta(6, 3), b"s"), keep_from=4)
    assert log.offset == 3 and log.offset_term == 2
    assert log.term(3) == 2 and log.term(2) is None
    assert log.first_index() == 4 and log.last_index() == 6
    with pytest.raises(LogError):
        log.slice(2, 5)


def test_restore_replaces_everything():
    log = _log([1, 1, 2])
    snap = Snapshot(SnapshotMeta(10, 4), b"img")
    log.restore(snap)
    assert (log.offset, log.last_index(), log.last_term()) == (10, 10, 4)
    assert log.committed == log.applied == 10
    assert log.pending_snapshot is snap


def test_stored_log_must_be_contiguous():
    with pytest.raises(LogError):
        RaftLog(EMPTY_SNAPSHOT, [Entry(1, 1), Entry(1, 3)], 0)
