"""Measurement helpers shared by the primitives benchmark's load drivers (``prim_raftsync.py``,
``prim_redis.py``): measurement windows, thread runners and payloads.

A scenario runs its workers from ``Window.t0`` until ``Window.end``; an operation counts when
it *completes* inside ``[start, end]`` (after the warm-up), like ``raft_load.py``. Latencies are
``time.perf_counter_ns()`` differences, summarized with ``benchlib.summarize_latencies``.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchlib import cpu_seconds, summarize_latencies

PAYLOAD_BYTES = 100
_STAMP = struct.Struct(">q")


def now() -> int:
    return time.perf_counter_ns()


class Window:
    """Warm-up then a measured window, in ``perf_counter_ns`` time, starting now."""

    def __init__(self, warmup: float, seconds: float) -> None:
        self.seconds = seconds
        self.cpu0 = time.process_time()  # this process, all threads
        self.t0 = now()
        self.start = self.t0 + int(warmup * 1e9)
        self.end = self.start + int(seconds * 1e9)

    def over(self, t: int | None = None) -> bool:
        return (now() if t is None else t) >= self.end

    def inside(self, t: int) -> bool:
        return self.start <= t <= self.end


class Samples:
    """Latencies and counters of one scenario (appends are atomic under the GIL)."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.latencies: list[int] = []
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.counters: dict[str, int] = {}

    def done(self, t0: int, t1: int | None = None) -> None:
        t1 = now() if t1 is None else t1
        if self.window.inside(t1):
            self.latencies.append(t1 - t0)

    def error(self, exc: BaseException) -> None:
        if self.window.inside(now()):
            self.errors += 1
        kind = type(exc).__name__
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def summary(self, elapsed: float | None = None, **extra: Any) -> dict[str, Any]:
        out = summarize_latencies(
            self.latencies, self.window.seconds if elapsed is None else elapsed, self.errors
        )
        wall = (now() - self.window.t0) / 1e9
        if wall > 0:  # the driver's own CPU use over the phase (warm-up included)
            out["driver_cpu_pct"] = round(100 * (time.process_time() - self.window.cpu0) / wall)
        if self.error_kinds:
            out["error_kinds"] = self.error_kinds
        out.update(self.counters)
        out.update(extra)
        return out


async def closed_loop(
    op: Callable[[int], Awaitable[Any]],
    concurrency: int,
    window: Window,
    pids: list[int],
) -> tuple[dict[str, Any], Samples]:
    """``concurrency`` asyncio workers, each awaiting ``op(n)`` back to back until the window
    ends (a failed call is counted and retried after 10 ms); the summary, with this process's
    and ``pids``' CPU over the measured part of the window (``client_cpu_s``, ``server_cpu_s``
    and both per operation), and the samples. Shared by ``etcd_load.py`` and
    ``growth_load.py``, so both systems and every growth step are measured the same way."""
    samples = Samples(window)
    cpu: dict[str, float] = {}

    def read_cpu(at: str) -> None:
        cpu[f"client{at}"] = cpu_seconds(os.getpid()) or 0.0
        cpu[f"server{at}"] = sum(cpu_seconds(p) or 0.0 for p in pids)

    async def sampler() -> None:
        await asyncio.sleep(max(0.0, (window.start - now()) / 1e9))
        read_cpu("0")
        await asyncio.sleep(max(0.0, (window.end - now()) / 1e9))
        read_cpu("1")

    async def worker(i: int) -> None:
        n = i * 7919
        while not window.over():
            n += 1
            t0 = now()
            try:
                await op(n)
            except Exception as exc:
                samples.error(exc)
                await asyncio.sleep(0.01)
                continue
            samples.done(t0)

    await asyncio.gather(sampler(), *(worker(i) for i in range(concurrency)))
    out = samples.summary()
    ops = out["ops"]
    for side in ("client", "server"):
        spent = cpu[f"{side}1"] - cpu[f"{side}0"]
        out[f"{side}_cpu_s"] = spent
        out[f"{side}_cpu_us_per_op"] = 1e6 * spent / ops if ops else None
    return out, samples


class Holders:
    """Who took a contended lock: acquisitions per worker, and handoffs (acquisitions by a
    different worker than the previous holder). ``took`` runs while the lock is held, so the
    lock itself serializes the updates."""

    def __init__(self, workers: int, window: Window) -> None:
        self.window = window
        self.per_worker = [0] * workers
        self.handoffs = 0
        self.last: int | None = None

    def took(self, worker: int, t1: int) -> None:
        if self.window.inside(t1):
            self.per_worker[worker] += 1
            if self.last is not None and self.last != worker:
                self.handoffs += 1
        self.last = worker

    def summary(self) -> dict[str, Any]:
        acquires = sum(self.per_worker)
        return {
            "acquires_per_s": acquires / self.window.seconds,
            "handoffs": self.handoffs,
            "handoffs_per_s": self.handoffs / self.window.seconds,
            "acquires_per_worker": self.per_worker,
        }


def run_threads(count: int, target: Callable[[int], None], timeout: float) -> None:
    """Run ``target(i)`` in ``count`` daemon threads; raise if any is still running after
    ``timeout`` (a daemon thread cannot outlive the process) or raised."""
    failures: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported to the caller below
            failures.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        raise TimeoutError(f"{stuck} of {count} worker threads still running after {timeout:.0f}s")
    if failures:
        raise failures[0]


def payload(size: int = PAYLOAD_BYTES) -> bytes:
    """A ``size``-byte message whose first 8 bytes carry its send time (``perf_counter_ns``)."""
    return _STAMP.pack(now()) + b"x" * (size - _STAMP.size)


def cache_value(i: int) -> bytes:
    """A 100-byte cache value, the same for both systems."""
    return (b"%08d" % i).ljust(PAYLOAD_BYTES, b"v")


def sent_at(message: bytes) -> int:
    return _STAMP.unpack_from(message)[0]


def guarded(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one phase; a failure becomes ``{"error": ...}`` so the other phases still run."""
    try:
        return fn(*args)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
