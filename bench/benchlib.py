"""Helpers shared by the consensus benchmark's processes (``bench_raft.py``, ``raft_load.py``,
``pysyncobj_peer.py``): payloads, latency summaries and a JSON-lines control channel.

Every process of the benchmark uses ``time.monotonic()`` for cross-process instants (one
system-wide CLOCK_MONOTONIC on Linux) and ``time.perf_counter_ns()`` for in-process latencies.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

KEY_BYTES = 16
VALUE_BYTES = 100
KEYSPACE = 10_000  # distinct keys cycled through, so the state (and snapshots) stay small


def key(n: int) -> str:
    """A 16-byte ASCII key."""
    return f"k{n % KEYSPACE:0{KEY_BYTES - 1}d}"


def value(seed: int = 0) -> bytes:
    """A 100-byte value (fixed per seed, so generating it costs nothing per operation)."""
    return (os.urandom(8) + bytes([seed % 256]) * VALUE_BYTES)[:VALUE_BYTES]


def percentile(sorted_values: list[Any], p: int) -> float:
    """Nearest-rank percentile (rank = ceil(p/100 * n)) of a sorted list; nan if empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), -(-p * len(sorted_values) // 100)))
    return float(sorted_values[rank - 1])


def summarize_latencies(latencies_ns: list[int], elapsed_s: float, errors: int) -> dict[str, Any]:
    """ops/s and latency percentiles (ms) from per-operation samples."""
    s = sorted(latencies_ns)
    ms = 1e6
    return {
        "ops": len(s),
        "elapsed_s": elapsed_s,
        "ops_per_s": len(s) / elapsed_s if elapsed_s > 0 else 0.0,
        "p50_ms": percentile(s, 50) / ms,
        "p95_ms": percentile(s, 95) / ms,
        "p99_ms": percentile(s, 99) / ms,
        "max_ms": (s[-1] / ms) if s else float("nan"),
        "errors": errors,
    }


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``), or None (gone).

    Read from /proc rather than ``os.times()`` so one helper serves both a driver's own process
    and the server processes it loads, counted the same way (all threads, 1/CLK_TCK steps).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_rss_kb(pid: int) -> int | None:
    """Resident set size of a process in KiB (``VmRSS`` of ``/proc/<pid>/status``), or None
    (gone): what the kernel holds for it, allocator slack included, as an operator sees it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def log_events(path: Path, name: str) -> list[dict[str, str]]:
    """The ``key=value`` fields of every ``event=<name>`` line of a node log, oldest first
    (``snapshot_taken`` carries ``index``, ``bytes``, ``ms``, ``serialize_ms``), so benches
    read what the node measured itself instead of timing it from outside."""
    marker = f"event={name} "
    found = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        at = line.find(marker)
        if at >= 0:
            found.append(
                dict(f.split("=", 1) for f in line[at + len(marker) :].split() if "=" in f)
            )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- JSON-lines control channel ------------------------------------------------------------------


def send_line(stream: Any, obj: Any) -> None:
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


async def serve_commands(handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
    """A load driver's side of ``Controlled``: one JSON command per stdin line, answered on
    stdout with ``await handle(cmd)`` (an exception answers ``{"error": ...}``) until stdin
    closes."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        try:
            answer = await handle(cmd)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        send_line(sys.stdout, answer)


class Controlled:
    """A child process driven by JSON lines on its stdin/stdout, with timeouts on every answer.

    A reader thread moves stdout lines into a queue, so ``request`` never blocks forever on a
    child that hangs or dies.
    """

    def __init__(self, argv: list[str], log_path: str, env: dict[str, str] | None = None) -> None:
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        send_line(self.proc.stdin, obj)

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"pid {self.proc.pid}: no answer within {timeout:.0f}s") from None
        if line is None:
            self._lines.put(None)
            raise ConnectionError(f"pid {self.proc.pid} exited (rc={self.proc.poll()})")
        answer = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"pid {self.proc.pid}: {answer['error']}")
        return answer

    def request(self, obj: Any, timeout: float) -> dict[str, Any]:
        self.send(obj)
        return self.receive(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, grace: float = 5.0) -> None:
        """Ask to quit (stdin EOF), then SIGKILL after ``grace`` seconds."""
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
