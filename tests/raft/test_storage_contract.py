"""One ``Storage`` contract, run against every backend (``MemoryStorage``, ``DurableStorage``).

Each test states the contract through a ``Harness``: ``h.check(expected)`` asserts ``load()``
and, for the durable store, also closes it and reopens it from disk and asserts the identical
``PersistentState`` (then keeps going with the reopened store). A hypothesis state machine then
drives random operations against ``DurableStorage`` with ``MemoryStorage`` as the model,
reopening (cleanly or from a copy of the directory, as after a crash) at random points.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from search_depth import examples

from raft_node.core.messages import Entry, EntryType, HardState, Snapshot, SnapshotMeta
from raft_node.storage.durable import DurableStorage
from raft_node.storage.memory import MemoryStorage
from raft_node.storage.protocol import PersistentState, StorageError


def ents(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, f"e{i}t{term}".encode()) for i in range(first, last + 1)]


def snap(index: int, term: int = 1, data: bytes = b"image") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ("n1", "n2", "n3")), data)


class Harness:
    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.store: MemoryStorage | DurableStorage = self._open()

    def _open(self) -> MemoryStorage | DurableStorage:
        if self.kind == "memory":
            return MemoryStorage()
        return DurableStorage(self.path, segment_bytes=256)

    def check(self, expected: PersistentState) -> None:
        assert self.store.load() == expected
        if isinstance(self.store, DurableStorage):
            self.store.close()
            self.store = self._open()
            assert self.store.load() == expected

    def close(self) -> None:
        if isinstance(self.store, DurableStorage):
            self.store.close()


@pytest.fixture(params=["memory", "durable"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path / "data")
    yield harness
    harness.close()


HS = HardState(term=3, vote="n2", commit=4)


def test_empty_store(h: Harness) -> None:
    h.check(PersistentState())


def test_append_batches(h: Harness) -> None:
    h.store.save(None, ents(1, 3))
    h.check(PersistentState(entries=tuple(ents(1, 3))))
    h.store.save(None, ents(4, 6))
    h.check(PersistentState(entries=tuple(ents(1, 6))))


def test_entry_types_and_data_round_trip(h: Harness) -> None:
    batch = [
        Entry(1, 1, b"", EntryType.NOOP),
        Entry(1, 2, bytes(range(256)), EntryType.NORMAL),
        Entry(2, 3, b"\x00" * 1000, EntryType.CONF_CHANGE),
    ]
    h.store.save(None, batch)
    h.check(PersistentState(entries=tuple(batch)))


def test_suffix_replacement(h: Harness) -> None:
    h.store.save(None, ents(1, 5))
    h.store.save(None, ents(3, 4, term=2))
    expected = ents(1, 2) + ents(3, 4, term=2)
    h.check(PersistentState(entries=tuple(expected)))
    h.store.save(None, ents(1, 1, term=3))
    h.check(PersistentState(entries=tuple(ents(1, 1, term=3))))


def test_gap_rejected_and_store_still_usable(h: Harness) -> None:
    with pytest.raises(StorageError, match="gap"):
        h.store.save(None, ents(2, 3))
    h.store.save(None, ents(1, 3))
    with pytest.raises(StorageError, match="gap"):
        h.store.save(HS, ents(5, 6))
    h.check(PersistentState(entries=tuple(ents(1, 3))))
    h.store.save(None, ents(4, 4))
    h.check(PersistentState(entries=tuple(ents(1, 4))))


def test_hard_state(h: Harness) -> None:
    h.store.save(HS, [])
    h.check(PersistentState(hard_state=HS))
    h.store.save(None, ents(1, 2))
    h.check(PersistentState(hard_state=HS, entries=tuple(ents(1, 2))))
    newer = HardState(term=4, vote="", commit=2)
    h.store.save(newer, ents(3, 3))
    h.check(PersistentState(hard_state=newer, entries=tuple(ents(1, 3))))


def test_empty_save_is_a_no_op(h: Harness) -> None:
    h.store.save(HS, ents(1, 1))
    h.store.save(None, [])
    h.store.save(HS, [])
    h.check(PersistentState(hard_state=HS, entries=tuple(ents(1, 1))))


def test_snapshot_install_resets_log(h: Harness) -> None:
    h.store.save(HS, ents(1, 10))
    s = snap(8, term=2)
    h.store.save(None, [], s)
    h.check(PersistentState(hard_state=HS, snapshot=s))
    h.store.save(None, ents(9, 9, term=2))
    h.check(PersistentState(hard_state=HS, snapshot=s, entries=tuple(ents(9, 9, term=2))))


def test_snapshot_install_with_entries_and_hard_state(h: Harness) -> None:
    h.store.save(None, ents(1, 3))
    s = snap(20, term=4)
    hs = HardState(term=5, vote="n3", commit=21)
    h.store.save(hs, ents(21, 22, term=5), s)
    h.check(PersistentState(hard_state=hs, snapshot=s, entries=tuple(ents(21, 22, term=5))))


def test_append_must_follow_installed_snapshot(h: Harness) -> None:
    s = snap(5)
    h.store.save(None, [], s)
    with pytest.raises(StorageError, match="gap"):
        h.store.save(None, ents(7, 7))
    with pytest.raises(StorageError, match="overwrites snapshot"):
        h.store.save(None, ents(5, 6))
    h.check(PersistentState(snapshot=s))


def test_save_snapshot_keeps_entries(h: Harness) -> None:
    h.store.save(HS, ents(1, 6))
    s = snap(4)
    h.store.save_snapshot(s)
    h.check(PersistentState(hard_state=HS, snapshot=s, entries=tuple(ents(1, 6))))
    with pytest.raises(StorageError, match="older"):
        h.store.save_snapshot(snap(3))
    h.check(PersistentState(hard_state=HS, snapshot=s, entries=tuple(ents(1, 6))))


def test_compact_drops_prefix(h: Harness) -> None:
    h.store.save(HS, ents(1, 10))
    s = snap(6)
    h.store.save_snapshot(s)
    h.store.compact(4)
    h.check(PersistentState(hard_state=HS, snapshot=s, entries=tuple(ents(5, 10))))
    h.store.compact(6)
    h.check(PersistentState(hard_state=HS, snapshot=s, entries=tuple(ents(7, 10))))
    h.store.compact(3)  # already gone: no-op
    h.check(PersistentState(hard_state=HS, snapshot=s, entries=tuple(ents(7, 10))))
    h.store.save(None, ents(11, 12))
    h.check(PersistentState(hard_state=HS, snapshot=s, entries=tuple(ents(7, 12))))


def test_compact_beyond_snapshot_raises(h: Harness) -> None:
    h.store.save(None, ents(1, 5))
    with pytest.raises(StorageError, match="beyond snapshot"):
        h.store.compact(1)
    h.store.save_snapshot(snap(3))
    with pytest.raises(StorageError, match="beyond snapshot"):
        h.store.compact(4)
    h.check(PersistentState(snapshot=snap(3), entries=tuple(ents(1, 5))))


def test_compact_everything_then_append(h: Harness) -> None:
    h.store.save(None, ents(1, 5))
    s = snap(5)
    h.store.save_snapshot(s)
    h.store.compact(5)
    h.check(PersistentState(snapshot=s))
    with pytest.raises(StorageError, match="overwrites snapshot"):
        h.store.save(None, ents(5, 5, term=2))
    h.store.save(None, ents(6, 7))
    h.check(PersistentState(snapshot=s, entries=tuple(ents(6, 7))))


def test_snapshot_past_the_log_then_compact(h: Harness) -> None:
    # MemoryStorage allows a snapshot beyond the last entry; compaction then empties the log.
    h.store.save(None, ents(1, 3))
    s = snap(5)
    h.store.save_snapshot(s)
    h.store.compact(5)
    h.check(PersistentState(snapshot=s))
    h.store.save(None, ents(6, 6))
    h.check(PersistentState(snapshot=s, entries=tuple(ents(6, 6))))


def test_truncate_after_compaction(h: Harness) -> None:
    h.store.save(None, ents(1, 8))
    s = snap(4)
    h.store.save_snapshot(s)
    h.store.compact(3)
    h.store.save(None, ents(6, 7, term=2))
    h.check(PersistentState(snapshot=s, entries=tuple(ents(4, 5) + ents(6, 7, term=2))))


def test_long_history(h: Harness) -> None:
    """Enough traffic to rotate the durable store through many small segments."""
    expected = MemoryStorage()
    for i in range(1, 41):
        hs = HardState(term=1 + i // 10, vote="n1", commit=i - 1)
        batch = ents(i, i, term=hs.term)
        h.store.save(hs, batch)
        expected.save(hs, batch)
        if i % 10 == 0:
            h.store.save_snapshot(snap(i - 2))
            expected.save_snapshot(snap(i - 2))
            h.store.compact(i - 5)
            expected.compact(i - 5)
            h.check(expected.load())
    h.check(expected.load())


# -- model-based: DurableStorage against MemoryStorage ------------------------------------------


class DurableMatchesMemory(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="durable-model-"))
        self.copies = 0
        self.model = MemoryStorage()
        self.store = self._open(self.tmp / "data")

    @staticmethod
    def _open(path: Path) -> DurableStorage:
        return DurableStorage(path, segment_bytes=300, fsync=False)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _both(self, op: str, *args: object) -> None:
        """Apply ``op`` to both; they must agree on whether it raises."""
        try:
            getattr(self.model, op)(*args)
        except StorageError:
            with pytest.raises(StorageError):
                getattr(self.store, op)(*args)
        else:
            getattr(self.store, op)(*args)

    @rule(
        data=st.data(),
        count=st.integers(0, 4),
        term=st.integers(1, 5),
        hs=st.none() | st.builds(HardState, st.integers(0, 9), st.sampled_from(["", "a", "b"])),
    )
    def append(self, data: st.DataObject, count: int, term: int, hs: HardState | None) -> None:
        lo = self.model.snapshot.index + 1
        first = data.draw(st.integers(lo, max(self.model.last_index() + 1, lo)))
        batch = [
            Entry(term, i, data.draw(st.binary(max_size=40))) for i in range(first, first + count)
        ]
        self._both("save", hs, batch)

    @rule(gap=st.integers(2, 4))
    def append_with_gap(self, gap: int) -> None:
        self._both("save", None, ents(self.model.last_index() + gap, self.model.last_index() + gap))

    @rule(data=st.data(), term=st.integers(1, 5), count=st.integers(0, 3))
    def install_snapshot(self, data: st.DataObject, term: int, count: int) -> None:
        index = data.draw(st.integers(1, self.model.last_index() + 5))
        s = Snapshot(SnapshotMeta(index, term, ("a", "b")), data.draw(st.binary(max_size=30)))
        hs = HardState(term, "a", index)
        self._both("save", hs, ents(index + 1, index + count, term), s)

    @rule(data=st.data())
    def save_snapshot(self, data: st.DataObject) -> None:
        lo = self.model.snapshot.index
        index = data.draw(st.integers(max(lo - 1, 0), max(self.model.last_index(), lo)))
        self._both("save_snapshot", snap(index, data=data.draw(st.binary(max_size=20))))

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        self._both("compact", data.draw(st.integers(0, self.model.snapshot.index + 1)))

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self._open(self.store.data_dir)
        assert self.store.recovery_report is None

    @rule()
    def reopen_copy_as_after_crash(self) -> None:
        """Open a copy taken while the store is still open: what a crash right now leaves."""
        self.copies += 1
        copy = self.tmp / f"copy{self.copies}"
        shutil.copytree(self.store.data_dir, copy)
        self.store.close()
        self.store = self._open(copy)

    @invariant()
    def same_state(self) -> None:
        assert self.store.load() == self.model.load()


DurableMatchesMemory.TestCase.settings = settings(
    max_examples=examples(quick=50, deep=100), stateful_step_count=40, deadline=None
)
TestDurableMatchesMemory = DurableMatchesMemory.TestCase
