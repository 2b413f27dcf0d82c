"""Consensus benchmark: raftsync (3 real node processes, fsync on) against PySyncObj (3 processes).

    .venv/bin/python bench/bench_raft.py [--seconds 5] [--trials 20] [--quick]    (or: make bench)

In one run, for each system:

- **Throughput and latency** of ``put(key16B, value100B)`` at 1, 16 and 64 operations in flight,
  measured for ``--seconds`` after a warm-up. raftsync: a separate load-generator process
  (``raft_load.py``: one ``AsyncRaftClient``, N coroutines each proposing sequentially) over TCP.
  PySyncObj (no client protocol): N replicated ``ReplDict.set`` calls kept in flight inside the
  leader's own process (``pysyncobj_peer.py``). ops/s = calls completed in the window / window;
  latency percentiles are nearest-rank over the sorted per-call samples of that window.
- **Failover**, ``--trials`` times: with a background writer running, SIGKILL the leader and
  measure from the kill to the first write acknowledged by the new leader, found by probing the
  surviving nodes directly every ``--probe-interval-ms`` (raftsync: short-timeout proposals on
  pre-opened connections to each survivor, no client backoff; PySyncObj: replicated calls issued
  inside each survivor). Then restart the killed node and wait until all three agree before the
  next trial.

The table goes to stdout and, with the machine and run details, to
``bench/results/raft-<YYYYMMDD-HHMM>.md`` and ``bench/results/raft-latest.md``. Nothing here
asserts on timings: numbers are reported, never judged pass/fail by exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Controlled, free_port, key, percentile, value

from raft_node.client import AsyncConnection, RaftError
from raft_node.kvstore import put
from raft_node.testing.launcher import LocalCluster
from raft_node.transport import client_protocol as p

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SEED_THROUGHPUT = "~237 ops/s"
SEED_ELECTION = "~2 s"
BG_CONCURRENCY = 4  # background writer's operations in flight during failover trials
TARGETS = {
    "throughput_64": 20_000.0,  # ops/s at 64 clients, at least
    "p95_1": 1.0,  # ms, single-client p95, below
    "failover_p50": 300.0,  # ms, below
    "failover_p99": 1000.0,  # ms, below
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- raftsync ------------------------------------------------------------------------------------


def ours_load(cluster: LocalCluster, concurrency: int, warmup: float, seconds: float) -> dict:
    """One measurement from a separate load-generator process."""
    addresses = ",".join(f"{h}:{port}" for h, port in cluster.addresses.values())
    argv = [
        sys.executable,
        str(BENCH / "raft_load.py"),
        "--addresses",
        addresses,
        "measure",
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--seconds",
        str(seconds),
    ]
    env = {**os.environ, "RAFTSYNC_BENCH_SECRET": cluster.secret}
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=warmup + seconds + 60, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"load generator failed (rc={proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def ours_failover_probe(
    cluster: LocalCluster,
    victim: str,
    interval: float,
    timeout: float,
    body: bytes | None = None,
    sig: int = signal.SIGKILL,
) -> float | None:
    """SIGKILL ``victim``; seconds until a survivor acknowledges a write (None: none in time).
    With ``sig=SIGSTOP`` the victim hangs instead (its sockets stay open, as with a dead machine
    or a partition, so only the election timers can notice) and is killed after the probe.

    Probes are proposals with a fresh ``client_id`` each (so they may overlap) and a 0.5 s
    deadline, sent on connections opened before the kill, to every survivor every ``interval``.
    A follower forwards a probe to the leader it knows; an OK after the kill can only come from
    a new leader (the answer's leader hint is checked too). ``body`` is the command to propose
    (default a ``kvstore.put`` for the KVStore machine; ``bench_vs_etcd.py`` passes a
    coordination ``cache.set``, so one probe serves both benchmarks).
    """
    secret = cluster.secret.encode()
    survivors = [n for n in cluster.ids if n != victim]
    victim_hint = "{}:{}".format(*cluster.addresses[victim])
    conns: dict[str, AsyncConnection] = {}
    for node in survivors:
        conn = AsyncConnection(cluster.addresses[node], secret, f"bench-probe-{node}")
        await conn.open(2.0)
        conns[node] = conn
    loop = asyncio.get_running_loop()
    first: asyncio.Future[float] = loop.create_future()
    body = put(key(123_456), value(9)) if body is None else body
    tag = uuid.uuid4().hex[:8]
    counter = itertools.count(1)
    tasks: set[asyncio.Task[None]] = set()

    async def probe(conn: AsyncConnection) -> None:
        try:
            resp = await conn.request(p.PROPOSE, [f"probe-{tag}-{next(counter)}", 1, body], 0.5)
        except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError, RaftError):
            return
        if resp.ok and resp.leader_hint != victim_hint and not first.done():
            first.set_result(time.monotonic())

    async def reopen(node: str) -> None:
        with contextlib.suppress(OSError, TimeoutError, RaftError):
            conn = AsyncConnection(cluster.addresses[node], secret, f"bench-probe-{node}")
            await conn.open(0.5)
            conns[node] = conn

    proc = cluster.procs[victim]
    t_kill = time.monotonic()
    proc.send_signal(sig)
    try:
        deadline = t_kill + timeout
        while not first.done() and time.monotonic() < deadline:
            for node in survivors:
                if conns[node].closed:
                    await reopen(node)
                if not conns[node].closed:
                    task = asyncio.create_task(probe(conns[node]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.wait([first], timeout=interval)
        return first.result() - t_kill if first.done() else None
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns.values():
            await conn.close()
        proc.kill()  # a paused victim ends here (a killed one already has)
        proc.wait(timeout=15)


def run_ours(args: argparse.Namespace, base: Path, result: dict[str, Any]) -> None:
    cluster = LocalCluster(base / "raftsync", ROOT / "manage.py", nodes=3)
    (base / "raftsync").mkdir(parents=True)
    result["settings"] = dict(cluster.settings)
    bg: Controlled | None = None
    try:
        log(f"raftsync: starting 3 nodes on {sorted(cluster.addresses.values())}")
        cluster.start()
        leader = cluster.wait_for_leader(timeout=30)
        with cluster.client(timeout=10) as c:
            c.propose(put(key(0), value(0)))  # the cluster commits before we measure
        log(f"raftsync: leader {leader}")
        for n in args.levels:
            log(f"raftsync: {n} in flight, {args.warmup}s warm-up + {args.seconds}s")
            r = ours_load(cluster, n, args.warmup, args.seconds)
            result["load"][n] = r
            log(f"raftsync:   {r['ops_per_s']:.0f} ops/s, p50 {r['p50_ms']:.2f} ms")

        addresses = ",".join(f"{h}:{port}" for h, port in cluster.addresses.values())
        bg = Controlled(
            [
                *(sys.executable, str(BENCH / "raft_load.py"), "--addresses", addresses),
                *("background", "--concurrency", str(BG_CONCURRENCY)),
            ],
            str(base / "raftsync" / "background.log"),
            env={**os.environ, "RAFTSYNC_BENCH_SECRET": cluster.secret},
        )
        for trial in range(1, args.trials + 1):
            leader = cluster.wait_for_leader(timeout=30)
            bg.request({"cmd": "run"}, 10)
            time.sleep(0.3)  # writes flowing through the leader when it dies
            t = asyncio.run(
                ours_failover_probe(cluster, leader, args.probe_interval_ms / 1000, 30.0)
            )
            result["failover"].append(t)
            shown = f"{t * 1000:.0f} ms" if t is not None else "no write acknowledged in 30 s"
            log(f"raftsync: failover trial {trial}/{args.trials}: killed {leader}, {shown}")
            bg.request({"cmd": "pause"}, 30)
            cluster.start_node(leader)
            statuses = cluster.wait_converged(timeout=60)
            if len(statuses) != len(cluster.ids):
                raise RuntimeError(f"{leader} did not come back after its restart (see its log)")
    except Exception:
        log_node_tails(cluster, "raftsync")
        raise
    finally:
        if bg is not None:
            bg.close(grace=5)
        cluster.stop()


# -- PySyncObj -----------------------------------------------------------------------------------


class PeerCluster:
    """Three ``pysyncobj_peer.py`` processes on loopback, each with its own journal directory."""

    def __init__(self, base: Path, batch: str) -> None:
        self.base = base
        self.batch = batch
        self.addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.procs: dict[int, Controlled] = {}
        self.conf: dict[str, Any] = {}

    def start_node(self, i: int) -> None:
        others = ",".join(a for j, a in enumerate(self.addrs) if j != i)
        argv = [sys.executable, str(BENCH / "pysyncobj_peer.py"), "--self", self.addrs[i]]
        argv += ["--partners", others, "--data-dir", str(self.base / f"p{i}")]
        argv += ["--batch", self.batch]
        ctl = Controlled(argv, str(self.base / f"p{i}.log"))
        self.procs[i] = ctl
        self.conf = ctl.receive(30)["conf"]

    def start(self) -> None:
        for i in range(3):
            self.start_node(i)

    def statuses(self) -> dict[int, dict[str, Any] | None]:
        out: dict[int, dict[str, Any] | None] = {}
        for i, ctl in self.procs.items():
            try:
                out[i] = ctl.request({"cmd": "status"}, 5) if ctl.alive() else None
            except (TimeoutError, ConnectionError, RuntimeError, OSError):
                out[i] = None
        return out

    def wait_for_leader(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, st in self.statuses().items():
                if st is not None and st["state"] == 2:
                    return i
            time.sleep(0.05)
        raise TimeoutError(f"PySyncObj: no leader within {timeout}s")

    def wait_converged(self, timeout: float = 60.0) -> None:
        """All three up, agreeing on one leader, with equal commit and applied indexes."""
        deadline = time.monotonic() + timeout
        sts: dict[int, Any] = {}
        while time.monotonic() < deadline:
            sts = self.statuses()
            values = list(sts.values())
            if len(values) == 3 and all(values):
                leaders = {s["leader"] for s in values}
                marks = {(s["commit_idx"], s["last_applied"]) for s in values}
                if (
                    len(leaders) == 1
                    and None not in leaders
                    and sum(s["state"] == 2 for s in values) == 1
                    and len(marks) == 1
                    and all(s["ready"] for s in values)
                ):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"PySyncObj cluster did not converge: {sts}")

    def stop(self) -> None:
        for ctl in self.procs.values():
            with contextlib.suppress(OSError):
                ctl.close(grace=5)


def run_peer(args: argparse.Namespace, base: Path, result: dict[str, Any]) -> None:
    (base / "pysyncobj").mkdir(parents=True)
    peers = PeerCluster(base / "pysyncobj", args.peer_batch)
    try:
        log(f"PySyncObj: starting 3 nodes on {peers.addrs}")
        peers.start()
        result["settings"] = dict(peers.conf)
        leader = peers.wait_for_leader()
        peers.wait_converged()
        log(f"PySyncObj: leader {peers.addrs[leader]}")
        for n in args.levels:
            log(f"PySyncObj: {n} in flight, {args.warmup}s warm-up + {args.seconds}s")
            leader = peers.wait_for_leader()
            cmd = {"cmd": "load", "concurrency": n, "warmup": args.warmup}
            r = peers.procs[leader].request(
                {**cmd, "seconds": args.seconds}, args.warmup + args.seconds + 60
            )
            result["load"][n] = r
            log(f"PySyncObj:   {r['ops_per_s']:.0f} ops/s, p50 {r['p50_ms']:.2f} ms")

        for trial in range(1, args.trials + 1):
            leader = peers.wait_for_leader()
            survivors = [i for i in peers.procs if i != leader]
            peers.procs[leader].request({"cmd": "bg_start", "concurrency": BG_CONCURRENCY}, 10)
            time.sleep(0.3)
            for i in survivors:
                peers.procs[i].request(
                    {"cmd": "probe_start", "interval_ms": args.probe_interval_ms}, 10
                )
            t_kill = time.monotonic()
            peers.procs[leader].proc.kill()
            for i in survivors:
                peers.procs[i].send({"cmd": "probe_result", "t_kill": t_kill, "timeout": 30.0})
            found = [peers.procs[i].receive(40)["t_success"] for i in survivors]
            found = [t for t in found if t is not None]
            t = min(found) - t_kill if found else None
            result["failover"].append(t)
            shown = f"{t * 1000:.0f} ms" if t is not None else "no write acknowledged in 30 s"
            log(f"PySyncObj: failover trial {trial}/{args.trials}: killed node {leader}, {shown}")
            peers.procs[leader].kill()
            peers.procs[leader].close(grace=1)
            peers.start_node(leader)
            peers.wait_converged(timeout=60)
    except Exception:
        for i in range(3):
            with contextlib.suppress(OSError):
                tail = (peers.base / f"p{i}.log").read_text(errors="replace")[-1500:]
                log(f"PySyncObj: last log lines of node {i}:\n{tail}")
        raise
    finally:
        peers.stop()


# -- report --------------------------------------------------------------------------------------


def fmt_ops(r: dict | None) -> str:
    return "n/a" if not r else f"{r['ops_per_s']:,.0f}"


def fmt_ms(x: float | None) -> str:
    if x is None or x != x:  # None or nan
        return "n/a"
    return f"{x:.2f}" if x < 10 else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def failover_stats(samples: list[float | None]) -> dict[str, Any]:
    ok = sorted(t * 1000 for t in samples if t is not None)
    return {
        "n": len(samples),
        "ok": len(ok),
        "p50": percentile(ok, 50),
        "p95": percentile(ok, 95),
        "p99": percentile(ok, 99),
        "max": ok[-1] if ok else float("nan"),
        "samples_ms": [round(t, 1) for t in ok],
    }


def build_table(levels: list[int], ours: dict, peer: dict) -> list[str]:
    rows: list[tuple[str, str, str, str]] = []
    for n in levels:
        rows.append(
            (
                f"throughput, {n} in flight (ops/s)",
                SEED_THROUGHPUT,
                fmt_ops(ours["load"].get(n)),
                fmt_ops(peer["load"].get(n)),
            )
        )
    for n in levels:
        for q in ("p50", "p95", "p99"):
            o, s = ours["load"].get(n), peer["load"].get(n)
            rows.append(
                (
                    f"latency {q}, {n} in flight (ms)",
                    "-",
                    fmt_ms(o[f"{q}_ms"]) if o else "n/a",
                    fmt_ms(s[f"{q}_ms"]) if s else "n/a",
                )
            )
    fo, fp = failover_stats(ours["failover"]), failover_stats(peer["failover"])
    for q in ("p50", "p95", "p99", "max"):
        rows.append(
            (
                f"failover {q} (ms)",
                SEED_ELECTION if q == "p50" else "-",
                fmt_ms(fo[q]) if fo["ok"] else "n/a",
                fmt_ms(fp[q]) if fp["ok"] else "n/a",
            )
        )
    rows.append(
        (
            "failover trials with a new-leader write",
            "-",
            f"{fo['ok']}/{fo['n']}",
            f"{fp['ok']}/{fp['n']}",
        )
    )
    header = ("metric", "seed figure", "raftsync", "PySyncObj")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        parts = [cells[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    sep = "| " + " | ".join(["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]) + " |"
    return [line(header), sep, *(line(r) for r in rows)]


def target_notes(ours: dict) -> list[str]:
    """The targets, with where this run's raftsync numbers stand (informational only)."""

    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "not met")

    r64, r1 = ours["load"].get(64), ours["load"].get(1)
    fo = failover_stats(ours["failover"])
    t64 = r64["ops_per_s"] if r64 else None
    p95 = r1["p95_ms"] if r1 else None
    f50 = fo["p50"] if fo["ok"] else None
    f99 = fo["p99"] if fo["ok"] and fo["ok"] == fo["n"] else None
    return [
        "Targets for raftsync (this run, informational; nothing asserts on them):",
        f"- >= 20,000 ops/s at 64 clients: {mark(None if t64 is None else t64 >= 20_000)}",
        f"- single-client p95 < 1 ms: {mark(None if p95 is None else p95 < 1.0)}",
        f"- failover p50 < 300 ms: {mark(None if f50 is None else f50 < 300)}",
        f"- failover p99 < 1 s: {mark(None if f99 is None else f99 < 1000)}",
    ]


