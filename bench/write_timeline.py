"""Where a write's time goes: every step of one client write on one time line, across the client
and the three node processes.

    .venv/bin/python bench/write_timeline.py [--writes 10000] [--warmup 2000]
    .venv/bin/python bench/write_timeline.py --inflight 64 [--seconds 8]

A 3-node cluster (the coordination state machine, fsync on, as ``bench_vs_etcd.py`` runs it) whose
nodes are ``timeline_node.py``: ``manage.py`` with a timestamp at the entry and exit of each step
of a write. The client writes ``cache.set`` of 100-byte values through ``AsyncCoordinator``.

- With one write in flight it matches each client call to the steps it caused (the leader's
  handling of the request, its appends, its own save, the first follower to answer: its read,
  save and answer, then the leader's commit, apply and answer) and prints the median and p90 of
  each segment in microseconds. The segments add up to the client's call, so the table shows
  what a change could win, and where (one process's Python, a hop, an fsync). The two hops
  that start when a call returns (``OVERLAPPING``: appends sent, answer written) can be
  negative: the process that the first write woke ran before the writer's call returned (four
  processes share two cores, and the leader writes one follower's append before the other's).
- With ``--inflight N`` it prints, per node, the share of the window each step took and the
  writes per synced save, and the machine's busy share from /proc/stat: whether the cluster
  waits on a core or on itself.

Nothing asserts on timings; the tracing costs about half a microsecond per step.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import key, value

from raft_node.testing.launcher import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
MACHINE = "coordination.primitives.machine.CoordinationMachine"

Events = list[tuple[int, str, int]]  # (ns, step, 0 entry | 1 exit), in time order


class Trace:
    """One node's events, searchable by time."""

    def __init__(self, path: Path) -> None:
        events: Events = []
        for line in path.read_text().splitlines():
            name, edge, ns = line.split()
            events.append((int(ns), name, int(edge)))
        events.sort()
        self.events = events
        self.times = [e[0] for e in events]

    def first(self, after: int, step: str, edge: int, before: int | None = None) -> int | None:
        """The first ``step`` entry (0) or exit (1) at or after ``after`` (and before
        ``before``), or None."""
        i = bisect.bisect_left(self.times, after)
        events = self.events
        while i < len(events):
            ns, name, e = events[i]
            if before is not None and ns > before:
                return None
            if name == step and e == edge:
                return ns
            i += 1
        return None


SEGMENTS = (
    ("call", "req", "client call -> leader handles the request (client encode, send, wake, read)"),
    ("req", "req_done", "leader: parse, validate, propose"),
    ("req_done", "send", "leader: -> appends start (Ready)"),
    ("send", "send_done", "leader: appends to both followers (encode, 2 writes)"),
    ("send_done", "f_rx", "appends sent -> first follower reads"),
    ("f_rx", "f_save", "follower: decode, step, Ready"),
    ("f_save", "f_saved", "follower: save (write + fdatasync)"),
    ("f_saved", "f_ack", "follower: -> answer sent"),
    ("f_ack", "l_rx", "answer sent -> leader reads it"),
    ("l_rx", "apply", "leader: decode, step, commit, Ready"),
    ("apply", "applied", "leader: apply"),
    ("applied", "answered", "leader: answer the client"),
    ("answered", "end", "answer written -> client call returns"),
)

# Hops measured from the end of a call whose first write may already have been read elsewhere.
OVERLAPPING = ("appends sent -> first follower reads", "answer written -> client call returns")


