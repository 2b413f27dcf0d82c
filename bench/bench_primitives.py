"""Coordination-primitives benchmark: raftsync's locks, queue and cache (3 real node processes,
fsync on) next to the same scenarios with redis-py on the local Redis.

    .venv/bin/python bench/bench_primitives.py [--quick]    (or: make bench-primitives)

In one run, raftsync first (its cluster is stopped before Redis is measured), then redis-py:

- **Locks.** Uncontended: one client, sequential ``with coord.lock(name):`` (acquire + release);
  latency percentiles. Contended: ``--lock-threads`` threads on the SAME lock, each
  ``acquire(wait=...)`` + ``release()`` in a loop (one session per thread); per-acquire latency
  and lock handoffs/s. Throughput: ``--lock-clients`` AsyncCoordinators, each taking and
  releasing its own distinct locks; pairs/s. redis-py: ``redis.lock.Lock`` (blocking acquire,
  polling every ``--redis-lock-sleep`` s) and ``redis.asyncio`` locks.
- **Queue.** put msg/s with ``--queue-producers`` coroutines on one AsyncCoordinator (100-byte
  payloads); get+ack msg/s with ``--queue-sessions`` x ``--queue-per-session`` consumers
  draining the backlog the put phase left; end-to-end msg acked/s with producers and blocking
  consumers together. redis-py: LPUSH, LMOVE/BLMOVE into a processing list, LREM.
- **Cache.** Latency of an L1 hit, of a cluster read (``Cache`` in bounded mode with staleness
  0: every get is a linearizable ReadIndex read), of a write (``set``); hit rate of a seeded
  Zipf(s) workload (90% get / 10% set over ``--zipf-keys`` keys, L1 of ``--l1`` keys,
  linearizable mode) next to the ideal hit rate for that L1 size, computed exactly.
- **Semaphore** (``prim_semaphore``). acquire+release latency of a 3-slot semaphore, one
  client; and ``--lock-threads`` threads contending for its 3 slots. redis-py has no
  semaphore: the usual sorted-set + Lua recipe, its waiters polling every
  ``--redis-lock-sleep`` s.

The table goes to stdout and, with the machine and run details, to
``bench/results/primitives-<YYYYMMDD-HHMM>.md`` and ``bench/results/primitives-latest.md``.
Nothing here asserts on timings: the exit status is non-zero only when a part could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import prim_redis
import redis
from bench_raft import (
    add_run_args,
    fmt_ms,
    log,
    log_node_tails,
    report_head,
    run_benchmark,
    write_report,
)
from benchlib import cpu_seconds
from prim_zipf import ideal_hit_rate, simulate, workload

from raft_node.testing.launcher import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MACHINE = "coordination.primitives.machine.CoordinationMachine"
AREAS = ("locks", "queue", "cache", "semaphore")
SEED_LOCK_P95 = "8.67 ms"
SEED_QUEUE = "1,200 msg/s"
SEED_HIT_RATE = "73%"
TARGET_LOCK_P95_MS = 1.0
TARGET_QUEUE_PUT = 30_000.0  # issue 14 (20,000 before)
TARGET_HIT_POINTS = 1.0  # issue 14 (2 before)


# -- running the load drivers --------------------------------------------------------------------


def area_timeout(args: argparse.Namespace, area: str) -> float:
    """Upper bound on one driver process; it is killed after that (no run can hang)."""
    per_phase = args.warmup + args.seconds
    if area == "locks":
        return 90 + 4 * per_phase + args.lock_wait
    if area == "semaphore":
        return 90 + 2 * per_phase + args.lock_wait
    if area == "queue":
        return 90 + 3 * (args.warmup + args.queue_seconds)
    zipf = len(args.zipf_leases) * (args.zipf_warmup + args.zipf_ops) * 0.005
    return 120 + 3 * per_phase + zipf


def run_area(
    system: str,
    area: str,
    params: dict[str, Any],
    env: dict[str, str],
    timeout: float,
    log_path: Path,
) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH / "prim_load.py"), "--system", system, "--area", area]
    argv += ["--params", json.dumps(params)]
    with open(log_path, "ab") as err:
        proc = subprocess.run(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
        )  # on timeout, subprocess.run kills the driver before raising
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"{system} {area} driver failed (rc={proc.returncode}): {tail}")
    return json.loads(lines[-1])


def cpu_share(before: dict[str, float | None], after: dict[str, float | None], wall: float):
    """Percent of one core each process used between two ``cpu_seconds`` readings."""
    return {
        k: round(100 * (after[k] - v) / wall)
        for k, v in before.items()
        if v is not None and after.get(k) is not None and wall > 0
    }


def redis_cpu(url: str) -> float | None:
    """Redis server CPU seconds so far (``INFO cpu``)."""
    try:
        r = redis.Redis.from_url(url, socket_timeout=5)
        try:
            info = r.info("cpu")
        finally:
            r.close()
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except (redis.RedisError, KeyError, ValueError):
        return None


def base_params(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    return {
        "prefix": prefix,
        "warmup": args.warmup,
        "seconds": args.seconds,
        "lock_threads": args.lock_threads,
        "lock_wait": args.lock_wait,
        "lock_clients": args.lock_clients,
        "redis_lock_sleep": args.redis_lock_sleep,
        "queue_seconds": args.queue_seconds,
        "queue_producers": args.queue_producers,
        "queue_e2e_producers": args.queue_e2e_producers,
        "queue_sessions": args.queue_sessions,
        "queue_per_session": args.queue_per_session,
        "cache_l1": args.l1,
        "zipf_keys": args.zipf_keys,
        "zipf_s": args.zipf_s,
        "zipf_seed": args.zipf_seed,
        "zipf_ops": args.zipf_ops,
        "zipf_warmup": args.zipf_warmup,
        "zipf_leases": args.zipf_leases,
        "read_fraction": args.read_fraction,
    }


def run_ours(args: argparse.Namespace, base: Path, result: dict[str, Any]) -> None:
    (base / "raftsync").mkdir(parents=True)
    cluster = LocalCluster(
        base / "raftsync",
        ROOT / "manage.py",
        settings={"STATE_MACHINE": MACHINE, "REDIS_URL": ""},  # no Redis mirror
    )
    result["settings"] = dict(cluster.settings)
    try:
        log(f"raftsync: starting 3 nodes on {sorted(cluster.addresses.values())}")
        cluster.start()
        leader = cluster.wait_for_leader(timeout=30)
        log(f"raftsync: leader {leader}")
        params = base_params(args, "bench-prim:")
        params["addresses"] = [f"{h}:{port}" for h, port in cluster.addresses.values()]
        env = {**os.environ, "RAFTSYNC_BENCH_SECRET": cluster.secret}
        for area in args.areas:
            log(f"raftsync: {area}")
            cpu0 = {n: cpu_seconds(proc.pid) for n, proc in cluster.procs.items()}
            t0 = time.monotonic()
            try:
                r = run_area(
                    "raftsync",
                    area,
                    params,
                    env,
                    area_timeout(args, area),
                    base / "raftsync" / f"driver-{area}.log",
                )
            except Exception as exc:
                r = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"raftsync: {area} failed: {exc}")
            cpu1 = {n: cpu_seconds(proc.pid) for n, proc in cluster.procs.items()}
            r["server_cpu_pct"] = cpu_share(cpu0, cpu1, time.monotonic() - t0)
            with contextlib.suppress(Exception):
                r["server_cpu_pct"]["leader"] = cluster.leader()
            result["areas"][area] = r
            log(f"raftsync:   {summary_line(area, r)}")
    except Exception:
        log_node_tails(cluster, "raftsync")
        raise
    finally:
        cluster.stop()


def run_redis(args: argparse.Namespace, base: Path, result: dict[str, Any]) -> None:
    (base / "redis").mkdir(parents=True)
    prefix = f"raftsync-bench-prim:{uuid.uuid4().hex[:8]}:"
    params = {**base_params(args, prefix), "redis_url": args.redis_url}
    r = redis.Redis.from_url(args.redis_url, socket_timeout=5)
    try:
        info = r.info("server")
        result["server"] = {"version": info.get("redis_version")}
        with contextlib.suppress(redis.RedisError):
            conf = r.config_get("appendonly") | r.config_get("appendfsync") | r.config_get("save")
            result["server"].update(conf)
    finally:
        r.close()
    try:
        for area in args.areas:
            log(f"redis-py: {area}")
            cpu0 = {"redis-server": redis_cpu(args.redis_url)}
            t0 = time.monotonic()
            try:
                out = run_area(
                    "redis",
                    area,
                    params,
                    dict(os.environ),
                    area_timeout(args, area),
                    base / "redis" / f"driver-{area}.log",
                )
            except Exception as exc:
                out = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"redis-py: {area} failed: {exc}")
            cpu1 = {"redis-server": redis_cpu(args.redis_url)}
            out["server_cpu_pct"] = cpu_share(cpu0, cpu1, time.monotonic() - t0)
            result["areas"][area] = out
            log(f"redis-py:   {summary_line(area, out)}")
    finally:
        result["keys_deleted"] = prim_redis.cleanup(params)


def summary_line(area: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error'][:200]}"
    if area == "locks":
        return (
            f"uncontended p95 {fmt_lat(get(r, 'uncontended', 'p95_ms'))} ms, "
            f"{fmt_rate(get(r, 'contended', 'acquires_per_s'))} contended acquires/s "
            f"({fmt_rate(get(r, 'contended', 'handoffs_per_s'))} handoffs/s), "
            f"{fmt_rate(get(r, 'throughput', 'ops_per_s'))} pairs/s"
        )
    if area == "semaphore":
        return (
            f"uncontended p50 {fmt_lat(get(r, 'uncontended', 'p50_ms'))} ms, p95 "
            f"{fmt_lat(get(r, 'uncontended', 'p95_ms'))} ms, "
            f"{fmt_rate(get(r, 'contended', 'acquires_per_s'))} contended acquires/s"
        )
    if area == "queue":
        return (
            f"put {fmt_rate(get(r, 'put', 'ops_per_s'))} msg/s, "
            f"get+ack {fmt_rate(get(r, 'get_ack', 'ops_per_s'))} msg/s, "
            f"e2e {fmt_rate(get(r, 'e2e', 'ops_per_s'))} msg/s"
        )
    rates = [
        f"{k}: {fmt_pct(v.get('hit_rate'))}"
        for k, v in r.items()
        if k.startswith("zipf") and isinstance(v, dict)
    ]
    return (
        f"L1 hit p50 {fmt_lat(get(r, 'l1_hit', 'p50_ms'))} ms, read p50 "
        f"{fmt_lat(get(r, 'cluster_read', 'p50_ms'))} ms, hit rate {', '.join(rates)}"
    )


# -- report --------------------------------------------------------------------------------------


def get(result: dict[str, Any], *path: str) -> Any:
    """``result[a][b]...`` or None where anything on the way is missing or failed."""
    cur: Any = result
    for part in path:
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def fmt_lat(x: float | None) -> str:
    """Milliseconds, with enough digits for microsecond-scale L1 hits."""
    if x is None or x != x:
        return "n/a"
    return f"{x:.4f}" if x < 0.1 else fmt_ms(x)


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:,.0f}"


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def fmt_fairness(r: dict[str, Any] | None) -> str:
    per = get(r, "acquires_per_worker")
    if not per:
        return "n/a"
    return f"{min(per):,} / {max(per):,} ({r.get('wait_timeouts', 0)})"


def fmt_triplet(r: dict[str, Any] | None) -> str:
    if not r or "p50_ms" not in r:
        return "n/a"
    return " / ".join(fmt_lat(r.get(q)) for q in ("p50_ms", "p95_ms", "p99_ms"))


def ideal(args: argparse.Namespace) -> float:
    return ideal_hit_rate(args.zipf_keys, args.zipf_s, args.l1)


def default_zipf(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    """The raftsync Zipf run with the first (default) lease."""
    return get(result, "areas", "cache", f"zipf_lease_{args.zipf_leases[0]:g}")


def build_table(
    args: argparse.Namespace, ours: dict[str, Any], theirs: dict[str, Any]
) -> list[str]:
    o, t = ours["areas"], theirs["areas"]
    n, cl = args.lock_threads, args.lock_clients
    consumers = args.queue_sessions * args.queue_per_session
    best = ideal(args)
    rows: list[tuple[str, str, str, str, str]] = []
    for q, seed, target in (("p50", "-", "-"), ("p95", SEED_LOCK_P95, "< 1 ms"), ("p99", "-", "-")):
        rows.append(
            (
                f"lock acquire+release {q}, uncontended (ms)",
                seed,
                fmt_lat(get(o, "locks", "uncontended", f"{q}_ms")),
                fmt_lat(get(t, "locks", "uncontended", f"{q}_ms")),
                target,
            )
        )
    rows += [
        (
            "lock acquire alone p50 / p95 / p99, uncontended (ms)",
            "-",
            fmt_triplet(get(o, "locks", "uncontended", "acquire_only")),
            fmt_triplet(get(t, "locks", "uncontended", "acquire_only")),
            "-",
        ),
        (
            f"lock acquire p50 / p95 / p99, {n}-way contended (ms)",
            "-",
            fmt_triplet(get(o, "locks", "contended")),
            fmt_triplet(get(t, "locks", "contended")),
            "-",
        ),
        (
            f"lock acquires/s, {n}-way contended",
            "-",
            fmt_rate(get(o, "locks", "contended", "acquires_per_s")),
            fmt_rate(get(t, "locks", "contended", "acquires_per_s")),
            "-",
        ),
        (
            f"lock handoffs/s (to another thread), {n}-way contended",
            "-",
            fmt_rate(get(o, "locks", "contended", "handoffs_per_s")),
            fmt_rate(get(t, "locks", "contended", "handoffs_per_s")),
            "-",
        ),
        (
            f"acquires per thread min / max (timed-out waits), {n}-way",
            "-",
            fmt_fairness(get(o, "locks", "contended")),
            fmt_fairness(get(t, "locks", "contended")),
            "-",
        ),
        (
            f"lock acquire+release pairs/s, {cl} async clients",
            "-",
            fmt_rate(get(o, "locks", "throughput", "ops_per_s")),
            fmt_rate(get(t, "locks", "throughput", "ops_per_s")),
            "-",
        ),
        (
            f"queue put msg/s, {args.queue_producers} producers",
            SEED_QUEUE,
            fmt_rate(get(o, "queue", "put", "ops_per_s")),
            fmt_rate(get(t, "queue", "put", "ops_per_s")),
            f">= {TARGET_QUEUE_PUT:,.0f}",
        ),
        (
            f"queue get+ack msg/s, {consumers} consumers ({args.queue_sessions} sessions)",
            SEED_QUEUE,
            fmt_rate(get(o, "queue", "get_ack", "ops_per_s")),
            fmt_rate(get(t, "queue", "get_ack", "ops_per_s")),
            "-",
        ),
        (
            f"queue end-to-end msg/s, {args.queue_e2e_producers} producers + {consumers} consumers",
            SEED_QUEUE,
            fmt_rate(get(o, "queue", "e2e", "ops_per_s")),
            fmt_rate(get(t, "queue", "e2e", "ops_per_s")),
            "-",
        ),
        (
            "queue end-to-end put-to-ack p50 / p95 / p99 (ms)",
            "-",
            fmt_triplet(get(o, "queue", "e2e")),
            fmt_triplet(get(t, "queue", "e2e")),
            "-",
        ),
        (
            "cache get p50 / p95 / p99, L1 hit (ms)",
            "-",
            fmt_triplet(get(o, "cache", "l1_hit")),
            fmt_triplet(get(t, "cache", "l1_hit")),
            "-",
        ),
        (
            "cache get p50 / p95 / p99, cluster read (ms)",
            "-",
            fmt_triplet(get(o, "cache", "cluster_read")),
            fmt_triplet(get(t, "cache", "cluster_read")),
            "-",
        ),
        (
            "cache set p50 / p95 / p99 (ms)",
            "-",
            fmt_triplet(get(o, "cache", "write")),
            fmt_triplet(get(t, "cache", "write")),
            "-",
        ),
    ]
    zo = default_zipf(ours, args)
    zt = get(t, "cache", "zipf")
    ho, ht = get(zo, "hit_rate"), get(zt, "hit_rate")
    label = f"Zipf {args.zipf_s:g}, {args.zipf_keys:,} keys, L1 {args.l1:,}"
    rows += [
        (
            f"cache hit rate, {label}, {100 * args.read_fraction:.0f}% reads",
            SEED_HIT_RATE,
            fmt_pct(ho),
            fmt_pct(ht),
            f">= {100 * best - TARGET_HIT_POINTS:.1f}%",
        ),
        (
            f"ideal hit rate (mass of the top {args.l1:,} keys)",
            "-",
            fmt_pct(best),
            fmt_pct(best),
            "-",
        ),
        (
            "hit rate minus ideal (points)",
            "-",
            fmt_points(ho, best),
            fmt_points(ht, best),
            f">= -{TARGET_HIT_POINTS:g}",
        ),
    ]
    for lease in args.zipf_leases[1:]:
        zl = get(o, "cache", f"zipf_lease_{lease:g}")
        rows.append(
            (
                f"cache hit rate, same workload, L1 lease {lease:g} s",
                "-",
                fmt_pct(get(zl, "hit_rate")),
                "-",
                "-",
            )
        )
    rows += semaphore_rows(o, t, n)
    header = ("metric", "seed figure", "raftsync", "redis-py", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]

    def line(cells: tuple[str, ...]) -> str:
        parts = [cells[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    sep = "| " + " | ".join(["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]) + " |"
    return [line(header), sep, *(line(r) for r in rows)]


def semaphore_rows(
    o: dict[str, Any], t: dict[str, Any], n: int
) -> list[tuple[str, str, str, str, str]]:
    """The semaphore area's rows (none if the area did not run)."""
    if "semaphore" not in o and "semaphore" not in t:
        return []
    rows: list[tuple[str, str, str, str, str]] = [
        (
            f"semaphore (3 slots) acquire+release {q}, uncontended (ms)",
            "-",
            fmt_lat(get(o, "semaphore", "uncontended", f"{q}_ms")),
            fmt_lat(get(t, "semaphore", "uncontended", f"{q}_ms")),
            "-",
        )
        for q in ("p50", "p95", "p99")
    ]
    rows.append(
        (
            f"semaphore acquires/s, {n} threads on 3 slots",
            "-",
            fmt_rate(get(o, "semaphore", "contended", "acquires_per_s")),
            fmt_rate(get(t, "semaphore", "contended", "acquires_per_s")),
            "-",
        )
    )
    rows.append(
        (
            f"semaphore wait p50 / p95 / p99, {n} threads on 3 slots (ms)",
            "-",
            fmt_triplet(get(o, "semaphore", "contended")),
            fmt_triplet(get(t, "semaphore", "contended")),
            "-",
        )
    )
    return rows