def sh(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(data_dir: Path) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = sh(["git", "rev-parse", "--short", "HEAD"]).strip() or "unknown"
    if sh(["git", "status", "--porcelain", "--untracked-files=no"]).strip():
        commit += " (with uncommitted changes)"
    fs = "unknown"
    with contextlib.suppress(OSError):
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mnt, fstype, *_ = line.split()
            if str(data_dir.resolve()).startswith(mnt) and len(mnt) >= len(best):
                best, fs = mnt, f"{fstype} (mounted at {mnt})"
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit,
        "nproc": sh(["nproc"]).strip() or str(os.cpu_count()),
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if Path("/proc/loadavg").exists()
        else "unknown",
        "data_fs": fs,
    }


def log_node_tails(cluster: LocalCluster, label: str) -> None:
    """After a failure: the last lines of each node's log, which usually say why."""
    for node in cluster.ids:
        with contextlib.suppress(OSError):
            tail = cluster.log_path(node).read_text(errors="replace")[-1500:]
            log(f"{label}: last log lines of {node}:\n{tail}")


def run_contenders(
    contenders: list[tuple[str, Any, dict[str, Any], bool]], args, base: Path
) -> bool:
    """Run each (name, fn, results, skip) in turn. A contender that fails records its error in
    its results and the others still run, so one broken peer does not void the comparison.
    Returns False when interrupted (Ctrl-C), after the contender's processes are stopped."""
    for name, fn, res, skip in contenders:
        if skip:
            continue
        try:
            fn(args, base, res)
        except KeyboardInterrupt:
            log("interrupted; processes stopped")
            return False
        except Exception as exc:
            res["error"] = repr(exc)
            log(f"{name}: benchmark failed: {exc!r}\n{traceback.format_exc()}")
    return True