def write_stages(call: int, end: int, leader: Trace, followers: list[Trace]) -> dict[str, int]:
    """The instants of one write's steps, or {} when one is missing (a tick's entry between)."""
    at: dict[str, int | None] = {"call": call, "end": end}
    at["req"] = leader.first(call, "req", 0, end)
    if at["req"] is None:
        return {}
    at["req_done"] = leader.first(at["req"], "req", 1, end)
    at["send"] = leader.first(at["req"], "send", 0, end)
    if at["send"] is None:
        return {}
    at["send_done"] = leader.first(at["send"], "send", 1, end)
    at["l_save"] = leader.first(at["send"], "save", 0, end)
    at["l_saved"] = leader.first(at["l_save"] or end, "save", 1, end)
    best: tuple[int, int, int, int] | None = None
    for follower in followers:
        rx = follower.first(at["send"], "rx", 0, end)
        save = follower.first(rx, "save", 0, end) if rx else None
        saved = follower.first(save, "save", 1, end) if save else None
        ack = follower.first(saved, "send", 0, end) if saved else None
        if rx and save and saved and ack and (best is None or ack < best[3]):
            best = (rx, save, saved, ack)
    if best is None:
        return {}
    at["f_rx"], at["f_save"], at["f_saved"], at["f_ack"] = best
    at["l_rx"] = leader.first(best[3], "rx", 0, end)
    at["apply"] = leader.first(at["l_rx"] or end, "apply", 0, end)
    at["applied"] = leader.first(at["apply"] or end, "apply", 1, end)
    at["answered"] = leader.first(at["applied"] or end, "answer", 1, end)
    if any(v is None for v in at.values()):
        return {}
    return {k: v for k, v in at.items() if v is not None}


