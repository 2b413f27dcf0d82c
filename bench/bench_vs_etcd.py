"""Side-by-side benchmark: raftsync (3 node processes, coordination state machine, fsync on)
against etcd (3 members from the ``etcd`` binary, fsync on, timers matched to raftsync's).

    .venv/bin/python bench/bench_vs_etcd.py [--quick]    (or: make bench-etcd)

Both clusters run for the whole benchmark, and every workload is measured on both in alternating
rounds (round 1: raftsync then etcd, round 2: etcd then raftsync, ...), each from its own load
driver process (``etcd_load.py``), so slow drift of a shared 2-core machine hits both alike; the
ratios are taken per round, from two measurements made seconds apart, and their median reported.

Rows: 1 client sequential writes; 64 writes in flight; a lock pair (acquire + release; etcd: a
lease + txn lock and etcd's own lock service); failover (kill -9 of the leader to the next
acknowledged write, probed every 3 ms; and the same with SIGSTOP, a hung leader whose sockets
stay open, so that only the election timers can notice it); etcd's Go load tool (``etcdctl
check perf``) next to raftsync's own client at many in flight; and the client and server CPU
per operation of each, read from /proc. Without etcd installed it prints how to install it and
exits 0.

Writes ``bench/results/vs_etcd.md`` (+ ``.json``) and ``bench/results/vs_etcd_cdf.png``. Nothing
here asserts on timings: the exit status is non-zero only when a part could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import etcd_cluster
from bench_raft import add_run_args, log, log_node_tails, ours_failover_probe, run_benchmark
from benchlib import Controlled, key, value

from raft_node.testing.launcher import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MACHINE = "coordination.primitives.machine.CoordinationMachine"
# raftsync's node defaults (raft_node/host/config.py: tick_ms=10, election_ticks=15,
# heartbeat_ticks=2; LocalCluster passes the same): a 20 ms heartbeat and a 150 ms election
# timeout, randomized to [150, 300) ms. etcd randomizes its --election-timeout to [1x, 2x) too.
TICK_MS, ELECTION_TICKS, HEARTBEAT_TICKS = 10, 15, 2
HEARTBEAT_MS, ELECTION_MS = TICK_MS * HEARTBEAT_TICKS, TICK_MS * ELECTION_TICKS
WORKLOADS = [  # (row id, workload, in flight, systems)
    ("write_1", "write", 1, ("raftsync", "etcd")),
    ("write_64", "write", 64, ("raftsync", "etcd")),
    ("lock", "lock", 1, ("raftsync", "etcd")),
    ("v3lock", "v3lock", 1, ("etcd",)),
]


def start_driver(system: str, params: dict[str, Any], env: dict[str, str], log_path: Path):
    """A persistent ``etcd_load.py`` process for one system; the caller waits for its "ready"
    line (its client connected and, for raftsync, its session opened), so both drivers start
    in parallel."""
    argv = [sys.executable, str(BENCH / "etcd_load.py"), "--system", system]
    argv += ["--params", json.dumps(params)]
    return Controlled(argv, str(log_path), env=env)


def run_rounds(args, drivers: dict[str, Controlled], pids: dict[str, Any], result: dict) -> None:
    """Every workload on both systems, order flipped each round (``result["rounds"]``)."""
    for r in range(args.rounds):
        order = ["raftsync", "etcd"] if r % 2 == 0 else ["etcd", "raftsync"]
        rnd: dict[str, dict[str, Any]] = {}
        for row, workload, conc, systems in WORKLOADS:
            if row == "write_64":
                conc = args.inflight
            for system in [s for s in order if s in systems]:
                cmd = {"cmd": "run", "workload": workload, "concurrency": conc}
                cmd.update(warmup=args.warmup, seconds=args.seconds, pids=pids[system]())
                timeout = 60 + 3 * (args.warmup + args.seconds)
                try:
                    res = drivers[system].request(cmd, timeout)
                except Exception as exc:
                    res = {"error": f"{type(exc).__name__}: {exc}"}
                rnd.setdefault(row, {})[system] = res
                shown = res.get("error") or (
                    f"{res['ops_per_s']:.0f} ops/s, p50 {res['p50_ms']:.2f} ms,"
                    f" p99 {res['p99_ms']:.2f} ms"
                )
                log(f"round {r + 1}/{args.rounds} {row} {system}: {shown}")
        result["rounds"].append(rnd)


def run_capacity(args, cluster: LocalCluster, etcd, drivers, base: Path, result: dict) -> None:
    """etcd's Go load tool, then raftsync's own client with many in flight (no Go tool exists
    for raftsync: its figure includes a Python client, so this row favours etcd)."""
    if not etcd_cluster.ETCDCTL:
        result["capacity"] = {"error": "etcdctl not installed (apt-get install etcd-client)"}
        return
    cap: dict[str, Any] = {}
    log(f"etcd: etcdctl check perf --load={args.perf_load} (a fixed 60 s)")
    try:
        cap["etcd"] = etcd_cluster.check_perf(etcd, args.perf_load, base / "check-perf.log")
        log(f"etcd: check perf {cap['etcd']['writes_per_s']:.0f} writes/s")
    except Exception as exc:
        cap["etcd"] = {"error": f"{type(exc).__name__}: {exc}"}
    cmd = {"cmd": "run", "workload": "raw", "concurrency": args.capacity_inflight}
    cmd.update(warmup=1.0, seconds=args.capacity_seconds)
    cmd["pids"] = [p.pid for p in cluster.procs.values()]
    try:
        res = drivers["raftsync"].request(cmd, 120 + args.capacity_seconds)
        if not res["ops"]:
            res["error"] = f"no write completed: {res.get('error_kinds')}"
        cap["raftsync"] = res
        log(f"raftsync: raw client {res['ops_per_s']:.0f} ops/s {res.get('error', '')}")
    except Exception as exc:
        cap["raftsync"] = {"error": f"{type(exc).__name__}: {exc}"}
    result["capacity"] = cap


def failover_ours(
    cluster: LocalCluster, driver: Controlled, args, restart: bool, sig: int
) -> float | None:
    from coordination.primitives import commands as c

    leader = cluster.wait_for_leader(timeout=30)
    driver.request({"cmd": "bg", "on": True}, 10)
    time.sleep(0.3)  # writes flowing through the leader when it dies
    body = c.cache_set(key(123_456), value(9), None)
    interval = args.probe_interval_ms / 1000
    t = asyncio.run(ours_failover_probe(cluster, leader, interval, 30.0, body, sig))
    driver.request({"cmd": "bg", "on": False}, 30)
    if restart:  # the next trial starts from three converged nodes
        cluster.start_node(leader)
        cluster.wait_converged(timeout=60)
    return t


def failover_etcd(etcd, driver: Controlled, args, restart: bool, sig: int) -> float | None:
    leader, term = etcd.wait_for_leader(timeout=30)
    driver.request({"cmd": "bg", "on": True}, 10)
    time.sleep(0.3)
    interval = args.probe_interval_ms / 1000
    t = asyncio.run(etcd_cluster.etcd_failover_probe(etcd, leader, term, interval, 30.0, sig))
    driver.request({"cmd": "bg", "on": False}, 30)
    if restart:
        etcd.start_member(leader)
        etcd.wait_converged(timeout=60)
    return t


FAILOVERS = [  # (result key, signal, what it stands for)
    ("failover", signal.SIGKILL, "kill -9"),  # a process dies: the OS closes its sockets
    ("failover_pause", signal.SIGSTOP, "SIGSTOP"),  # a hung or cut-off machine: timers only
]


def run_failover(args, cluster, etcd, drivers, result: dict) -> None:
    """``--trials`` kill -9 trials per system, then ``--pause-trials`` SIGSTOP trials,
    alternating which system goes first."""
    for name, sig, label in FAILOVERS:
        trials = args.trials if name == "failover" else args.pause_trials
        last = name == FAILOVERS[-1][0] or not args.pause_trials
        for trial in range(trials):
            order = ["raftsync", "etcd"] if trial % 2 == 0 else ["etcd", "raftsync"]
            restart = trial < trials - 1 or not last  # not after the last: the clusters stop
            for system in order:
                try:
                    if system == "raftsync":
                        t = failover_ours(cluster, drivers["raftsync"], args, restart, sig)
                    else:
                        t = failover_etcd(etcd, drivers["etcd"], args, restart, sig)
                except Exception as exc:
                    result["failover_errors"].append(f"{system}: {type(exc).__name__}: {exc}")
                    log(f"{system}: {label} failover trial failed: {exc}")
                    continue
                result[name][system].append(t)
                shown = f"{t * 1000:.0f} ms" if t is not None else "no write acknowledged in 30 s"
                log(f"{label} failover trial {trial + 1}/{trials} {system}: {shown}")


def side_by_side(args: argparse.Namespace, base: Path, result: dict[str, Any]) -> None:
    """Both clusters up at once; rounds, then the Go tool, then failover (last, since it moves
    leaders and restarts members)."""
    cluster = LocalCluster(
        base / "raftsync", ROOT / "manage.py", settings={"STATE_MACHINE": MACHINE, "REDIS_URL": ""}
    )
    (base / "raftsync").mkdir(parents=True)
    etcd = etcd_cluster.EtcdCluster(base / "etcd", HEARTBEAT_MS, ELECTION_MS)
    result["settings"] = {"raftsync": dict(cluster.settings), "etcd": etcd.argv("e1")[1:]}
    result["etcd_version"] = etcd_cluster.etcd_version()
    drivers: dict[str, Controlled] = {}
    try:
        log("starting 3 raftsync nodes and 3 etcd members")
        cluster.start()
        etcd.start()
        leader = cluster.wait_for_leader(timeout=60)
        etcd_leader, _ = etcd.wait_for_leader(timeout=60)
        log(f"leaders: raftsync {leader}, etcd {etcd_leader}")
        addresses = [f"{h}:{p}" for h, p in cluster.addresses.values()]
        env = {**os.environ, "RAFTSYNC_BENCH_SECRET": cluster.secret}
        drivers["raftsync"] = start_driver(
            "raftsync", {"addresses": addresses}, env, base / "driver-raftsync.log"
        )
        drivers["etcd"] = start_driver(
            "etcd", {"endpoint": etcd.endpoint(etcd_leader)}, env, base / "driver-etcd.log"
        )
        for driver in drivers.values():
            driver.receive(timeout=60)
        pids = {
            "raftsync": lambda: [p.pid for p in cluster.procs.values()],
            "etcd": etcd.pids,
        }
        run_rounds(args, drivers, pids, result)
        if args.perf_load != "off":
            run_capacity(args, cluster, etcd, drivers, base, result)
        run_failover(args, cluster, etcd, drivers, result)
    except BaseException:
        log_node_tails(cluster, "raftsync")
        log(f"etcd logs:\n{etcd.tails()}")
        for name in drivers:
            log(f"{name} driver log: {(base / f'driver-{name}.log').read_text()[-1500:]}")
        raise
    finally:
        for driver in drivers.values():
            driver.close(grace=5)
        cluster.stop()
        etcd.stop()


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per workload")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--inflight", type=int, default=64, help="writes in flight, second row")
    ap.add_argument("--trials", type=int, default=10, help="kill -9 failover trials per system")
    ap.add_argument(
        "--pause-trials", type=int, default=10, help="SIGSTOP failover trials per system (0: none)"
    )
    ap.add_argument("--probe-interval-ms", type=float, default=3.0)
    ap.add_argument(
        "--perf-load",
        default="xl",
        choices=["s", "m", "l", "xl", "off"],
        help="etcdctl check perf workload (a fixed 60 s; 'off' skips the Go-tool row)",
    )
    ap.add_argument("--capacity-inflight", type=int, default=256)
    ap.add_argument("--capacity-seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="smoke run: a few seconds in all")
    add_run_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.trials, args.perf_load = 0.4, 1, 1, "off"
        args.pause_trials = min(args.pause_trials, 1)
    if args.warmup is None:
        args.warmup = 0.1 if args.quick else 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if etcd_cluster.ETCD is None:
        print(etcd_cluster.INSTALL_HINT)
        return 0
    try:
        import aetcd  # noqa: F401 - the etcd client of the load driver
        import etcd_report
    except ImportError as exc:
        print(
            f"{exc}: install the bench dependencies: .venv/bin/pip install -r requirements-dev.txt"
        )
        return 0
    cmdline = [".venv/bin/python", "bench/bench_vs_etcd.py", *argv]
    result: dict[str, Any] = {
        "rounds": [],
        "failover": {"raftsync": [], "etcd": []},
        "failover_pause": {"raftsync": [], "etcd": []},
        "failover_errors": [],
    }
    info = run_benchmark(args, "vs-etcd-", [("side by side", side_by_side, result, False)])
    if info is None:
        return 130
    rows = etcd_report.build_rows(result, args)
    table = etcd_report.table(rows)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "vs_etcd_cdf.png"
    plotted = etcd_report.plot_cdf(result, png)
    report = etcd_report.render(args, info, result, rows, cmdline, plotted)
    (out / "vs_etcd.md").write_text(report)
    (out / "vs_etcd.json").write_text(
        json.dumps(etcd_report.strip_samples(result), indent=1) + "\n"
    )
    print("\n".join(table))
    print()
    print("\n".join(etcd_report.acceptance(rows)))
    print(
        f"\nwritten: {out / 'vs_etcd.md'}, {out / 'vs_etcd.json'}" + (f", {png}" if plotted else "")
    )
    failed = "error" in result or any(
        "error" in res for rnd in result["rounds"] for row in rnd.values() for res in row.values()
    )
    cap = result.get("capacity") or {}
    failed = (
        failed or "error" in cap or any("error" in r for r in cap.values() if isinstance(r, dict))
    )
    return 1 if failed or result["failover_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
