"""The latency floor of a replicated write in Python on this machine: the same hops and syncs as
a Raft commit, with nothing else.

    .venv/bin/python bench/latency_floor.py [--writes 3000] [--dir /path/on/the/disk]

Four processes on 127.0.0.1, each an asyncio loop (uvloop when installed, as the nodes run):
a client sends one 150-byte request at a time to a "leader", which writes it to its two
"followers" and to its own preallocated file (``pwrite`` + ``fdatasync`` on its loop, as a node
does); a follower writes and syncs it the same way, then acks; the leader answers the client
once its own sync is done and one follower has acked (a majority of three). No Raft, no state
machine, no framing beyond a 4-byte length, no checks: what is left is four socket hops and the
syncs of three processes sharing one disk. A row without any sync shows the hops alone.

Why: issue 14 asks for a single client's write at 0.7x etcd's latency. This is the floor such a
design can reach in CPython here, so the bound can be compared with it rather than argued
about: if the floor is above 0.7x etcd's p50 (``make bench-etcd`` measures etcd's), no
optimisation of raftsync's Python reaches the bound on this machine. Nothing asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAYLOAD = 150
PREALLOCATE = 64 * 1024 * 1024


def use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


class Disk:
    """A preallocated file written at a moving offset and synced, as the log's active segment."""

    def __init__(self, path: Path, sync: bool) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.posix_fallocate(self.fd, 0, PREALLOCATE)
        os.fsync(self.fd)
        self.offset, self.sync = 0, sync

    def write(self, data: bytes) -> None:
        if self.offset + len(data) > PREALLOCATE:
            self.offset = 0
        os.pwrite(self.fd, data, self.offset)
        self.offset += len(data)
        if self.sync:
            os.fdatasync(self.fd)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(4), "little")
    return await reader.readexactly(size)


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


async def follower(port: int, disk: Disk) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        while True:
            data = await read_frame(reader)
            disk.write(data)
            writer.write(frame(data[:8]))  # the ack names the write: its sequence number

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    await server.serve_forever()


async def leader(port: int, followers: list[int], disk: Disk) -> None:
    """Each write gets a sequence number; the answer waits for an ack *of that write* from
    either follower (a late ack of an earlier write must not count: that would be no majority)."""
    loop = asyncio.get_running_loop()
    peers = [await asyncio.open_connection("127.0.0.1", p) for p in followers]
    waiting: dict[int, asyncio.Future[None]] = {}

    async def collect(reader: asyncio.StreamReader) -> None:
        while True:
            fut = waiting.get(int.from_bytes(await read_frame(reader), "little"))
            if fut is not None and not fut.done():
                fut.set_result(None)

    readers = [loop.create_task(collect(peer_reader)) for peer_reader, _ in peers]
    seq = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seq
        while True:
            data = await read_frame(reader)
            seq += 1
            acked = waiting[seq] = loop.create_future()
            entry = seq.to_bytes(8, "little") + data
            for _, peer_writer in peers:
                peer_writer.write(frame(entry))  # replicate first, then sync our own copy
            disk.write(entry)
            await acked  # our own copy is synced: one follower's makes a majority
            del waiting[seq]
            writer.write(frame(b"ok"))

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    await asyncio.gather(server.serve_forever(), *readers)


async def client(port: int, writes: int, warmup: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = os.urandom(PAYLOAD)
    samples = []
    for n in range(warmup + writes):
        start = time.perf_counter()
        writer.write(frame(body))
        await read_frame(reader)
        if n >= warmup:
            samples.append(time.perf_counter() - start)
    writer.close()
    return samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def run_row(args: argparse.Namespace, sync: bool, work: Path) -> list[float]:
    ports = [free_port() for _ in range(3)]
    me = [sys.executable, __file__, "--sync" if sync else "--no-sync"]
    procs = []
    try:
        for i, port in enumerate(ports[1:]):
            role = ["--role", "follower", "--port", str(port), "--dir", str(work / f"f{i}")]
            procs.append(subprocess.Popen([*me, *role], stderr=subprocess.DEVNULL))
            wait_listening(port)
        followers = ",".join(map(str, ports[1:]))
        role = ["--role", "leader", "--port", str(ports[0]), "--followers", followers]
        leader_cmd = [*me, *role, "--dir", str(work / "leader")]
        procs.append(subprocess.Popen(leader_cmd, stderr=subprocess.DEVNULL))
        wait_listening(ports[0])
        if args.client_loop == "uvloop":
            import uvloop

            return uvloop.run(client(ports[0], args.writes, args.warmup))
        return asyncio.run(client(ports[0], args.writes, args.warmup))
    finally:
        for p in procs:
            p.kill()
            p.wait()


def describe(name: str, samples: list[float]) -> str:
    s = sorted(samples)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, round(p / 100 * len(s)) - 1)] * 1000

    return (
        f"| {name} | {statistics.median(s) * 1000:.3f} | {pct(95):.3f} | {pct(99):.3f}"
        f" | {len(s) / sum(s):,.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=["leader", "follower"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--followers", default="")
    ap.add_argument("--sync", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--dir", type=Path, help="where the files go (default: a temp dir in /work")
    ap.add_argument("--writes", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument(
        "--client-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the client's loop (default asyncio: what bench_vs_etcd's clients run on)",
    )
    args = ap.parse_args()
    if args.role is not None:
        use_uvloop()
        args.dir.mkdir(parents=True, exist_ok=True)
        disk = Disk(args.dir / "log", args.sync)
        if args.role == "follower":
            asyncio.run(follower(args.port, disk))
        else:
            asyncio.run(leader(args.port, [int(p) for p in args.followers.split(",")], disk))
        return
    parent = args.dir or Path(__file__).resolve().parent.parent / "var"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="latency-floor-", dir=parent))
    try:
        servers = "uvloop" if _has_uvloop() else "asyncio"
        print(
            f"servers on {servers}, client on {args.client_loop}, CPython"
            f" {sys.version.split()[0]}, files in {work}, load average"
            f" {os.getloadavg()[0]:.2f}; {args.writes} sequential writes per row"
        )
        print("| row | p50 ms | p95 ms | p99 ms | writes/s |")
        print("|---|--:|--:|--:|--:|")
        for sync in (True, False, True):
            name = "4 hops + 3 fdatasyncs (leader + 2 followers)" if sync else "4 hops, no sync"
            print(describe(name, run_row(args, sync, work / f"{sync}-{time.monotonic_ns()}")))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