def stage_table(writes: list[tuple[int, int]], leader: Trace, followers: list[Trace]) -> str:
    """p50 and p90 of each segment over the matched writes, and its mean over the slowest 1% of
    them (by total; means add up to the total's): which steps a tail write spent its time in."""
    matched: list[dict[str, float]] = []
    for call, end in writes:
        at = write_stages(call, end, leader, followers)
        if not at:
            continue
        spent = {start + stop: (at[stop] - at[start]) / 1e3 for start, stop, _ in SEGMENTS}
        spent["leader save"] = (at["l_saved"] - at["l_save"]) / 1e3
        spent["total"] = (end - call) / 1e3
        matched.append(spent)
    head = f"{len(matched)} of {len(writes)} writes matched to their steps"
    if not matched:
        return head
    slowest = sorted(matched, key=lambda w: w["total"])[-max(1, len(matched) // 100) :]
    lines = [
        f"{head} (µs; p50 and p90 of each row, and its mean over the slowest 1%)",
        "",
        "| segment | p50 µs | p90 µs | slowest 1%: mean µs |",
        "|---|--:|--:|--:|",
    ]

    def row(label: str, name: str) -> str:
        values = sorted(w[name] for w in matched)
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        tail = statistics.fmean(w[name] for w in slowest)
        return f"| {label} | {statistics.median(values):.0f} | {p90:.0f} | {tail:.0f} |"

    for start, stop, label in SEGMENTS:
        lines.append(row(label, start + stop))
    lines.append(row("(leader: its own save, alongside the follower's)", "leader save"))
    lines.append(row("**client call, total**", "total"))
    return "\n".join(lines)


def shares_table(traces: dict[str, Trace], role: dict[str, str], window: tuple[int, int]) -> str:
    """Per node: the share of the measured window each step took (``traced steps, outermost``
    counts nested steps once), the number of calls, and their mean duration."""
    lines = ["| node | step | share of window | calls | mean µs |", "|---|---|--:|--:|--:|"]
    first, last = window
    for node, trace in traces.items():
        ev = trace.events[
            bisect.bisect_left(trace.times, first) : bisect.bisect_right(trace.times, last)
        ]
        if not ev:
            continue
        window_ns = last - first
        open_at: list[tuple[str, int]] = []
        total: Counter[str] = Counter()
        calls: Counter[str] = Counter()
        busy = 0
        outer = 0
        for ns, name, edge in ev:
            if edge == 0:
                if not open_at:
                    outer = ns
                open_at.append((name, ns))
            elif open_at:
                step, began = open_at.pop()
                total[step] += ns - began
                calls[step] += 1
                if not open_at:
                    busy += ns - outer
        label = f"{node} ({role[node]})"
        lines.append(f"| {label} | traced steps, outermost | {busy / window_ns:.0%} | | |")
        if calls["req"] and calls["save"]:
            per_save = calls["req"] / calls["save"]
            lines.append(f"| {label} | client requests per save | | {per_save:.1f} | |")
        for step, spent in total.most_common():
            mean = spent / calls[step] / 1e3
            share = spent / window_ns
            lines.append(f"| {label} | {step} | {share:.0%} | {calls[step]} | {mean:.0f} |")
    return "\n".join(lines)


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


async def drive(addresses: list[str], secret: str, args: argparse.Namespace) -> dict[str, Any]:
    from coordination.client import operations as ops
    from coordination.client.aio import AsyncCoordinator

    coord = AsyncCoordinator(addresses, secret, timeout=5.0)
    values = [value(i) for i in range(256)]
    try:
        await coord.default_session()
        for n in range(args.warmup):
            await coord.run(ops.cache_set(key(n), values[n % 256]))
        writes: list[tuple[int, int]] = []
        now = time.perf_counter_ns
        if args.inflight == 1:
            for n in range(args.writes):
                call = now()
                await coord.run(ops.cache_set(key(n), values[n % 256]))
                writes.append((call, now()))
            return {"writes": writes}
        count = 0
        stop_at = time.monotonic() + args.seconds

        async def writer(w: int) -> None:
            nonlocal count
            n = w
            while time.monotonic() < stop_at:
                await coord.run(ops.cache_set(key(n), values[n % 256]))
                n += args.inflight
                count += 1

        before, first = cpu_busy(), now()
        started = time.monotonic()
        await asyncio.gather(*(writer(w) for w in range(args.inflight)))
        elapsed = time.monotonic() - started
        after, last = cpu_busy(), now()
        busy = (after[0] - before[0]) / max(1, after[1] - before[1])
        return {"ops_per_s": count / elapsed, "machine_busy": busy, "window": (first, last)}
    finally:
        await coord.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writes", type=int, default=10_000, help="timed sequential writes")
    ap.add_argument("--warmup", type=int, default=2_000)
    ap.add_argument("--inflight", type=int, default=1, help="1: per-write steps; N: shares")
    ap.add_argument("--seconds", type=float, default=8.0, help="window with --inflight N > 1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="timeline-") as tmp:
        base = Path(tmp)
        (base / "nodes").mkdir()
        (base / "traces").mkdir()
        os.environ["RAFTSYNC_TIMELINE_DIR"] = str(base / "traces")
        settings = {"STATE_MACHINE": MACHINE, "REDIS_URL": ""}
        cluster = LocalCluster(
            base / "nodes", ROOT / "bench" / "timeline_node.py", settings=settings
        )
        try:
            cluster.start()
            leader = cluster.wait_for_leader(timeout=60)
            addresses = [f"{h}:{p}" for h, p in cluster.addresses.values()]
            result = asyncio.run(drive(addresses, cluster.secret, args))
            if cluster.leader() != leader:
                print("warning: leadership moved during the run; the table may be partial")
        finally:
            pids = {node: proc.pid for node, proc in cluster.procs.items()}
            cluster.stop()
        traces = {}
        for node, pid in pids.items():
            path = base / "traces" / f"{pid}.trace"
            if path.exists():
                traces[node] = Trace(path)
    role = {node: "leader" if node == leader else "follower" for node in traces}
    print(f"# write_timeline: commit {_commit()}, leader {leader}, load {os.getloadavg()[0]:.1f}")
    if args.inflight == 1:
        followers = [t for n, t in traces.items() if n != leader]
        print(stage_table(result["writes"], traces[leader], followers))
    else:
        print(
            f"{args.inflight} in flight: {result['ops_per_s']:,.0f} writes/s; the machine was busy"
            f" {result['machine_busy']:.0%} of the window (both cores, /proc/stat)"
        )
        print()
        print(shares_table(traces, role, result["window"]))


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
