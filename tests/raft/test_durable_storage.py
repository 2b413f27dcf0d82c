"""``DurableStorage`` beyond the shared contract: crash recovery, corruption, failed I/O, files.

The contract itself (same results as ``MemoryStorage``, reopen gives the same state) lives in
``test_storage_contract.py``. Here: what a crash or a bad disk can leave behind, and what the
store does about it. Most tests run with ``fsync=False`` because copying or truncating files
in-process sees the page cache anyway; the tests about fsync itself run with it on.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from pathlib import Path

import pytest

from raft_node.core.messages import Entry, EntryType, HardState, Snapshot, SnapshotMeta
from raft_node.storage import durable_format
from raft_node.storage.durable import CorruptStorage, DurableStorage
from raft_node.storage.durable_format import HEADER, MAX_RECORD, encode_snapshot_file, scan
from raft_node.storage.memory import MemoryStorage
from raft_node.storage.protocol import PersistentState, StorageError


def ents(first: int, last: int, term: int = 1, size: int = 8) -> list[Entry]:
    return [Entry(term, i, bytes([i % 251]) * size) for i in range(first, last + 1)]


def snap(index: int, term: int = 1, data: bytes = b"image") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ("n1", "n2")), data)


def segments(path: Path) -> list[Path]:
    return sorted((path / "log").glob("*.seg"))


def snapshots(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "snapshots").iterdir())


def open_store(path: Path, **kw: object) -> DurableStorage:
    kw.setdefault("fsync", False)
    return DurableStorage(path, **kw)  # type: ignore[arg-type]


def record_offsets(path: Path) -> list[int]:
    return [off for off, _ in scan(path.read_bytes(), path, tail_ok=True).records]


def trim(path: Path) -> None:
    """What a rotation does to the segment it leaves: cut the preallocated zeros."""
    os.truncate(path, log_end(path))


def log_end(path: Path) -> int:
    """Where a segment's records end (its length, unless it has a preallocated zero tail)."""
    return scan(path.read_bytes(), path, tail_ok=True).valid_end


def sync_calls(monkeypatch: pytest.MonkeyPatch, replacement=None) -> list[int]:
    """Route ``os.fsync`` and ``os.fdatasync`` through ``replacement`` (default: the real call),
    recording the fd of every call."""
    calls: list[int] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        call = replacement or real
        monkeypatch.setattr(os, name, lambda fd, call=call: (calls.append(fd), call(fd))[1])
    return calls


# -- torn tails --------------------------------------------------------------------------------


def build_history(path: Path, **kw: object) -> tuple[PersistentState, int, int]:
    """A few saves, then one more; returns the state before the last save and where the
    segment's records ended before and after it."""
    with open_store(path, **kw) as s:
        s.save(HardState(1, "n1", 0), ents(1, 3))
        s.save(HardState(2, "n2", 2), ents(3, 5, term=2))
        before = s.load()
        size0 = log_end(segments(path)[-1])
        s.save(HardState(2, "n2", 4), ents(6, 8, term=2, size=20))
        size1 = log_end(segments(path)[-1])
    return before, size0, size1


@pytest.mark.parametrize(
    "preallocated",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                not hasattr(os, "posix_fallocate"), reason="no posix_fallocate (macOS)"
            ),
        ),
    ],
)
def test_torn_tail_at_every_byte_offset_of_the_last_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, preallocated: bool
) -> None:
    """A crash mid-write leaves a prefix of the last record: at the end of a growing file, or
    followed by the zeros of a preallocated one (the rest of the write never reached them)."""
    origin = tmp_path / "origin"
    kw = {} if preallocated else {"preallocate_bytes": 0}
    before, size0, size1 = build_history(origin, **kw)
    assert size1 - size0 > HEADER.size + 40
    length = segments(origin)[-1].stat().st_size
    assert (length > size1) == preallocated
    for cut in range(size0, size1):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(origin, work)
        seg = segments(work)[-1]
        if preallocated:
            with open(seg, "r+b") as f:
                f.seek(cut)
                f.write(bytes(size1 - cut))
        else:
            os.truncate(seg, cut)
        caplog.clear()
        logger = "raft_node.storage.durable"
        with caplog.at_level(logging.WARNING, logger=logger), open_store(work, **kw) as s:
            assert s.load() == before
            assert log_end(seg) == size0
            if cut == size0:
                assert s.recovery_report is None
                assert seg.stat().st_size == (length if preallocated else cut)  # no repair
            else:
                assert seg.stat().st_size == size0  # the torn bytes are cut off
                assert s.recovery_report is not None
                assert seg.name in s.recovery_report and "torn" in s.recovery_report
                assert any("torn" in r.getMessage() for r in caplog.records)
            s.save(None, ents(6, 6, term=3))
        with open_store(work, **kw) as s:
            assert s.recovery_report is None
            assert s.load().entries == (*before.entries, *ents(6, 6, term=3))
        shutil.rmtree(work)