def fmt_points(rate: float | None, best: float) -> str:
    return "n/a" if rate is None or rate != rate else f"{100 * (rate - best):+.1f}"


def target_notes(args: argparse.Namespace, ours: dict[str, Any]) -> list[str]:
    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "not met")

    p95 = get(ours, "areas", "locks", "uncontended", "p95_ms")
    put = get(ours, "areas", "queue", "put", "ops_per_s")
    rate = get(default_zipf(ours, args), "hit_rate")
    best = ideal(args)
    return [
        "Targets for raftsync (this run, informational; nothing asserts on them):",
        f"- lock acquire+release p95 < 1 ms uncontended: "
        f"{mark(None if p95 is None else p95 < TARGET_LOCK_P95_MS)}",
        f"- queue put >= {TARGET_QUEUE_PUT:,.0f} msg/s: "
        f"{mark(None if put is None else put >= TARGET_QUEUE_PUT)}",
        f"- cache hit rate within {TARGET_HIT_POINTS:g} points of ideal ({fmt_pct(best)}): "
        f"{mark(None if rate is None else 100 * (best - rate) <= TARGET_HIT_POINTS)}",
    ]


POLICIES = ("static", "lru", "lfu")


def observations(
    args: argparse.Namespace, ours: dict[str, Any], theirs: dict[str, Any]
) -> list[str]:
    """Facts of this run that matter when reading the table."""
    best = ideal(args)
    notes = []
    probe = get(ours, "areas", "locks", "shared_session_wait", "outcome")
    if probe:
        notes.append(
            "- Two tasks on one `AsyncCoordinator` (one default session), the second waiting for"
            f" the lock the first holds: `{probe}`. Contenders need a session each (the sync"
            " `Coordinator` opens one per thread; the contended scenario passes one explicitly)."
        )
    ops = workload(
        args.zipf_keys,
        args.zipf_s,
        args.zipf_seed,
        args.read_fraction,
        args.zipf_warmup + args.zipf_ops,
    )
    static, lru, lfu = (simulate(ops, args.l1, p, args.zipf_warmup) for p in POLICIES)
    notes.append(
        "- Reference hit rates on the same operation trace, simulated in memory (no leases; a"
        f" write keeps a cached key, as `cache.set_hold` does): the top {args.l1:,} keys"
        f" cached from the start {fmt_pct(static)}; plain LRU {fmt_pct(lru)}; perfect-memory"
        f" LFU, the best an online policy can learn from {args.zipf_warmup + args.zipf_ops:,}"
        f" operations, {fmt_pct(lfu)}. The ideal ({fmt_pct(best)}) is the steady state of a"
        " cache that knows the distribution itself; the LFU shows how much of it an online"
        f" policy can learn in {args.zipf_warmup:,} warm-up operations."
    )
    for lease in args.zipf_leases:
        z = get(ours, "areas", "cache", f"zipf_lease_{lease:g}")
        if z and "hit_rate" in z:
            notes.append(
                f"- raftsync Zipf run, L1 lease {lease:g} s (local copies kept for 80% of it):"
                f" hit rate {fmt_pct(z['hit_rate'])} over {z['ops']:,} operations in"
                f" {z['elapsed_s']:.1f} s ({z['ops_per_s']:,.0f} ops/s)."
            )
    for name, res in (("raftsync", ours), ("redis-py", theirs)):
        e2e = get(res, "areas", "queue", "e2e")
        if e2e and "put_per_s" in e2e:
            notes.append(
                f"- {name} end-to-end queue: producers put {fmt_rate(e2e['put_per_s'])} msg/s,"
                f" consumers acked {fmt_rate(e2e['ops_per_s'])} msg/s,"
                f" {e2e.get('backlog_at_end')} messages ready at the end (a growing backlog means"
                " the consumers fell behind; put-to-ack latency then includes the wait in line)."
            )
    for name, res in (("raftsync", ours), ("redis-py", theirs)):
        shares = []
        for area, r in res.get("areas", {}).items():
            cpu = r.get("server_cpu_pct") or {}
            procs = ", ".join(f"{k} {v}%" for k, v in cpu.items() if k != "leader")
            drivers = [v.get("driver_cpu_pct") for v in r.values() if isinstance(v, dict)]
            drivers = [d for d in drivers if d is not None]
            if procs or drivers:
                lead = f" (leader {cpu['leader']})" if cpu.get("leader") else ""
                peak = f"; driver up to {max(drivers)}% per phase" if drivers else ""
                shares.append(f"{area}: {procs}{lead}{peak}")
        if shares:
            notes.append(
                f"- {name} CPU, % of one core over each area (warm-ups included; 2 cores in all):"
                f" {'; '.join(shares)}."
            )
    unavailable = get(theirs, "areas", "cache", "zipf", "unavailable")
    if unavailable:
        notes.append(f"- redis-py has no L1 here: {unavailable}")
    server = theirs.get("server") or {}
    if server:
        notes.append(
            f"- Redis {server.get('version')}: appendonly={server.get('appendonly', '?')},"
            f" appendfsync={server.get('appendfsync', '?')}, save={server.get('save', '?')!r}"
            " (nothing it acknowledges is on disk yet; raftsync fsyncs on a majority first)."
        )
    for name, res in (("raftsync", ours), ("redis-py", theirs)):
        for area, r in res.get("areas", {}).items():
            if "error" in r:
                notes.append(f"- {name} {area}: failed: {r['error'][:300]}")
                continue
            for phase, v in r.items():
                if isinstance(v, dict) and v.get("error"):
                    notes.append(f"- {name} {area}/{phase}: failed: {v['error'][:300]}")
                elif isinstance(v, dict) and v.get("errors"):
                    kinds = v.get("error_kinds", {})
                    notes.append(
                        f"- {name} {area}/{phase}: {v['errors']} errors in the window {kinds}"
                    )
                if isinstance(v, dict) and v.get("drained_early"):
                    notes.append(
                        f"- {name} {area}/{phase}: the backlog ran out after"
                        f" {v['elapsed_s']:.2f} s; the rate is over that time"
                    )
    return notes