def note_if_head_moved(info: dict[str, str]) -> None:
    """A report must name the code it measured: say so if HEAD changed while the run went on."""
    head_now = sh(["git", "rev-parse", "--short", "HEAD"]).strip()
    if head_now and not info["commit"].startswith(head_now):
        info["commit"] += f" at start; HEAD moved to {head_now} during the run"


def add_run_args(ap: argparse.ArgumentParser, *contenders: str) -> None:
    """Options every benchmark has: ``--skip-<contender>``, ``--data-dir``, ``--out-dir``."""
    for name in contenders:
        ap.add_argument(f"--skip-{name}", action="store_true")
    ap.add_argument("--data-dir", default=None, help="parent of the temporary data directory")
    ap.add_argument("--out-dir", default=str(BENCH / "results"))


def run_benchmark(
    args: argparse.Namespace,
    prefix: str,
    contenders: list[tuple[str, Any, dict[str, Any], bool]],
) -> dict[str, str] | None:
    """The frame every benchmark shares: SIGTERM/SIGHUP unwind like Ctrl-C (so every finally
    block stops its processes), a temporary data directory under ``--data-dir``, the machine's
    description, each contender in turn, then the run's duration and closing load. Returns the
    machine info for the report, or None when interrupted."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=prefix, dir=args.data_dir) as tmp:
        base = Path(tmp)
        info = machine_info(base)
        if not run_contenders(contenders, args, base):
            return None
    note_if_head_moved(info)
    info["duration"] = f"{time.monotonic() - t_start:.0f} s"
    with contextlib.suppress(OSError):
        info["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return info


def write_report(
    out_dir: str, kind: str, report: str, data: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """``<kind>-<YYYYMMDD-HHMM>.md`` and ``<kind>-latest.md`` (and ``.json`` with ``data``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    for stem in (f"{kind}-{stamp}", f"{kind}-latest"):
        (out / f"{stem}.md").write_text(report)
        if data is not None:
            (out / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return out / f"{kind}-{stamp}.md", out / f"{kind}-latest.md"


def durability_peer() -> str:
    from pysyncobj_peer import describe_durability

    return describe_durability()


def report_head(title: str, argv: list[str], info: dict) -> list[str]:
    """The first lines of every benchmark report: its title, the command, when, which commit,
    and on what machine (``info`` as ``run_benchmark`` gathers it); with ``duration`` in
    ``info``, how long it ran and the load average at the end."""
    lines = [
        f"# {title}",
        "",
        f"- command: `{shlex.join(argv)}`",
        f"- date: {info['date']}",
        f"- commit: {info['commit']}",
        f"- nproc: {info['nproc']}; CPU: {info['cpu']}; load average at start: {info['loadavg']}",
        f"- Python: {info['python']}; data directory filesystem: {info['data_fs']}",
    ]
    if "duration" in info:
        lines.append(
            f"- duration: {info['duration']}; load average at the end:"
            f" {info.get('loadavg_end', '?')}"
        )
    return lines


def render(args: argparse.Namespace, info: dict, ours: dict, peer: dict, argv: list[str]) -> str:
    table = build_table(args.levels, ours, peer)
    o, s = ours.get("settings", {}), peer.get("settings", {})
    lines = [
        *report_head("raftsync consensus benchmark", argv, info),
        f"- per level: {args.warmup}s warm-up + {args.seconds}s measured; failover trials:"
        f" {args.trials}; probe every {args.probe_interval_ms} ms;"
        f" background writer: {BG_CONCURRENCY} in flight",
        "",
        *table,
        "",
        "Seed figures: the baseline from the project description (consensus throughput"
        " ~237 ops/s, leader election ~2 s). Latencies are per operation, nearest-rank"
        " percentiles of the measured window; failover is SIGKILL of the leader to the first"
        " write acknowledged by the new leader.",
        "",
        *target_notes(ours),
        "",
        "## What ran",
        "",
        "- raftsync: 3 `manage.py run_raft_node` processes (LocalCluster, default settings"
        f" {o}), durable storage with fsync before every acknowledgement. Load: a separate"
        " process with one AsyncRaftClient and N coroutines, each proposing"
        " `kvstore.put(16-byte key, 100-byte value)` sequentially over TCP.",
        "- PySyncObj: 3 processes, `ReplDict.set(16-byte key, 100-byte value)`; load: N calls kept"
        " in flight by callbacks inside the leader's process (no network hop to the leader)."
        f" Config: {s}.",
        f"- PySyncObj durability: {durability_peer()}",
        "- Failover: time from SIGKILL of the leader to the first write acknowledged by the new"
        " leader, probing each survivor directly (see bench/README.md).",
        "",
        "## Details",
        "",
        "```",
        json.dumps(
            {
                "raftsync": {
                    "load": ours["load"],
                    "failover": failover_stats(ours["failover"]),
                },
                "pysyncobj": {
                    "load": peer["load"],
                    "failover": failover_stats(peer["failover"]),
                },
                "errors": {"raftsync": ours.get("error"), "pysyncobj": peer.get("error")},
            },
            indent=1,
            default=str,
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default 1)")
    ap.add_argument("--trials", type=int, default=20, help="failover trials per system")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 s per level, 3 trials")
    ap.add_argument("--levels", default="1,16,64", help="operations in flight (default 1,16,64)")
    ap.add_argument("--probe-interval-ms", type=float, default=3.0)
    ap.add_argument(
        "--peer-batch",
        choices=["on", "off"],
        default="off",
        help="PySyncObj appendEntriesUseBatch (default off: its low-latency mode; 'on', its"
        " default, waits for the 100 ms appendEntriesPeriod on every call)",
    )
    add_run_args(ap, "ours", "peer")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.trials = 1.0, 3
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 1.0
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    cmdline = [".venv/bin/python", "bench/bench_raft.py", *argv]
    ours: dict[str, Any] = {"load": {}, "failover": []}
    peer: dict[str, Any] = {"load": {}, "failover": []}
    contenders = [
        ("raftsync", run_ours, ours, args.skip_ours),
        ("PySyncObj", run_peer, peer, args.skip_peer),
    ]
    info = run_benchmark(args, "raft-bench-", contenders)
    if info is None:
        return 130
    written, latest = write_report(args.out_dir, "raft", render(args, info, ours, peer, cmdline))
    print("\n".join(build_table(args.levels, ours, peer)))
    print()
    print("\n".join(target_notes(ours)))
    print(f"\nwritten: {written} and {latest}")
    return 1 if ("error" in ours or "error" in peer) else 0


if __name__ == "__main__":
    sys.exit(main())