def test_crc_mismatch_in_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    before, size0, size1 = build_history(tmp_path)
    seg = segments(tmp_path)[-1]
    for pos in (size0 + 4, size0 + HEADER.size, size1 - 1):  # crc field, payload start, end
        raw = bytearray(seg.read_bytes())
        raw[pos] ^= 0x40
        seg.write_bytes(raw[:size1])
        with open_store(tmp_path) as s:
            assert s.load() == before
            assert s.recovery_report is not None and "crc mismatch" in s.recovery_report
            s.save(HardState(2, "n2", 4), ents(6, 8, term=2, size=20))  # restore for next pos


def test_a_zero_tail_of_the_last_segment_is_free_space(tmp_path: Path) -> None:
    """Zeros after the last record: preallocated space, or a crash that extended the file but
    never wrote the data. Either way nothing was lost: no repair, and writing goes on there."""
    _, _, size1 = build_history(tmp_path, preallocate_bytes=0)
    with open_store(tmp_path) as s:
        after = s.load()
    seg = segments(tmp_path)[-1]
    with open(seg, "r+b") as f:
        f.truncate(size1 + 4096)
    with open_store(tmp_path, preallocate_bytes=0) as s:
        assert s.load() == after
        assert s.recovery_report is None
        s.save(None, ents(9, 9, term=2))
    assert seg.stat().st_size == size1 + 4096
    with open_store(tmp_path) as s:
        assert s.load().entries == (*after.entries, *ents(9, 9, term=2))
        assert s.recovery_report is None


def test_a_length_pointing_into_the_zero_tail_refuses_to_start(tmp_path: Path) -> None:
    """The last record's length grown by a flipped bit now ends among the preallocated zeros.
    Its bytes still hold a complete record, so this is damage to an acknowledged save, not a
    torn write: refuse rather than drop it."""
    _, size0, size1 = build_history(tmp_path)
    seg = segments(tmp_path)[-1]
    raw = bytearray(seg.read_bytes())
    assert len(raw) > size1 + 4096
    raw[size0 + 1] ^= 0x08  # the length's second byte: 2048 more
    seg.write_bytes(raw)
    with pytest.raises(CorruptStorage, match=f"crc mismatch at byte offset {size0}"):
        open_store(tmp_path)


def test_rotation_leaves_no_zero_tail_behind(tmp_path: Path) -> None:
    """Only the last segment may end in zeros: a zero tail anywhere else is damage."""
    with open_store(tmp_path, segment_bytes=300, preallocate_bytes=200) as s:
        for i in range(1, 40):
            s.save(HardState(1, "n1", i - 1), ents(i, i))
        expected = s.load()
    *older, last = segments(tmp_path)
    assert len(older) >= 3
    for seg in older:
        assert log_end(seg) == seg.stat().st_size
        scan(seg.read_bytes(), seg, tail_ok=False)  # allows no tail
    assert last.stat().st_size >= log_end(last)
    with open_store(tmp_path, segment_bytes=300, preallocate_bytes=200) as s:
        assert s.load() == expected
        assert s.recovery_report is None


