"""The applier holds off the cyclic garbage collector while it serialises or restores a snapshot
(``cyclic_gc_paused``), and always brings it back: a collector left off would let cyclic
garbage pile up in a long-running node."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from raft_node import kvstore
from raft_node.core.messages import Entry
from raft_node.host.applier import Applier, cyclic_gc_paused, encode_command
from raft_node.kvstore import KVStore


class Recording(KVStore):
    """A KV store that notes whether the collector was on when it was (de)serialised."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.seen: list[tuple[str, bool]] = []
        self.fail = fail

    def snapshot(self) -> bytes:
        self.seen.append(("snapshot", gc.isenabled()))
        if self.fail:
            raise RuntimeError("snapshot failed")
        return super().snapshot()

    def restore(self, data: bytes) -> None:
        self.seen.append(("restore", gc.isenabled()))
        if self.fail:
            raise RuntimeError("restore failed")
        super().restore(data)


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def _applier(sm: KVStore) -> Applier:
    ap = Applier(sm)
    ap.apply(Entry(1, 1, encode_command("c", 1, 1000, kvstore.put("k", b"v"))))
    return ap


def test_snapshot_and_restore_run_without_the_collector_and_bring_it_back() -> None:
    source = _applier(Recording())
    data = source.snapshot()
    target = Applier(Recording())
    target.restore(data)
    assert source.sm.seen == [("snapshot", False)]
    assert target.sm.seen == [("restore", False)]
    assert target.sm.data == {"k": b"v"} and target.applied_index == 1
    assert gc.isenabled()


def test_a_failing_snapshot_or_restore_still_brings_the_collector_back() -> None:
    data = _applier(KVStore()).snapshot()
    broken = _applier(Recording(fail=True))
    with pytest.raises(RuntimeError):
        broken.snapshot()
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        Applier(Recording(fail=True)).restore(data)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    _applier(Recording()).snapshot()
    assert not gc.isenabled()


def test_nested_and_overlapping_pauses_end_with_the_last() -> None:
    with cyclic_gc_paused():
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still runs
    assert gc.isenabled()

    inside, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        with cyclic_gc_paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert inside.wait(10)
    with cyclic_gc_paused():
        pass
    assert not gc.isenabled()  # the other thread's pause has not ended
    release.set()
    thread.join(10)
    assert gc.isenabled()
