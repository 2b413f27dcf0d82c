"""The cache's snapshot format is a compatibility contract: a node restores snapshots written by
the release before it (from disk, or sent by a leader that was not upgraded yet).

``data/cache_snapshot_v1.msgpack`` was written by the cache as it was before
``coordination/primitives/cache.py`` was split into modules: a machine snapshot holding every
part of the cache's state (keys with and without TTLs, evicted keys with and without TTLs,
tombstones, L1 registrations including a ``set_hold`` one, queued writes including a clear,
fill counters), plus what the machine answered to a fixed continuation after restoring it.
These tests check that today's code (1) writes the same bytes for the same history, (2) restores
the old bytes and writes them back unchanged, and (3) behaves after the restore exactly as the old
code did. Regenerate the file (``python tests/primitives/test_cache_snapshot_format.py``) only
for a deliberate format change, and then keep reading the old one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from coordination.primitives.machine import TICK, CoordinationMachine
from raft_node.core.fsm import CommandRejected

GOLDEN = Path(__file__).parent / "data" / "cache_snapshot_v1.msgpack"
T0 = 1_000_000
BUDGET = 700  # small, so that keys are evicted (the budget is not in the snapshot)


class _Run:
    """A machine driven at increasing indexes with a controllable log clock."""

    def __init__(self) -> None:
        self.m = CoordinationMachine()
        self.m.part("cache").max_bytes = BUDGET  # type: ignore[attr-defined]
        self.index = 0
        self.now = T0

    def apply(self, op: str, *args: Any) -> Any:
        self.index += 1
        try:
            answer = self.m.apply(self.index, msgpack.packb([op, *args]), self.now)
        except CommandRejected as exc:
            return ["rejected", exc.code]
        token = getattr(answer, "token", None)  # ``Pending``: the answer comes later
        return ["pending", token] if token is not None else answer

    def tick(self) -> None:
        self.index += 1
        self.m.apply(self.index, TICK, self.now)

    def query(self, op: str, *args: Any) -> Any:
        return self.m.query(msgpack.packb([op, *args]))


def _history(run: _Run) -> None:
    """Everything the snapshot should hold, in a fixed order."""
    s1 = run.apply("session.open", 600_000, "a")["session"]
    s2 = run.apply("session.open", 600_000, "b")["session"]
    for i in range(8):  # over the budget: the oldest are evicted, some with a TTL
        run.apply("cache.set", f"k{i}", bytes([65 + i]) * 40, None if i % 2 else 50_000 + i)
    run.apply("cache.set", "n", b"41", 90_000)
    run.apply("cache.incr", "n", 1)
    run.apply("cache.delete", "k7")  # a tombstone
    run.apply("cache.delete_many", ["k6", "absent"])
    run.apply("cache.fill", s1, "k5", 30_000)  # L1 registrations
    run.apply("cache.fill", s2, "n", 20_000)
    run.apply("cache.fill", s1, "k0", 10_000)  # evicted: counted as such
    run.apply("cache.set_hold", s2, "h", b"held", None, 40_000)
    run.now += 100
    run.apply("cache.set", "k5", b"queued", 5_000)  # queued behind s1's holding
    run.apply("cache.cas", "n", 12, b"7", None)  # queued behind s2's holding
    run.apply("cache.touch", "h", 70_000)  # queued behind s2's set_hold registration
    run.apply("cache.clear")  # queued behind everything
    run.now += 50
    run.tick()


def _continue(run: _Run) -> list[Any]:
    """What the machine answers after the snapshot: replies, completions, events, reads, and
    the Redis mirror's feed."""
    out: list[Any] = []
    s1, s2 = 1, 2
    cache: Any = run.m.part("cache")

    def record(answer: Any) -> None:
        out.append(
            [
                answer,
                run.m.drain_completions(),
                [e for e in run.m.drain_events() if e[0] != "watch"],  # the cache's own
                run.query("cache.stats"),
                run.m.next_deadline(),
                run.query("cache.get_many", ["k0", "k1", "k5", "n", "h", "new"]),
                cache.changes_since(0),  # what the Redis mirror would push
            ]
        )

    record(run.apply("cache.set", "new", b"x", None))
    record(run.apply("cache.release", s1, ["k5"]))
    record(run.apply("cache.release", s2, ["n"]))
    run.now += 45_000
    run.tick()
    record(None)
    record(run.apply("cache.release", s1, ["k0"]))
    record(run.apply("cache.fill", s1, "new", 1_000))
    record(run.apply("cache.set", "new", b"y", None))  # held: queued, s1 is told
    record(run.apply("cache.set", "t", b"t", 100))
    run.now += 1_000
    run.tick()  # the lease ran out (the write on "new" goes) and "t" expired
    record(None)
    record(run.query("cache.keys", "", 100))
    return out


def _cache_part(snapshot: bytes) -> bytes:
    """The cache's share of a machine snapshot, as msgpack bytes."""
    _, state = msgpack.unpackb(snapshot, raw=False, strict_map_key=False)
    return msgpack.packb(state["cache"], use_bin_type=True)


def _golden() -> dict[str, Any]:
    return msgpack.unpackb(GOLDEN.read_bytes(), raw=False, strict_map_key=False)


def _write_golden() -> None:
    run = _Run()
    _history(run)
    run.m.drain_completions(), run.m.drain_events()
    snapshot = run.m.snapshot()
    restored = _Run()
    restored.m.restore(snapshot)
    restored.index, restored.now = run.index, run.now
    record = {"snapshot": snapshot, "after": _continue(restored)}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_bytes(msgpack.packb(record, use_bin_type=True))


def test_the_golden_snapshot_holds_every_kind_of_state():
    """Guards the fixture itself: a golden file without queued writes or evicted keys would let
    a format change in those parts pass unnoticed."""
    cache = msgpack.unpackb(_golden()["snapshot"], raw=False, strict_map_key=False)[1]["cache"]
    assert cache["data"] and cache["tombstones"] and cache["l1"]
    assert any(exp is not None for _, _, exp in cache["evicted"])
    assert any(exp is None for _, _, exp in cache["evicted"])
    assert len(cache["queue"]) >= 4  # set, cas, touch and the clear
    assert cache["totals"][2:] != [0, 0, 0]


def test_the_same_history_writes_the_same_bytes():
    run = _Run()
    _history(run)
    run.m.drain_completions(), run.m.drain_events()
    assert _cache_part(run.m.snapshot()) == _cache_part(_golden()["snapshot"])


def test_an_old_snapshot_restores_and_is_written_back_unchanged():
    golden = _golden()
    run = _Run()
    run.m.restore(golden["snapshot"])
    assert _cache_part(run.m.snapshot()) == _cache_part(golden["snapshot"])


def test_behaviour_after_restoring_an_old_snapshot_is_the_old_behaviour():
    golden = _golden()
    run = _Run()
    run.m.restore(golden["snapshot"])
    original = _Run()
    _history(original)
    run.index, run.now = original.index, original.now
    after = msgpack.unpackb(
        msgpack.packb(_continue(run), use_bin_type=True), raw=False, strict_map_key=False
    )
    assert after == golden["after"]


if __name__ == "__main__":
    _write_golden()