def test_flipped_byte_in_an_earlier_record_refuses_to_start(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    build_history(origin)
    seg = segments(origin)[-1]
    offsets = record_offsets(seg)
    start, end = offsets[1], offsets[2]  # the first SAVE record; two records follow it
    for pos in range(start, end):
        work = tmp_path / "work"
        shutil.copytree(origin, work)
        target = work / "log" / seg.name
        raw = bytearray(target.read_bytes())
        raw[pos] ^= 0xFF
        target.write_bytes(raw)
        with pytest.raises(CorruptStorage) as err:
            open_store(work)
        assert seg.name in str(err.value)
        assert f"byte offset {start}" in str(err.value)
        shutil.rmtree(work)


def test_damage_in_an_older_segment_is_never_a_torn_tail(tmp_path: Path) -> None:
    with open_store(tmp_path, segment_bytes=200) as s:
        for i in range(1, 30):
            s.save(HardState(1, "n1", i - 1), ents(i, i))
    older = segments(tmp_path)[0]
    size = older.stat().st_size
    os.truncate(older, size - 3)
    with pytest.raises(CorruptStorage, match=older.name):
        open_store(tmp_path)


def test_missing_middle_segment_refuses_to_start(tmp_path: Path) -> None:
    with open_store(tmp_path, segment_bytes=200) as s:
        s.save(None, ents(1, 30))
        for i in range(31, 60):
            s.save(None, ents(i, i))
    segs = segments(tmp_path)
    assert len(segs) >= 3
    segs[1].unlink()
    with pytest.raises(CorruptStorage, match="sequence"):
        open_store(tmp_path)


def test_missing_oldest_segment_that_is_still_needed_refuses_to_start(tmp_path: Path) -> None:
    with open_store(tmp_path, segment_bytes=200) as s:
        for i in range(1, 30):
            s.save(None, ents(i, i))
    segments(tmp_path)[0].unlink()
    with pytest.raises(CorruptStorage, match="deleted segment"):
        open_store(tmp_path)


def test_lost_log_with_snapshots_present_refuses_to_start(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.save(HardState(3, "n1", 0), ents(1, 3))
        s.save_snapshot(snap(2))
    for seg in segments(tmp_path):
        seg.unlink()
    with pytest.raises(CorruptStorage, match="not new"):
        open_store(tmp_path)


# -- crashes -----------------------------------------------------------------------------------


def random_op(rng: random.Random, model: MemoryStorage) -> tuple[str, tuple[object, ...]]:
    last, snap_index = model.last_index(), model.snapshot.index
    roll = rng.random()
    term = rng.randint(1, 6)
    hs = HardState(term, rng.choice(["", "n1", "n2"]), rng.randint(0, 9))
    if roll < 0.6:
        first = rng.randint(max(snap_index + 1, last - 3), last + 1)
        batch = [
            Entry(term, i, rng.randbytes(rng.randint(0, 60)))
            for i in range(first, first + rng.randint(1, 8))
        ]
        return "save", (hs if rng.random() < 0.7 else None, batch)
    if roll < 0.7:
        return "save", (hs, [])
    if roll < 0.75:
        index = last + rng.randint(0, 3)
        return "save", (hs, ents(index + 1, index + 2, term), snap(index, term, rng.randbytes(9)))
    if roll < 0.87:
        return "save_snapshot", (snap(rng.randint(snap_index, max(last, snap_index))),)
    return "compact", (rng.randint(0, snap_index),)


def test_crash_after_any_returned_save_keeps_it(tmp_path: Path) -> None:
    """Copy the data dir right after random calls return (a crash at that instant loses only
    the page cache's unsynced data, and there is none): each copy must reopen to exactly the
    state the calls had produced."""
    rng = random.Random(1234)
    live = tmp_path / "live"
    model = MemoryStorage()
    copies: list[tuple[Path, PersistentState]] = []
    with open_store(live, segment_bytes=1024) as store:
        for step in range(400):
            op, args = random_op(rng, model)
            getattr(model, op)(*args)
            getattr(store, op)(*args)
            if rng.random() < 0.1:
                copy = tmp_path / f"crash{step}"
                shutil.copytree(live, copy)
                copies.append((copy, model.load()))
        assert store.load() == model.load()
    assert len(copies) > 20
    for copy, expected in copies:
        with open_store(copy, segment_bytes=1024) as reopened:
            assert reopened.load() == expected
            assert reopened.recovery_report is None


def test_crash_while_rotating_leaves_an_empty_segment(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.save(HardState(1, "n1", 1), ents(1, 4))
        expected = s.load()
        seq = len(segments(tmp_path)) + 1
    trim(segments(tmp_path)[-1])
    # nothing written yet, only preallocated, or a torn checkpoint header
    for content in (b"", bytes(4096), b"\x10\x00"):
        (tmp_path / "log" / f"{seq:020d}-{5:020d}.seg").write_bytes(content)
        with open_store(tmp_path) as s:
            assert s.load() == expected
            assert s.recovery_report is not None and "no complete checkpoint" in s.recovery_report
            assert len(segments(tmp_path)) == seq - 1
            s.save(None, ents(5, 5))
            expected = s.load()
        trim(segments(tmp_path)[-1])


@pytest.mark.parametrize("upto", [35, 39])  # 39: the compaction empties the log
def test_crash_between_rotation_and_segment_deletion(tmp_path: Path, upto: int) -> None:
    live, before = tmp_path / "live", tmp_path / "before"
    with open_store(live, segment_bytes=200) as s:
        for i in range(1, 40):
            s.save(HardState(1, "n1", i), ents(i, i))
        s.save_snapshot(snap(upto))
        shutil.copytree(live, before)
        s.compact(upto)
        after = s.load()
        newest = segments(live)[-1]
    # The crash: the old segment trimmed, the new one durable, the dead ones not deleted yet.
    trim(segments(before)[-1])
    shutil.copy2(newest, before / "log" / newest.name)
    assert len(segments(before)) > 2
    with open_store(before, segment_bytes=200) as s:
        assert s.load() == after
    assert [p.name for p in segments(before)] == [p.name for p in segments(live)]


# -- failed I/O --------------------------------------------------------------------------------


def broken_fsync(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


def assert_poisoned(s: DurableStorage) -> None:
    for call in (
        lambda: s.load(),
        lambda: s.save(HardState(9, "n1", 0), []),
        lambda: s.save(None, ents(100, 100)),
        lambda: s.save_snapshot(snap(1)),
        lambda: s.compact(0),
    ):
        with pytest.raises(StorageError, match="failed earlier"):
            call()


def test_failed_fsync_stops_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = DurableStorage(tmp_path)
    s.save(HardState(1, "n1", 0), ents(1, 2))

    sync_calls(monkeypatch, broken_fsync)
    with pytest.raises(StorageError, match="Input/output error"):
        s.save(None, ents(3, 3))
    monkeypatch.undo()  # the disk "recovers": the store must still refuse (never retry fsync)
    assert s.failed
    assert_poisoned(s)
    s.close()
    with DurableStorage(tmp_path) as reopened:  # restart recovers from what is on disk
        assert reopened.load().entries[:2] == tuple(ents(1, 2))


def test_failed_write_stops_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(tmp_path)

    def full_disk(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: full_disk(fd, data))
    with pytest.raises(StorageError, match="No space"):
        s.save(HardState(1, "n1", 0), ents(1, 2))
    monkeypatch.undo()
    assert_poisoned(s)
    s.close()


def test_failed_snapshot_fsync_stops_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = DurableStorage(tmp_path)
    s.save(None, ents(1, 5))
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError):
        s.save_snapshot(snap(3))
    monkeypatch.undo()
    assert_poisoned(s)
    s.close()


def test_one_fsync_per_save_and_none_for_empty_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = DurableStorage(tmp_path)
    calls = sync_calls(monkeypatch)
    seg = segments(tmp_path)[-1]
    size = log_end(seg)
    s.save(None, [])
    s.save(HardState(0, "", 0), [])  # unchanged hard state
    assert calls == [] and log_end(seg) == size
    s.save(HardState(1, "n1", 0), ents(1, 64, size=128))
    assert len(calls) == 1
    s.save(HardState(1, "n1", 10), [])
    assert len(calls) == 2
    s.close()


def test_oversized_entry_is_refused_without_poisoning(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        with pytest.raises(StorageError, match="limit"):
            s.save(None, [Entry(1, 1, b"x" * (MAX_RECORD + 1))])
        assert not s.failed
        s.save(None, ents(1, 1))
        assert s.load().entries == tuple(ents(1, 1))


def test_save_larger_than_one_record_is_split(tmp_path: Path) -> None:
    big = [Entry(1, i, bytes([i]) * (MAX_RECORD // 3)) for i in range(1, 4)]
    with open_store(tmp_path) as s:
        s.save(HardState(1, "n1", 3), big)
        expected = s.load()
    assert len(record_offsets(segments(tmp_path)[-1])) == 3  # checkpoint + 2 SAVE records
    with open_store(tmp_path) as s:
        assert s.load() == expected


def test_non_consecutive_batch_is_refused(tmp_path: Path) -> None:
    with open_store(tmp_path) as s, pytest.raises(StorageError, match="consecutive"):
        s.save(None, [Entry(1, 1), Entry(1, 3)])


def test_second_opener_is_refused_and_close_releases(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.save(None, ents(1, 1))
        with pytest.raises(StorageError, match="in use"):
            open_store(tmp_path)
    with pytest.raises(StorageError, match="closed"):
        s.load()
    with open_store(tmp_path) as again:
        assert again.load().entries == tuple(ents(1, 1))


# -- snapshot files ----------------------------------------------------------------------------


def test_only_the_newest_two_snapshots_are_kept(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.save(None, ents(1, 20))
        for i in (5, 10, 15):
            s.save_snapshot(snap(i))
        assert snapshots(tmp_path) == [f"{10:020d}-{1:020d}.snap", f"{15:020d}-{1:020d}.snap"]
        s.save(HardState(2, "n2", 30), [], snap(30, term=2))
        assert snapshots(tmp_path) == [f"{15:020d}-{1:020d}.snap", f"{30:020d}-{2:020d}.snap"]


def test_a_snapshot_keeps_its_configuration(tmp_path: Path) -> None:
    """Learners and the host's context (addresses) survive the disk, as the voters do, in the
    snapshot file and in the log's snapshot mark."""
    context = {"addresses": {"n1": "10.0.0.1:7001", "n4": "10.0.0.4:7001"}}
    meta = SnapshotMeta(5, 1, ("n1", "n2", "n3"), ("n4",), context)
    with open_store(tmp_path) as s:
        s.save(None, ents(1, 8))
        s.save_snapshot(Snapshot(meta, b"image"))
    with open_store(tmp_path) as again:
        assert again.load().snapshot.meta == meta


def test_snapshot_temp_files_from_a_crash_are_removed(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.save(None, ents(1, 5))
        s.save_snapshot(snap(3))
        expected = s.load()
    leftover = tmp_path / "snapshots" / f"{4:020d}-{1:020d}.snap.tmp"
    leftover.write_bytes(b"half a snapshot")
    with open_store(tmp_path) as s:
        assert s.load() == expected
        assert s.recovery_report is not None and leftover.name in s.recovery_report
    assert not leftover.exists()


def test_snapshot_written_but_not_recorded_is_ignored(tmp_path: Path) -> None:
    """A crash after the snapshot file's rename but before the log record: the log still names
    the older snapshot, and that is what loads."""
    with open_store(tmp_path) as s:
        s.save(None, ents(1, 8))
        s.save_snapshot(snap(3))
        expected = s.load()
    orphan = tmp_path / "snapshots" / f"{6:020d}-{1:020d}.snap"
    orphan.write_bytes(encode_snapshot_file(snap(6)))
    with open_store(tmp_path) as s:
        assert s.load() == expected
        assert s.recovery_report is None


def test_damaged_current_snapshot_refuses_to_start(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.save(None, ents(1, 5))
        s.save_snapshot(snap(3, data=b"x" * 100))
    path = tmp_path / "snapshots" / f"{3:020d}-{1:020d}.snap"
    raw = bytearray(path.read_bytes())
    raw[50] ^= 1
    path.write_bytes(raw)
    with pytest.raises(CorruptStorage, match=path.name):
        open_store(tmp_path)
    path.write_bytes(encode_snapshot_file(Snapshot(SnapshotMeta(3, 1, ("n9",)), b"x")))
    with pytest.raises(CorruptStorage, match="the log expects"):
        open_store(tmp_path)
    path.unlink()
    with pytest.raises(CorruptStorage, match="missing"):
        open_store(tmp_path)


def test_entry_decoder_falls_back_to_the_constructor_if_entry_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Entry, "__post_init__", lambda self: None, raising=False)
    build = durable_format._make_entry_builder()
    assert build(5, [[2, 1, b"x"]]) == [Entry(2, 5, b"x", EntryType.NOOP)]


# -- segments ----------------------------------------------------------------------------------


def test_rotation_and_compaction_delete_old_segments(tmp_path: Path) -> None:
    with DurableStorage(tmp_path, segment_bytes=512) as s:
        for i in range(1, 101):
            s.save(HardState(1, "n1", i - 1), ents(i, i, size=40))
        many = len(segments(tmp_path))
        assert many >= 8
        assert all(p.stat().st_size <= 512 for p in segments(tmp_path)[:-1])
        s.save_snapshot(snap(90))
        s.compact(90)
        # Left: the segments holding 91..100 (about 7 saves fit in one) and the new one.
        assert len(segments(tmp_path)) <= 4
        expected = s.load()
        assert expected.entries == tuple(ents(91, 100, size=40))
    with DurableStorage(tmp_path, segment_bytes=512) as s:
        assert s.load() == expected
        s.save(None, ents(101, 101))
        s.save(HardState(2, "n2", 0), [], snap(200, term=2))
        assert len(segments(tmp_path)) == 1
        expected = s.load()
    with DurableStorage(tmp_path, segment_bytes=512) as s:
        assert s.load() == expected


def test_without_posix_fallocate_the_files_grow_and_recover_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS has no ``posix_fallocate``: the store turns preallocation off and goes on."""
    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    with open_store(tmp_path, segment_bytes=300) as s:
        for i in range(1, 30):
            s.save(HardState(1, "n1", i - 1), ents(i, i))
        expected = s.load()
        assert s.preallocate_bytes == 0
    for seg in segments(tmp_path):
        assert log_end(seg) == seg.stat().st_size  # no zero tail anywhere
    with open_store(tmp_path, segment_bytes=300) as s:
        assert s.load() == expected and s.recovery_report is None
