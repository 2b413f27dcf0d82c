"""Load driver of ``bench_growth.py``: one process with one ``AsyncCoordinator``, driven by JSON
lines on stdin (``benchlib.Controlled``), so the load's CPU is not the orchestrator's and the
connection (and its session) lives across the whole run.

    python bench/growth_load.py --addresses HOST:PORT,...    (secret: RAFTSYNC_BENCH_SECRET)

Commands (one JSON object per line, one answer line each):

- ``fill``: keys ``start .. stop`` under ``prefix`` get ``value_bytes``-byte values, with
  ``cache.set_many`` batches of ``batch`` keys (``limits.BATCH_MAX`` at most, and at most
  768 KiB of values per entry: a command body is at most 1 MiB) and ``inflight`` batches in
  flight, ``repeat`` times over;
- ``queue_fill``: ``count`` 100-byte messages put on ``queue`` with ``inflight`` puts in flight;
- ``filler``: ``entries`` one-entry ``cache.set`` commands of one byte on 64 keys, to bring the
  nodes to their next log snapshot (``SNAPSHOT_EVERY`` applied entries);
- ``run``: ``concurrency`` coroutines repeat ``workload`` for ``warmup`` + ``seconds``; the answer
  has ops/s and latency percentiles (``benchlib.summarize_latencies``) of the operations that
  completed inside the window, and the CPU of this process and of the node ``pids`` in it;
- ``stats``: the cache's counters (``cache.stats``) and the history's (``history.status``).

Workloads: ``write`` (``cache.set`` of a ``value_bytes`` value on a random key of the ``keys``
already loaded under ``prefix``, so the key count stays put), ``read`` (``cache.get`` of such a
key, linearizable: ReadIndex on the leader), ``lock`` (acquire + release of an uncontended lock
on the coordinator's session), ``queue`` (``put`` + ``get`` + ``ack`` on ``queue``; with
``deep`` the order is ``get`` + ``ack`` + ``put``, so a queue filled to its depth limit stays
there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import send_line, serve_commands
from prim_common import Window, closed_loop

from coordination.client.aio import AsyncCoordinator
from coordination.primitives import commands as c
from coordination.primitives.limits import BATCH_MAX

KEY_BYTES = 16
ENTRY_VALUE_BUDGET = 768 << 10  # values per set_many entry: a command body is at most 1 MiB


def key_name(prefix: str, i: int) -> str:
    """A ``KEY_BYTES``-byte key (longer when the prefix leaves no room)."""
    return f"{prefix}{i:0{max(1, KEY_BYTES - len(prefix))}d}"


def make_value(size: int, i: int) -> bytes:
    """A ``size``-byte value that differs per ``i`` (its last 8 bytes), random otherwise."""
    return _RANDOM[: max(0, size - 8)] + i.to_bytes(8, "big")[-min(8, size) :]


_RANDOM = os.urandom(1 << 17)


async def gather_limited(coros: Any, limit: int) -> None:
    """Run the coroutines of an iterator with at most ``limit`` at once (fail on the first
    error: a load that lost writes would measure the wrong state)."""
    it = iter(coros)

    async def worker() -> None:
        for coro in it:
            await coro

    await asyncio.gather(*(worker() for _ in range(limit)))


class Driver:
    def __init__(self, addresses: list[str], secret: str) -> None:
        self.coord = AsyncCoordinator(addresses, secret, timeout=60.0, name="growth")
        self.rng = random.Random(1)

    async def fill(self, cmd: dict[str, Any]) -> dict[str, Any]:
        prefix, start, stop = cmd["prefix"], int(cmd["start"]), int(cmd["stop"])
        size = int(cmd["value_bytes"])
        batch = max(1, min(int(cmd.get("batch", BATCH_MAX)), ENTRY_VALUE_BUDGET // size, BATCH_MAX))
        repeat = int(cmd.get("repeat", 1))

        async def one(lo: int) -> None:
            items = [
                (key_name(prefix, i), make_value(size, i)) for i in range(lo, min(lo + batch, stop))
            ]
            await self.coord.propose(c.cache_set_many(items, None))

        t0 = time.monotonic()
        for _ in range(repeat):
            await gather_limited((one(lo) for lo in range(start, stop, batch)), cmd["inflight"])
        took = time.monotonic() - t0
        keys = (stop - start) * repeat
        return {"keys": keys, "batch": batch, "seconds": took, "keys_per_s": keys / took}

    async def queue_fill(self, cmd: dict[str, Any]) -> dict[str, Any]:
        queue = self.coord.queue(cmd["queue"])
        payload = make_value(100, 0)
        t0 = time.monotonic()
        await gather_limited((queue.put(payload) for _ in range(cmd["count"])), cmd["inflight"])
        took = time.monotonic() - t0
        return {"messages": cmd["count"], "seconds": took, "per_s": cmd["count"] / took}

    async def filler(self, cmd: dict[str, Any]) -> dict[str, Any]:
        bodies = (c.cache_set(f"growth:filler:{i % 64}", b"f", None) for i in range(cmd["entries"]))
        t0 = time.monotonic()
        await gather_limited((self.coord.propose(b) for b in bodies), cmd.get("inflight", 256))
        return {"entries": cmd["entries"], "seconds": time.monotonic() - t0}

    async def stats(self) -> dict[str, Any]:
        return {
            "cache": await self.coord.query(c.cache_stats()),
            "history": await self.coord.query(c.history_status()),
        }

    def operation(self, cmd: dict[str, Any]) -> Any:
        """The workload's one operation, as a coroutine function of the operation number."""
        workload, prefix, keys = cmd["workload"], cmd.get("prefix", ""), int(cmd.get("keys", 1))
        size = int(cmd.get("value_bytes", 100))
        coord, rng = self.coord, self.rng
        if workload == "write":
            values = [make_value(size, i) for i in range(64)]

            async def write(n: int) -> None:
                await coord.propose(
                    c.cache_set(key_name(prefix, rng.randrange(keys)), values[n % 64], None)
                )

            return write
        if workload == "read":

            async def read(n: int) -> None:
                if await coord.query(c.cache_get(key_name(prefix, rng.randrange(keys)))) is None:
                    raise LookupError("a loaded key read as absent")

            return read
        if workload == "lock":

            async def lock(n: int) -> None:
                async with coord.lock(f"growth:lock:{n % 100}"):
                    pass

            return lock
        if workload == "queue":
            queue, payload = coord.queue(cmd["queue"]), make_value(100, 1)

            async def cycle(n: int) -> None:
                if not cmd.get("deep"):
                    await queue.put(payload)
                message = await queue.get(visibility=30.0)
                if message is None:
                    raise LookupError("queue empty")
                await message.ack()
                if cmd.get("deep"):
                    await queue.put(payload)

            return cycle
        raise ValueError(f"unknown workload {workload!r}")

    async def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        pids = [int(p) for p in cmd.get("pids", [])]
        op = self.operation(cmd)
        if cmd["workload"] in ("lock", "queue"):
            await self.coord.default_session()  # opened before any clock starts
        window = Window(cmd["warmup"], cmd["seconds"])
        out, _ = await closed_loop(op, int(cmd["concurrency"]), window, pids)
        return out


async def amain(args: argparse.Namespace) -> None:
    driver = Driver(args.addresses.split(","), os.environ["RAFTSYNC_BENCH_SECRET"])

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "stats":
            return await driver.stats()
        if cmd["cmd"] in ("fill", "queue_fill", "filler", "run"):
            return await getattr(driver, cmd["cmd"])(cmd)
        return {"error": f"unknown command {cmd!r}"}

    try:
        await driver.coord.default_session()
        send_line(sys.stdout, {"ready": True})
        await serve_commands(handle)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(driver.coord.close(), 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addresses", required=True)
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
