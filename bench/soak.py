"""Soak: a mixed workload on a real 3-node cluster for minutes, with a fault every ``--fault-every``
seconds, reporting per minute what would show a leak: each node's RSS, open file descriptors and
disk use (log segments, snapshots), and the latency of each kind of operation.

    python bench/soak.py                          # 10 minutes, a fault every 30 s
    python bench/soak.py --minutes 1 --fault-every 15 --out /tmp/soak.md   # the CI short form

Workload (one thread each, back to back): cache writes over 2,000 keys of 100 B, lock acquire +
release over 10 locks on one session, queue put + get + ack. Faults, in turn: kill -9 a random
node (restarted 3 s later), SIGSTOP the leader for 2 s, kill -9 the leader (restarted 3 s later).
Nodes snapshot every ``SNAPSHOT_EVERY`` entries, so the log is compacted as it grows.

The bounds (stated here, per node): after a warm-up (the first 30% of the minutes, at least one:
the state fills up then, 2,000 cache keys and the last 50,000 changes ``coord.watch`` keeps), the
last minute's RSS is less than ``RSS_BOUND_MB`` above the first minute after the warm-up, the
descriptors at most ``FD_BOUND`` above it, and disk stays under ``DISK_BOUND_MB``.
The report goes to ``--out`` (default ``bench/results/soak-latest.md``) and the
process exits 1 if a bound or the error budget is broken.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import percentile  # noqa: E402

from coordination.client import Coordinator  # noqa: E402
from coordination.primitives import commands as c  # noqa: E402
from raft_node.client import RaftError  # noqa: E402
from raft_node.testing.launcher import LocalCluster  # noqa: E402

MACHINE = "coordination.primitives.machine.CoordinationMachine"
SNAPSHOT_EVERY = 5_000
RSS_BOUND_MB = 40.0
FD_BOUND = 10
DISK_BOUND_MB = 200.0
ERROR_BUDGET = 0.02  # failed operations (all during faults), as a share of all


class Workload:
    """The three client threads; latencies are kept per (minute, kind)."""

    def __init__(self, coord: Coordinator, started: float) -> None:
        self.coord, self.started = coord, started
        self.samples: dict[tuple[int, str], list[float]] = defaultdict(list)
        self.errors: dict[tuple[int, str], int] = defaultdict(int)
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(kind, fn), daemon=True)
            for kind, fn in (("cache", self._cache), ("lock", self._lock), ("queue", self._queue))
        ]
        self._session = coord.session(ttl=5.0, label="soak")
        self._jobs = coord.queue("soak-jobs")

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(30)

    def _loop(self, kind: str, op: Any) -> None:
        i = 0
        while not self.halt.is_set():
            began = time.monotonic()
            minute = int((began - self.started) // 60)
            try:
                op(i)
                self.samples[(minute, kind)].append((time.monotonic() - began) * 1000)
            except (RaftError, OSError):
                self.errors[(minute, kind)] += 1
                time.sleep(0.05)
            i += 1

    def _cache(self, i: int) -> None:
        self.coord.propose(c.cache_set(f"soak:{i % 2000}", os.urandom(100), None))

    def _lock(self, i: int) -> None:
        if self._session.lost:
            self._session = self.coord.session(ttl=5.0, label="soak")
        lock = self.coord.lock(f"soak:lock:{i % 10}", session=self._session)
        if lock.acquire(wait=5):
            lock.release()

    def _queue(self, i: int) -> None:
        self._jobs.put(f"job {i}".encode())
        message = self._jobs.get(wait=5, session=self._session)
        if message is not None:
            message.ack()


def node_sample(cluster: LocalCluster, node: str) -> dict[str, float] | None:
    proc = cluster.procs.get(node)
    if proc is None or proc.poll() is not None:
        return None
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
        )
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    except (OSError, StopIteration):
        return None
    disk = sum(f.stat().st_size for f in (cluster.base_dir / node).rglob("*") if f.is_file())
    return {"rss_mb": rss_kb / 1024, "fds": fds, "disk_mb": disk / 1e6}


def fault(cluster: LocalCluster, n: int, rng: random.Random) -> str:
    leader = cluster.leader() or rng.choice(cluster.ids)
    kind = n % 3
    if kind == 1:
        cluster.pause(leader)
        time.sleep(2.0)
        cluster.resume(leader)
        return f"SIGSTOP {leader} 2 s"
    victim = leader if kind == 2 else rng.choice(cluster.ids)
    cluster.kill(victim)
    time.sleep(3.0)
    cluster.start_node(victim)
    return f"kill -9 {victim}{' (leader)' if victim == leader else ''}, restarted after 3 s"


def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="raftsync-soak-"))
    cluster = LocalCluster(
        base,
        ROOT / "manage.py",
        settings={"STATE_MACHINE": MACHINE, "SNAPSHOT_EVERY": SNAPSHOT_EVERY, "SNAPSHOT_KEEP": 500},
    )
    cluster.start()
    try:
        cluster.wait_for_leader(timeout=60)
        coord = Coordinator(list(cluster.addresses.values()), cluster.secret, timeout=10)
        started = time.monotonic()
        load = Workload(coord, started)
        load.start()
        rng = random.Random(args.seed)
        faults: list[str] = []
        minutes: dict[int, dict[str, dict[str, float]]] = {}
        next_fault = started + args.fault_every
        end = started + args.minutes * 60
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_fault:
                faults.append(f"{now - started:5.0f} s: {fault(cluster, len(faults), rng)}")
                next_fault = now + args.fault_every
            minute = int((time.monotonic() - started) // 60)
            for node in cluster.ids:
                sample = node_sample(cluster, node)
                if sample is not None:  # keep the latest sample of each minute
                    minutes.setdefault(minute, {})[node] = sample
            time.sleep(1.0)
        load.stop()
        for node in cluster.ids:
            if not cluster.alive(node):
                cluster.start_node(node)
        report, ok = _report(args, load, minutes, faults)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(report)
        return 0 if ok else 1
    finally:
        cluster.stop()


def _report(
    args: argparse.Namespace,
    load: Workload,
    minutes: dict[int, dict[str, dict[str, float]]],
    faults: list[str],
) -> tuple[str, bool]:
    lines = [
        f"# Soak: {args.minutes} min, a fault every {args.fault_every:.0f} s",
        "",
        f"Command: `python bench/soak.py --minutes {args.minutes} --fault-every "
        f"{args.fault_every:.0f}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| minute | node | RSS MB | fds | disk MB | cache p50/p99 ms | lock p50/p99 ms | "
        "queue p50/p99 ms | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for minute in sorted(minutes):
        lat = []
        for kind in ("cache", "lock", "queue"):
            xs = sorted(load.samples.get((minute, kind), []))
            lat.append(f"{percentile(xs, 50):.1f} / {percentile(xs, 99):.1f}")
        errors = sum(load.errors.get((minute, k), 0) for k in ("cache", "lock", "queue"))
        for node, s in sorted(minutes[minute].items()):
            lines.append(
                f"| {minute} | {node} | {s['rss_mb']:.1f} | {s['fds']:.0f} | {s['disk_mb']:.1f} | "
                + " | ".join(lat)
                + f" | {errors} |"
            )
    total = sum(len(v) for v in load.samples.values())
    failed = sum(load.errors.values())
    checks = _bounds(minutes)
    checks.append(
        (
            f"failed operations {failed} of {total + failed} <= {ERROR_BUDGET:.0%}",
            failed <= ERROR_BUDGET * (total + failed),
        )
    )
    lines += ["", "Faults:", "", *[f"- {f}" for f in faults], "", "Bounds:", ""]
    lines += [f"- {'ok  ' if ok else 'FAIL'} {what}" for what, ok in checks]
    return "\n".join(lines) + "\n", all(ok for _, ok in checks)


def _bounds(minutes: dict[int, dict[str, dict[str, float]]]) -> list[tuple[str, bool]]:
    """Per node, the last minute against the first one after the warm-up."""
    checks: list[tuple[str, bool]] = []
    if len(minutes) < 2:
        return checks
    order = sorted(minutes)
    warm_up = max(1, int(len(order) * 0.3))
    first, last = minutes[order[min(warm_up, len(order) - 1)]], minutes[order[-1]]
    for node in sorted(set(first) & set(last)):
        grew = last[node]["rss_mb"] - first[node]["rss_mb"]
        fds = last[node]["fds"] - first[node]["fds"]
        checks.append((f"{node} RSS grew {grew:+.1f} MB < {RSS_BOUND_MB:.0f}", grew < RSS_BOUND_MB))
        checks.append((f"{node} descriptors {fds:+.0f} <= {FD_BOUND}", fds <= FD_BOUND))
        disk = last[node]["disk_mb"]
        checks.append((f"{node} disk {disk:.1f} MB < {DISK_BOUND_MB:.0f}", disk < DISK_BOUND_MB))
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fault-every", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak-latest.md"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(run(ap.parse_args()))


if __name__ == "__main__":
    main()
