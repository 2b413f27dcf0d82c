"""Cache keys cost the cyclic garbage collector nothing: a record is a tuple of bytes, ints and
None, which CPython stops tracking at its first collection. As lists, a million keys were a
million objects every full collection walked (0.4 to 0.8 s each, longer than an election
timeout); this keeps them out, whatever the number of keys."""

from __future__ import annotations

import gc

import msgpack

from coordination.primitives.machine import CoordinationMachine


def _tracked_after_collect() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_keys_add_no_objects_for_the_collector_to_walk() -> None:
    machine = CoordinationMachine()
    before = _tracked_after_collect()
    for batch in range(5):
        items = [[f"k{batch}:{i}", b"v" * 100] for i in range(1000)]
        machine.apply(batch + 1, msgpack.packb(["cache.set_many", items, None]), 1_000 + batch)
        machine.drain_events()
    machine.apply(6, msgpack.packb(["cache.set", "k0:1", b"w", None]), 2_000)  # a replaced one
    machine.drain_events()
    # The watch history keeps its events (two containers each), bounded by its own limits;
    # only the records are the keys' own.
    history = 2 * len(machine.history.events)
    assert _tracked_after_collect() - before - history < 50
    store = machine.part("cache").store  # type: ignore[attr-defined]
    assert len(store.data) == 5000
    assert not any(gc.is_tracked(rec) for rec in store.data.values())
    assert store.read("k0:1")["value"] == b"w"


def test_a_restored_store_holds_untracked_records_too() -> None:
    machine = CoordinationMachine()
    items = [[f"k{i}", b"v"] for i in range(100)]
    machine.apply(1, msgpack.packb(["cache.set_many", items, 60_000]), 1_000)
    copy = CoordinationMachine()
    copy.restore(machine.snapshot())
    gc.collect()
    store = copy.part("cache").store  # type: ignore[attr-defined]
    assert store.data == machine.part("cache").store.data  # type: ignore[attr-defined]
    assert not any(gc.is_tracked(rec) for rec in store.data.values())
    assert copy.snapshot() == machine.snapshot()