def render(args: argparse.Namespace, info: dict, ours: dict, theirs: dict, argv: list[str]) -> str:
    consumers = args.queue_sessions * args.queue_per_session
    lines = [
        *report_head("raftsync coordination-primitives benchmark", argv, info),
        f"- windows: {args.warmup}s warm-up + {args.seconds}s measured (locks, cache latencies),"
        f" {args.queue_seconds}s (each queue phase); Zipf: {args.zipf_warmup:,} warm-up +"
        f" {args.zipf_ops:,} measured operations, seed {args.zipf_seed}",
        "",
        *build_table(args, ours, theirs),
        "",
        f"Seed figures: the baseline from the project description (lock latency p95"
        f" {SEED_LOCK_P95}, queue {SEED_QUEUE}, cache hit rate {SEED_HIT_RATE}). Latencies are"
        " per operation, nearest-rank percentiles of the measured window.",
        "",
        *target_notes(args, ours),
        "",
        "## Observations",
        "",
        *observations(args, ours, theirs),
        "",
        "## What ran",
        "",
        "- raftsync: 3 `manage.py run_raft_node` processes (LocalCluster,"
        f" {ours.get('settings', {})}), durable storage with fsync before every acknowledgement,"
        " no Redis mirror. Each area runs in its own driver process (`bench/prim_load.py`).",
        f"- locks: uncontended = one `Coordinator`, sequential `with coord.lock(name):` (two log"
        f" entries); contended = {args.lock_threads} threads, one session each, on one lock,"
        f" `acquire(wait={args.lock_wait:g})` + `release()`; latency per acquire (successful"
        " ones; waits that timed out are counted apart), acquires/s, handoffs/s = acquisitions"
        " by a different thread than the previous holder; throughput ="
        f" {args.lock_clients} `AsyncCoordinator`s"
        " (one connection and session each), `async with coord.lock(...)` over distinct names.",
        f"- redis-py locks: `redis.lock.Lock` (blocking acquire polling every"
        f" {args.redis_lock_sleep:g} s, redis-py's default 0.1 s) on one client shared by the"
        f" threads; `redis.asyncio` locks on {args.lock_clients} clients.",
        f"- queue: put = {args.queue_producers} coroutines on one `AsyncCoordinator`, 100-byte"
        f" payloads; get+ack = {consumers} coroutines on {args.queue_sessions} coordinators (one"
        " session each) draining the put phase's backlog (`get(wait=0)` then `ack`; the rate is"
        " cut where the backlog ran out); end-to-end = "
        f"{args.queue_e2e_producers} producers + the same consumers with `get(wait=1)`, counting"
        " acks; latency from the put's start (stamped in the payload) to the ack. redis-py:"
        " LPUSH; LMOVE/BLMOVE into a per-consumer processing list, then LREM (reliable queue).",
        "- cache: 100-byte values, keys preloaded with `set_many` in batches of 1,000. L1 hit ="
        " `Cache` (linearizable) get of 100 filled keys, hits only; cluster read = `Cache(mode="
        "'bounded', staleness=0)` get (a ReadIndex query every time); set = `Cache.set` of keys no"
        f" L1 holds. Zipf: {args.zipf_keys:,} keys, s={args.zipf_s:g}, seeded CDF + bisect sampler"
        f" (`bench/prim_zipf.py`), {100 * args.read_fraction:.0f}% get / rest set, one"
        f" linearizable `Cache(l1_size={args.l1})` on its own session; hit rate = L1 hits / gets"
        " after the warm-up. Ideal = exact probability mass of the most popular"
        f" {args.l1:,} keys.",
        "",
        "## Details",
        "",
        "```",
        json.dumps({"raftsync": ours, "redis-py": theirs}, indent=1, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds (default 5)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default 1)")
    ap.add_argument(
        "--queue-seconds",
        type=float,
        default=None,
        help="measured seconds per queue phase (default 3: the put phase must stay"
        " under the queue's 100,000-message depth limit)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    ap.add_argument("--areas", default=",".join(AREAS), help="locks,queue,cache,semaphore")
    ap.add_argument("--lock-threads", type=int, default=8)
    ap.add_argument("--lock-wait", type=float, default=5.0, help="contended acquire wait (s)")
    ap.add_argument("--lock-clients", type=int, default=16)
    ap.add_argument(
        "--redis-lock-sleep",
        type=float,
        default=0.1,
        help="redis-py Lock polling interval (its default 0.1 s)",
    )
    ap.add_argument("--queue-producers", type=int, default=64)
    ap.add_argument("--queue-e2e-producers", type=int, default=16)
    ap.add_argument("--queue-sessions", type=int, default=4)
    ap.add_argument("--queue-per-session", type=int, default=8)
    ap.add_argument("--l1", type=int, default=1000, help="L1 size (keys)")
    ap.add_argument("--zipf-keys", type=int, default=10_000)
    ap.add_argument("--zipf-s", type=float, default=1.1)
    ap.add_argument("--zipf-seed", type=int, default=1)
    ap.add_argument("--zipf-ops", type=int, default=None, help="measured operations (30,000)")
    ap.add_argument("--zipf-warmup", type=int, default=None, help="warm-up operations (100,000)")
    ap.add_argument(
        "--zipf-leases",
        default="5,60",
        help="L1 leases (s) for raftsync Zipf runs; the first is the table's",
    )
    ap.add_argument("--read-fraction", type=float, default=0.9)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    add_run_args(ap, "ours", "redis")
    args = ap.parse_args(argv)
    defaults = {
        "seconds": (5.0, 1.0),
        "warmup": (1.0, 0.3),
        "queue_seconds": (3.0, 1.0),
        "zipf_ops": (30_000, 3_000),
        "zipf_warmup": (100_000, 2_000),  # steady state: see bench/README.md
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.areas = [a.strip() for a in args.areas.split(",") if a.strip()]
    bad = [a for a in args.areas if a not in AREAS]
    if bad:
        ap.error(f"unknown areas {bad}; choose from {AREAS}")
    args.zipf_leases = [float(x) for x in args.zipf_leases.split(",") if x.strip()]
    if not args.zipf_leases:
        ap.error("--zipf-leases needs at least one lease")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    cmdline = [".venv/bin/python", "bench/bench_primitives.py", *argv]
    ours: dict[str, Any] = {"areas": {}}
    theirs: dict[str, Any] = {"areas": {}}
    contenders = [
        ("raftsync", run_ours, ours, args.skip_ours),
        ("redis-py", run_redis, theirs, args.skip_redis),
    ]
    info = run_benchmark(args, "prim-bench-", contenders)
    if info is None:
        return 130
    report = render(args, info, ours, theirs, cmdline)
    written, latest = write_report(args.out_dir, "primitives", report)
    print("\n".join(build_table(args, ours, theirs)))
    print()
    print("\n".join(target_notes(args, ours)))
    print()
    print("\n".join(observations(args, ours, theirs)))
    print(f"\nwritten: {written} and {latest}")
    failed = any(
        "error" in res or any("error" in a for a in res["areas"].values()) for res in (ours, theirs)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
