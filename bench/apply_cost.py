"""What one log entry costs the coordination state machine to validate and apply, in one
process: no node, no sockets, no fsync.

    .venv/bin/python bench/apply_cost.py [--entries 1000] [--reps 5] [--batch 64]

For each kind of entry it prints microseconds per entry (min and median over ``--reps``
repetitions of ``--entries`` entries), the cost every replica pays for it (the leader validates
first, then all three apply):

- ``queue.put_many``, ``--batch`` plain messages (100-byte payloads, no dedup id, no delay, no
  held key: what Celery's tasks and the queue benchmark's producers put);
- the same batch with a dedup id per message (the general per-message path);
- ``cache.set`` of a 100-byte value (the write of ``bench_vs_etcd.py``).

Why: the queue benchmark's 64 producers travel in one ``put_many`` per commit round trip, so
the entry's apply is on the path of every round (``bench/README.md``, queue put). Measured here
alone it repeats to within a few percent, where a cluster shows it through the noise of three
processes and the disk. Each repetition starts from a new state machine (1,000 entries of 64
messages stay under a queue's 100,000-message limit). Nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordination.primitives import commands as c
from coordination.primitives.machine import CoordinationMachine


class Replica:
    """A state machine fed entries at increasing indexes, validated first as the leader does."""

    def __init__(self) -> None:
        self.machine = CoordinationMachine()
        self.index = 0

    def do(self, body: bytes) -> object:
        self.index += 1
        self.machine.validate(body)
        return self.machine.apply(self.index, body, 1_000 + self.index)


def kinds(batch: int) -> dict[str, Callable[[int], bytes]]:
    payload = b"p" * 100
    plain = [[payload, 0, None, 0, None] for _ in range(batch)]
    value = b"v" * 100

    def deduped(n: int) -> bytes:
        rows = [[payload, 0, f"d{n}-{i}", 0, None] for i in range(batch)]
        return c.queue_put_many("dedup", rows)

    return {
        f"queue.put_many, {batch} plain messages": lambda n: c.queue_put_many("plain", plain),
        f"queue.put_many, {batch} messages with dedup ids": deduped,
        "cache.set, 100 B": lambda n: c.cache_set(f"key-{n % 10_000}", value, None),
    }


def measure(make: Callable[[int], bytes], entries: int) -> float:
    """Microseconds per entry over ``entries`` entries (the bodies are built beforehand)."""
    replica = Replica()
    for queue in ("plain", "dedup"):
        replica.do(msgpack.packb(["queue.declare", queue, None, None, None]))
    bodies = [make(n) for n in range(entries)]
    start = time.perf_counter()
    for body in bodies:
        replica.do(body)
    return (time.perf_counter() - start) / entries * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    print("| entry | µs per entry, min | median |")
    print("|---|--:|--:|")
    for label, make in kinds(args.batch).items():
        runs = [measure(make, args.entries) for _ in range(args.reps)]
        print(f"| {label} | {min(runs):.1f} | {statistics.median(runs):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
