"""Load driver of ``bench_vs_etcd.py``: one process per system, driven by JSON lines on stdin
(``benchlib.Controlled``), so each system's client runs in a process of its own and its CPU per
operation can be read from /proc without the other's mixed in.

    python bench/etcd_load.py --system raftsync|etcd --params JSON

Commands (one JSON object per line, one answer line each):

- ``{"cmd": "run", "workload": W, "concurrency": N, "warmup": S, "seconds": S, "pids": [...]}``:
  N coroutines repeat workload W until the window closes. The answer has ops/s and latency
  percentiles (``benchlib.summarize_latencies``), every latency sample of the window in µs (for
  the CDF), and the CPU seconds of this process and of the server ``pids`` *inside the window*
  (read at its start and end, so warm-up and connection setup are not charged).
- ``{"cmd": "bg", "on": true|false}``: a background writer (4 in flight, errors ignored) for the
  failover trials, so the leader dies with writes in flight.

Workloads. ``write``: a 100-byte value under a 16-byte key (10,000 keys cycled); raftsync:
``AsyncCoordinator.run(ops.cache_set(...))`` (the coordination state machine's cache); etcd:
``aetcd.Client.put``. ``lock``: one acquire + release of an uncontended lock; raftsync: ``async
with coord.lock(name)`` on the coordinator's session; etcd: a txn that creates the key under a
lease granted before the window (the session's twin) if it does not exist, then a txn that
deletes it if it still holds our value (aetcd's ``Lock`` recipe, without the lease grant it does
per acquire). ``v3lock`` (etcd only): etcd's own lock service, ``v3lockpb.Lock/Lock`` with that
lease, then ``Unlock``. ``raw`` (raftsync only): ``AsyncRaftClient.propose`` of the same
``cache.set`` command with about check perf's sizes (200-byte keys, the cache's limit, against its
256; 1 KiB values), the raftsync figure next to etcd's Go load tool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import KEYSPACE, key, send_line, serve_commands, value
from prim_common import Window, closed_loop

CLIENT_TIMEOUT = 5.0
BG_CONCURRENCY = 4
# etcdctl check perf's sizes are 256-byte keys and 1 KiB values; raftsync's cache refuses keys
# over 200 bytes (``limit_exceeded``), so its capacity run uses the longest key it accepts.
RAW_KEY = 200
RAW_VALUE = 1024


class Side:
    """One system's client: the operations every workload is made of."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, n: int) -> None:
        raise NotImplementedError

    async def prepare_lock(self, workload: str) -> None: ...

    async def end_lock(self) -> None: ...

    async def lock_pair(self, workload: str, n: int) -> None:
        raise NotImplementedError


class RaftsyncSide(Side):
    def __init__(self, p: dict[str, Any]) -> None:
        from coordination.client.aio import AsyncCoordinator
        from raft_node.client import AsyncRaftClient

        self.coord = AsyncCoordinator(p["addresses"], p["secret"], timeout=CLIENT_TIMEOUT)
        self.raw = AsyncRaftClient(p["addresses"], p["secret"], timeout=CLIENT_TIMEOUT)
        self.values = [value(i) for i in range(256)]
        self.raw_keys = [f"{i:0{RAW_KEY}d}" for i in range(KEYSPACE)]
        self.raw_value = os.urandom(RAW_VALUE)

    async def open(self) -> None:
        await self.coord.default_session()  # the session exists before any clock starts

    async def close(self) -> None:
        await self.coord.close()
        await self.raw.close()

    async def write(self, n: int) -> None:
        from coordination.client import operations as ops

        await self.coord.run(ops.cache_set(key(n), self.values[n % 256]))

    async def raw_write(self, n: int) -> None:
        from coordination.primitives import commands as c

        body = c.cache_set(self.raw_keys[n % KEYSPACE], self.raw_value, None)
        await self.raw.propose(body)

    async def lock_pair(self, workload: str, n: int) -> None:
        async with self.coord.lock("bench-lock"):
            pass


