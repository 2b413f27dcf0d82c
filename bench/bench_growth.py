"""How cost grows with the state: throughput and p99 of cache writes, reads, lock pairs and queue
cycles on a real 3-node cluster (fsync on, default timing) as the number of keys, the number of
queued messages and the value size grow; each node's RSS, the memory per key and the snapshot
time and size at each key count.

    .venv/bin/python bench/bench_growth.py [--quick]    (or: make bench-growth)

One cluster (``LocalCluster``, the coordination state machine, no Redis mirror, the node's own
``SNAPSHOT_EVERY``) grows through the run, measured at each step:

1. **Start.** 1,000 warm-up keys are written over and over until the watch history (the last
   ``history.MAX_EVENTS`` changes, replicated and snapshotted) is full, so that its fixed cost
   is in the baseline RSS and not charged to the first keys.
2. **Keys** (``--levels``, default 10k, 100k, 1M, with 100-byte values and 16-byte keys): load up
   to the level with ``cache.set_many`` batches (``growth_load.py``), bring every node to its next
   log snapshot (one-byte filler writes until ``SNAPSHOT_EVERY`` applied entries), read the
   node's own ``snapshot_taken`` log line (total ms, the serialisation's share of it, bytes),
   then each node's RSS (``/proc/<pid>/status``), then the workloads.
3. **Queued messages** (``--queue-messages``, default 100k, one queue's depth limit) on top of
   the last level: the same again, with the queue workload on that full queue.
4. **Value size** (``--value-sizes``, default 100 B, 4 KiB, 64 KiB) on ``--value-keys`` keys
   each, written and read in the final state.

Memory per key is (RSS at the level - RSS at the start) / keys loaded; it is "flat" when its
largest and smallest over the levels are within ``FLAT_RATIO``. Snapshot time is "linear" when
the time per key at no level exceeds ``FLAT_RATIO`` x that of a smaller level (fixed costs make
small snapshots dearer per key, which is not superlinear). Writes to the ``--out-dir``:
``growth-<YYYYMMDD-HHMM>.md`` and ``growth-latest.md`` (+ ``.json``). Nothing asserts on
timings: the exit status is non-zero only when a part could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import growth_report
import growth_state
from bench_raft import add_run_args, log, log_node_tails, run_benchmark, write_report
from benchlib import Controlled, log_events, vm_rss_kb

from coordination.conf import SPEC
from raft_node.testing.launcher import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MACHINE = "coordination.primitives.machine.CoordinationMachine"
KEYS, WARM, VALUES = "gk:", "gw:", "gv"  # key prefixes: levels, warm-up, value-size runs
BACKLOG, WORK = "growth-backlog", "growth-work"  # the full queue; the empty one
WARM_KEYS = 1_000
HISTORY_EVENTS = 50_000  # coordination.primitives.history.MAX_EVENTS (checked at start)


class Run:
    """The cluster, its driver and the run's settings; every step records into ``result``."""

    def __init__(self, args: argparse.Namespace, cluster: LocalCluster, driver: Controlled):
        self.args, self.cluster, self.driver = args, cluster, driver
        self.every = args.snapshot_every or SPEC["SNAPSHOT_EVERY"].default
        self.term = 0
        self.elections: list[tuple[str, int]] = []  # (phase, terms gone by), nonzero only

    def request(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.driver.request(cmd, timeout)

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.cluster.procs.items()}

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = {}
        for node in self.cluster.ids:
            status = self.cluster.status(node, timeout=5.0)
            if status is None:
                raise RuntimeError(f"{node} does not answer STATUS")
            out[node] = status
        return out

    def rss_mb(self) -> dict[str, float]:
        """Each node's RSS, median of 5 readings 0.1 s apart (after the cluster converged)."""
        self.cluster.wait_converged(timeout=120)
        readings: dict[str, list[int]] = {n: [] for n in self.cluster.ids}
        for _ in range(5):
            for node, pid in self.pids().items():
                kb = vm_rss_kb(pid)
                if kb is not None:
                    readings[node].append(kb)
            time.sleep(0.1)
        return {n: statistics.median(kb) / 1024 for n, kb in readings.items() if kb}

    def snapshot(self) -> dict[str, Any]:
        """Bring every node to its next log snapshot and return what each logged about it.

        A snapshot is taken by a node when ``SNAPSHOT_EVERY`` entries were applied since its
        last one; one-byte filler writes make up the difference. The figures are the node's
        own (``event=snapshot_taken``: ``ms`` from the start of the serialisation to the mark
        written after the file's fsync, ``serialize_ms`` the part on the event loop)."""
        cluster = self.cluster
        seen = {n: len(log_events(cluster.log_path(n), "snapshot_taken")) for n in cluster.ids}
        status = self.statuses()
        need = max(self.every - (s["applied"] - s["snapshot_index"]) for s in status.values())
        t0 = time.monotonic()
        if need > 0:
            self.request({"cmd": "filler", "entries": need + 5}, 120 + need / 500)
        taken: dict[str, dict[str, str]] = {}
        deadline = time.monotonic() + 120 + self.args.timeout_scale * 60
        while len(taken) < len(cluster.ids):
            for node in cluster.ids:
                events = log_events(cluster.log_path(node), "snapshot_taken")
                if len(events) > seen[node]:
                    taken[node] = events[-1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no snapshot on {set(cluster.ids) - set(taken)}")
            if len(taken) < len(cluster.ids) and time.monotonic() - t0 > 5:
                self.request({"cmd": "filler", "entries": 20}, 60)  # a lagging node's last few
            time.sleep(0.1)
        nodes = {
            n: {"index": int(e["index"]), "bytes": int(e["bytes"])}
            | {k: float(e[k]) for k in ("ms", "serialize_ms", "serialize_cpu_ms") if k in e}
            for n, e in taken.items()
        }
        return {"filler_entries": max(0, need), "nodes": nodes}

    def note(self, phase: str) -> None:
        """Record the terms that went by since the last note (each one is an election), so the
        report says in which phase leadership moved, if it did."""
        term = max(s["term"] for s in self.statuses().values())
        if self.term and term > self.term:
            self.elections.append((phase, term - self.term))
            log(f"  {term - self.term} election(s) during: {phase}")
        self.term = term

    def restarted_rss_mb(self) -> dict[str, Any]:
        """RSS of a follower restarted from its snapshot (SIGTERM, start, caught up), and of
        the state alone restored in a fresh process (``growth_state.py``).

        A running node's RSS keeps whatever its allocator held on to from earlier log growth
        and serialisations: at one state it moves by 15 MB or more between two snapshots. A
        node just restarted holds its state, its snapshot image and a short log, and measures
        the same at the same state (within 1%), so it is what memory per key is computed from."""
        cluster = self.cluster
        leader = cluster.wait_for_leader(timeout=60)
        node = next(n for n in cluster.ids if n != leader)
        cluster.kill(node, sig=signal.SIGTERM)
        cluster.procs[node].wait(60)
        cluster.start_node(node)
        t0 = time.monotonic()
        cluster.wait_converged(timeout=300 * self.args.timeout_scale)
        caught_up = time.monotonic() - t0
        state = json.loads(
            subprocess.run(
                [sys.executable, str(BENCH / "growth_state.py"), str(cluster.base_dir / node)],
                env={**os.environ, **growth_state.ALLOCATOR_ENV},
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            ).stdout
        )
        rss = self.rss_mb()[node]
        log(
            f"  restarted {node}: {rss:.0f} MB after {caught_up:.1f} s; state alone"
            f" {state['state_kb'] / 1024:.0f} MB"
        )
        return {"node": node, "rss_mb": rss, "restart_s": caught_up, "state": state}

    def measure(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One workload window, with a note of any snapshot or leader change inside it."""
        before = self.statuses()
        cmd = {
            "cmd": "run",
            "concurrency": self.args.inflight,
            "warmup": self.args.warmup,
            "seconds": self.args.seconds,
            "pids": list(self.pids().values()),
            **cmd,
        }
        try:
            res = self.request(cmd, 120 + 3 * (self.args.warmup + self.args.seconds))
        except Exception as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"}
        after = self.statuses()
        res["snapshot_in_window"] = sorted(
            n for n in before if after[n]["snapshot_index"] != before[n]["snapshot_index"]
        )
        res["term_changed"] = any(after[n]["term"] != before[n]["term"] for n in before)
        shown = res.get("error") or f"{res['ops_per_s']:,.0f} ops/s, p99 {res['p99_ms']:.2f} ms"
        log(f"  {cmd['workload']} {cmd.get('value_bytes', '')}: {shown}")
        return res

    def workloads(self, keys: int, queue: str | None, deep: bool) -> dict[str, Any]:
        out = {
            "write": self.measure({"workload": "write", "prefix": KEYS, "keys": keys}),
            "read": self.measure({"workload": "read", "prefix": KEYS, "keys": keys}),
            "lock": self.measure({"workload": "lock", "concurrency": 1}),
        }
        if queue is not None:
            out["queue"] = self.measure(
                {"workload": "queue", "queue": queue, "deep": deep, "concurrency": 16}
            )
        return out

    def state(self, name: str, keys: int) -> dict[str, Any]:
        """Snapshot, the nodes' RSS, a restarted follower's RSS, cache stats."""
        snap = self.snapshot()
        self.note(f"{name}: snapshot")
        ms = statistics.median(s["ms"] for s in snap["nodes"].values())
        log(f"{name}: snapshot {ms:,.0f} ms (median of the nodes)")
        rss = self.rss_mb()
        log(f"{name}: RSS " + ", ".join(f"{n} {mb:.0f} MB" for n, mb in rss.items()))
        row = {"name": name, "keys": keys, "snapshot": snap, "rss_mb": rss}
        if self.args.restart:
            row["restarted"] = self.restarted_rss_mb()
            self.note(f"{name}: follower restart")
        row["stats"] = self.request({"cmd": "stats"}, 60)
        return row

    def step(self, name: str, keys: int, queue: str | None, deep: bool) -> dict[str, Any]:
        """One row of the table: the state's figures, then the workloads."""
        row = self.state(name, keys)
        row["results"] = self.workloads(keys, queue, deep)
        self.note(f"{name}: workloads")
        return row


def grow(args: argparse.Namespace, base: Path, result: dict[str, Any]) -> None:
    """The whole run on one cluster (see the module doc)."""
    from coordination.primitives.history import MAX_EVENTS

    if MAX_EVENTS != HISTORY_EVENTS:
        log(f"note: history.MAX_EVENTS is {MAX_EVENTS}; warm-up sized for it")
    settings: dict[str, Any] = {"STATE_MACHINE": MACHINE, "REDIS_URL": ""}
    if args.snapshot_every:
        settings["SNAPSHOT_EVERY"] = args.snapshot_every
    cluster = LocalCluster(base / "cluster", ROOT / "manage.py", settings=settings)
    (base / "cluster").mkdir(parents=True)
    result["settings"] = dict(cluster.settings)
    driver: Controlled | None = None
    try:
        cluster.start()
        log(f"leader {cluster.wait_for_leader(timeout=60)}")
        argv = [sys.executable, str(BENCH / "growth_load.py")]
        argv += ["--addresses", ",".join(f"{h}:{p}" for h, p in cluster.addresses.values())]
        env = {**os.environ, "RAFTSYNC_BENCH_SECRET": cluster.secret}
        driver = Controlled(argv, str(base / "driver.log"), env=env)
        driver.receive(timeout=60)
        run = Run(args, cluster, driver)
        result["snapshot_every"] = run.every
        result["elections"] = run.elections
        run.note("start")
        timeout = 600 * args.timeout_scale
        repeat = max(1, -(-args.history_warmup // WARM_KEYS))
        warm = {"cmd": "fill", "prefix": WARM, "start": 0, "stop": WARM_KEYS, "value_bytes": 100}
        result["warmup"] = run.request({**warm, "repeat": repeat, "inflight": 4}, timeout)
        result["warm_keys"] = WARM_KEYS
        run.note("warm-up")
        result["start"] = run.state("start", 0)  # as at every level: snapshotted, log compacted
        loaded = 0
        for level in args.levels:
            fill = {"cmd": "fill", "prefix": KEYS, "start": loaded, "stop": level}
            fill.update(value_bytes=100, inflight=args.fill_inflight)
            took = run.request(fill, timeout)
            loaded = level
            log(f"{level:,} keys: loaded at {took['keys_per_s']:,.0f} keys/s")
            run.note(f"{level:,} keys: load")
            last = level == args.levels[-1]
            row = run.step(f"{level:,} keys", level, WORK if last else None, False)
            row["fill"] = took
            result["rows"].append(row)
        if args.queue_messages:
            put = {"cmd": "queue_fill", "queue": BACKLOG, "count": args.queue_messages}
            took = run.request({**put, "inflight": args.fill_inflight}, timeout)
            log(f"queue: {args.queue_messages:,} messages put at {took['per_s']:,.0f}/s")
            run.note("queue: put")
            name = f"{loaded:,} keys + {args.queue_messages:,} queued messages"
            row = run.step(name, loaded, BACKLOG, True)
            row["fill"], row["queued"] = took, args.queue_messages
            result["rows"].append(row)
        for size in args.value_sizes:
            fill = {"cmd": "fill", "prefix": f"{VALUES}{size}:", "start": 0}
            fill.update(stop=args.value_keys, value_bytes=size, inflight=4)
            took = run.request(fill, timeout)
            common = {"prefix": f"{VALUES}{size}:", "keys": args.value_keys, "value_bytes": size}
            log(f"values of {size:,} B on {args.value_keys:,} keys")
            rows = {
                "size": size,
                "fill": took,
                "write": run.measure({"workload": "write", **common}),
                "read": run.measure({"workload": "read", **common}),
            }
            result["values"].append(rows)
            run.note(f"values of {size:,} B")
        result["final_rss_mb"] = run.rss_mb()
        result["final_stats"] = run.request({"cmd": "stats"}, 60)
        result["terms"] = {n: s["term"] for n, s in run.statuses().items()}
    except BaseException:
        log_node_tails(cluster, "raftsync")
        if (base / "driver.log").exists():
            log(f"driver log: {(base / 'driver.log').read_text(errors='replace')[-1500:]}")
        raise
    finally:
        if driver is not None:
            driver.close(grace=5)
        cluster.stop()


def parse_args(argv: list[str]) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", type=ints, default=None, help="key counts (10000,100000,1000000)")
    ap.add_argument("--value-sizes", type=ints, default=[100, 4096, 65536])
    ap.add_argument("--value-keys", type=int, default=None, help="keys per value size (500)")
    ap.add_argument("--queue-messages", type=int, default=None, help="0 skips (100000)")
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds (5)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds (1)")
    ap.add_argument("--inflight", type=int, default=64, help="writes/reads in flight")
    ap.add_argument("--fill-inflight", type=int, default=16, help="batches in flight when loading")
    ap.add_argument("--history-warmup", type=int, default=None, help="changes before the start")
    ap.add_argument(
        "--snapshot-every",
        type=int,
        default=None,
        help="the nodes' SNAPSHOT_EVERY (default: the setting's default, coordination/conf.py)",
    )
    ap.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        default=None,
        help="no follower restart per row (memory per key from the running nodes' RSS)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1k/2k keys, short windows")
    add_run_args(ap)
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {
        "levels": [1_000, 2_000] if quick else [10_000, 100_000, 1_000_000],
        "value_keys": 20 if quick else 500,
        "queue_messages": 1_000 if quick else 100_000,
        "seconds": 0.2 if quick else 5.0,
        "warmup": 0.05 if quick else 1.0,
        "history_warmup": 1_000 if quick else HISTORY_EVENTS + 5 * WARM_KEYS,
        "snapshot_every": 1_000 if quick else None,
        "restart": not quick,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.timeout_scale = max(1.0, args.levels[-1] / 1_000_000)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    result: dict[str, Any] = {"rows": [], "values": []}
    info = run_benchmark(args, "growth-", [("growth", grow, result, False)])
    if info is None:
        return 130
    cmdline = shlex.join([".venv/bin/python", "bench/bench_growth.py", *argv])
    report, lines = growth_report.render(args, info, result, cmdline)
    dated, latest = write_report(args.out_dir, "growth", report, result)
    print("\n".join(lines))
    print(f"\nwritten: {dated}, {latest}")
    return 1 if growth_report.failed(result) else 0


if __name__ == "__main__":
    sys.exit(main())
