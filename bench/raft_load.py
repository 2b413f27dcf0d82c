"""Load generator for a raftsync cluster: one ``AsyncRaftClient``, N coroutines, each doing
sequential ``propose(put(key16B, value100B))``. Started by ``bench_raft.py`` as a separate
process so the client's CPU is not the orchestrator's.

    raft_load.py --addresses h:p,h:p,h:p measure --concurrency N --warmup s --seconds s
        runs, then prints one JSON line: ops/s and latency percentiles of the proposals that
        completed inside the measurement window (after the warm-up)
    raft_load.py --addresses ... background --concurrency N
        the failover benchmark's background writer, controlled by JSON lines on stdin:
        {"cmd": "run"} / {"cmd": "pause"} (answers once in-flight writes finished) / EOF = exit

The cluster secret comes from the environment variable ``RAFTSYNC_BENCH_SECRET``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import key, summarize_latencies, value

from raft_node.client import AsyncRaftClient, RaftError
from raft_node.kvstore import put


def bodies(seed: int, count: int = 4096) -> list[bytes]:
    """Pre-encoded commands, cycled through (the command encoding is not what we measure)."""
    vals = [value(seed + i) for i in range(16)]
    return [put(key(seed * count + i), vals[i % len(vals)]) for i in range(count)]


async def measure(client: AsyncRaftClient, concurrency: int, warmup: float, seconds: float) -> dict:
    cmds = bodies(1)
    start = time.perf_counter_ns() + int(warmup * 1e9)
    end = start + int(seconds * 1e9)
    latencies: list[int] = []
    errors = [0]

    async def worker(w: int) -> None:
        n = w * 7919
        while True:
            n += 1
            t0 = time.perf_counter_ns()
            if t0 >= end:
                return
            try:
                await client.propose(cmds[n % len(cmds)])
            except RaftError:
                if start <= time.perf_counter_ns() <= end:
                    errors[0] += 1
                await asyncio.sleep(0.01)
                continue
            t1 = time.perf_counter_ns()
            if start <= t1 <= end:
                latencies.append(t1 - t0)

    await asyncio.wait_for(
        asyncio.gather(*(worker(w) for w in range(concurrency))),
        timeout=warmup + seconds + 3 * client.timeout,
    )
    result = summarize_latencies(latencies, seconds, errors[0])
    result["concurrency"] = concurrency
    return result


async def background(client: AsyncRaftClient, concurrency: int) -> None:
    """Writes while running; stdin commands pause/resume it; EOF ends it."""
    cmds = bodies(2)
    running = asyncio.Event()
    inflight = [0]
    stats = {"ok": 0, "errors": 0}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def worker(w: int) -> None:
        n = w * 7919
        while True:
            await running.wait()
            n += 1
            inflight[0] += 1
            try:
                await client.propose(cmds[n % len(cmds)])
                stats["ok"] += 1
            except RaftError:
                stats["errors"] += 1
                await asyncio.sleep(0.005)
            finally:
                inflight[0] -= 1

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]

    def answer(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line).get("cmd")
            if cmd == "run":
                running.set()
                answer({"ok": True, **stats})
            elif cmd == "pause":
                running.clear()
                deadline = time.monotonic() + 2 * client.timeout
                while inflight[0] and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                answer({"ok": True, "inflight": inflight[0], **stats})
            else:
                answer({"error": f"unknown command {cmd!r}"})
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def amain(args: argparse.Namespace) -> None:
    secret = os.environ["RAFTSYNC_BENCH_SECRET"]
    client = AsyncRaftClient(args.addresses, secret, timeout=args.timeout)
    try:
        if args.mode == "measure":
            result = await measure(client, args.concurrency, args.warmup, args.seconds)
            print(json.dumps(result), flush=True)
        else:
            await background(client, args.concurrency)
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addresses", required=True, help="host:port,host:port,...")
    ap.add_argument("--timeout", type=float, default=5.0, help="client deadline per proposal")
    sub = ap.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--concurrency", type=int, required=True)
    m.add_argument("--warmup", type=float, default=1.0)
    m.add_argument("--seconds", type=float, default=5.0)
    b = sub.add_parser("background")
    b.add_argument("--concurrency", type=int, default=4)
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