class EtcdSide(Side):
    def __init__(self, p: dict[str, Any]) -> None:
        import aetcd

        host, port = p["endpoint"].rsplit(":", 1)
        self.client = aetcd.Client(host, int(port), timeout=CLIENT_TIMEOUT)
        self.values = [value(i) for i in range(256)]
        self.keys = [key(i).encode() for i in range(KEYSPACE)]
        self.lease: Any = None
        self.me = uuid.uuid4().bytes

    async def open(self) -> None:
        await self.client.connect()
        await self.client.put(b"bench-warm", b"x")  # channel connected before any clock

    async def close(self) -> None:
        await self.client.close()

    async def write(self, n: int) -> None:
        await self.client.put(self.keys[n % KEYSPACE], self.values[n % 256])

    async def prepare_lock(self, workload: str) -> None:
        self.lease = await self.client.lease(60)  # outlives any window; revoked in end_lock

    async def end_lock(self) -> None:
        if self.lease is not None:
            with contextlib.suppress(Exception):
                await self.client.revoke_lease(self.lease.id)
            self.lease = None

    async def lock_pair(self, workload: str, n: int) -> None:
        if workload == "v3lock":
            held = await self._v3(
                "Lock", _field(1, b"bench-v3lock") + _varint_field(2, self.lease.id)
            )
            await self._v3("Unlock", _field(1, _bytes_field(held, 2)))
            return
        k, tx = b"bench-lock", self.client.transactions
        ok, _ = await self.client.transaction(
            compare=[tx.create(k) == 0],
            success=[tx.put(k, self.me, lease=self.lease)],
            failure=[tx.get(k)],
        )
        if not ok:
            raise RuntimeError("etcd lock busy (nothing else takes it: a leftover hold?)")
        ok, _ = await self.client.transaction(
            compare=[tx.value(k) == self.me], success=[tx.delete(k)], failure=[]
        )
        if not ok:
            raise RuntimeError("etcd lock release found another holder")

    async def _v3(self, method: str, body: bytes) -> bytes:
        """One unary call of etcd's ``v3lockpb.Lock`` service. aetcd ships no stubs for it, so
        the two tiny messages are protobuf-encoded by hand (below) on aetcd's own channel."""
        call = self.client.channel.unary_unary(
            f"/v3lockpb.Lock/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        return await call(body, timeout=CLIENT_TIMEOUT)


# -- protobuf wire format, just enough for LockRequest/LockResponse/UnlockRequest ----------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf encodes it
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint_field(number: int, n: int) -> bytes:
    return _varint(number << 3) + _varint(n)


def _bytes_field(message: bytes, number: int) -> bytes:
    """The first length-delimited field ``number`` of a protobuf message (LockResponse.key)."""
    i = 0
    while i < len(message):
        tag, i = _read_varint(message, i)
        kind = tag & 7
        if kind == 0:
            _, i = _read_varint(message, i)
        elif kind == 2:
            size, i = _read_varint(message, i)
            if tag >> 3 == number:
                return message[i : i + size]
            i += size
        else:
            raise ValueError(f"unexpected protobuf wire type {kind}")
    raise ValueError(f"field {number} not in the message")


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


# -- measurement ----------------------------------------------------------------------------------


async def measure(side: Side, cmd: dict[str, Any]) -> dict[str, Any]:
    workload, conc = cmd["workload"], int(cmd["concurrency"])
    pids = [int(p) for p in cmd.get("pids", [])]
    if workload in ("lock", "v3lock"):
        await side.prepare_lock(workload)
    window = Window(cmd["warmup"], cmd["seconds"])
    if workload == "write":
        op = side.write
    elif workload == "raw":
        op = side.raw_write  # type: ignore[attr-defined]
    else:

        async def op(n: int) -> None:
            await side.lock_pair(workload, n)

    try:
        out, samples = await closed_loop(op, conc, window, pids)
    finally:
        if workload in ("lock", "v3lock"):
            await side.end_lock()
    out["lat_us"] = [x // 1000 for x in samples.latencies]
    return out


async def background(side: Side, stop: asyncio.Event) -> None:
    """Writes kept in flight until ``stop``; failures (the leader just died) are expected."""

    async def one(i: int) -> None:
        n = i * 104729
        while not stop.is_set():
            n += 1
            try:
                await asyncio.wait_for(side.write(n), 1.0)
            except Exception:
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one(i) for i in range(BG_CONCURRENCY)))


async def amain(args: argparse.Namespace) -> None:
    params = json.loads(args.params)
    if args.system == "raftsync":
        params["secret"] = os.environ["RAFTSYNC_BENCH_SECRET"]
        side: Side = RaftsyncSide(params)
    else:
        side = EtcdSide(params)
    await side.open()
    bg: tuple[asyncio.Event, asyncio.Task[None]] | None = None

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        nonlocal bg
        if cmd["cmd"] == "run":
            return await measure(side, cmd)
        if cmd["cmd"] == "bg":
            if cmd["on"] and bg is None:
                stop = asyncio.Event()
                bg = (stop, asyncio.create_task(background(side, stop)))
            elif not cmd["on"] and bg is not None:
                bg[0].set()
                await asyncio.wait_for(bg[1], 10)
                bg = None
            return {"bg": bool(bg)}
        return {"error": f"unknown command {cmd!r}"}

    try:
        send_line(sys.stdout, {"ready": True})
        await serve_commands(handle)
    finally:
        if bg is not None:
            bg[0].set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bg[1], 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(side.close(), 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", choices=["raftsync", "etcd"], required=True)
    ap.add_argument("--params", required=True)
    t0 = time.monotonic()
    asyncio.run(amain(ap.parse_args()))
    print(f"driver exited after {time.monotonic() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
