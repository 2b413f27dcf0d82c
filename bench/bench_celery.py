"""Celery end-to-end benchmark: no-op tasks through ``raft://`` (3 real node processes, fsync on)
next to ``redis://`` on the local Redis, with a real prefork worker, in one run.

    .venv/bin/python bench/bench_celery.py [--reps 5] [--quick]    (or: make bench-celery)

For each broker, in turn (raft:// first; its cluster is stopped before Redis is measured):

1. start ``celery -A celery_app worker --pool prefork --concurrency 2`` as a subprocess with the
   same Celery settings for both brokers (``bench/celery_app.py``: ``acks_late``, no result
   backend, ``--prefetch-multiplier``), and wait for its ``worker_ready`` signal;
2. warm up with ``--warmup-tasks`` tasks (pool processes forked, connections and queue declared);
3. ``--reps`` times: enqueue ``--tasks`` no-op tasks from this process, one ``send_task`` after
   the other in each of ``--producers`` threads (default 1; ``make bench-celery`` also runs 8,
   like a threaded web server), and wait until every one has recorded its completion;
4. result round trip (unless ``--result-tasks 0``): with the same worker, one producer thread
   calls ``apply_async(...).get()`` on a task that returns its argument, ``--result-tasks`` times
   one after the other, with the contender's own result backend (raft:// on the same cluster,
   or Redis): the latency of each call, p50/p95/p99;
5. split phase (unless ``--no-split``): stop the worker, enqueue ``--tasks`` with no consumer,
   then start a new worker and time it draining that backlog, to see which side bounds the rate.

Completion is not observed through the broker: each task appends ``time.time()`` to a file of
its own pool process (``celery_app.record_done``), read here. Per repetition: tasks/s end to end
= tasks / (last completion - first enqueue); latency per task = its completion - the start of
its ``send_task``; enqueue rate = tasks / time to send them all. The table shows the median
repetition's rate and percentiles over every measured task.

The table goes to stdout and, with the machine and run details, to
``bench/results/celery-<YYYYMMDD-HHMM>.md`` / ``.json`` and ``celery-latest.md`` / ``.json``.
Nothing asserts on timings: the exit status is non-zero only when a part could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from bench_primitives import cpu_seconds, redis_cpu
from bench_raft import add_run_args, fmt_ms, log, log_node_tails, run_benchmark, write_report
from benchlib import percentile
from celery_app import (
    ECHO_NAME,
    TASK_NAME,
    dump_profile,
    install_profiling,
    make_app,
)
from celery_marks import Marks, profile_summary
from celery_report import (
    CONCURRENCY,
    MACHINE_BUSY,
    VISIBILITY,
    build_table,
    cpu_pct,
    details,
    goal_notes,
    observations,
    render,
    unconfirmed,
    unsafe,
)
from celery_worker import Worker

from coordination.client import Coordinator
from raft_node.testing.launcher import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
MACHINE = "coordination.primitives.machine.CoordinationMachine"


# -- one contender -------------------------------------------------------------------------------


@dataclass
class Probes:
    """What the orchestrator asks the broker under test, outside the timed path."""

    drained: Callable[[], bool]  # nothing ready or unacked in the benchmark's queue
    server_cpu: Callable[[], dict[str, float | None]]  # broker process CPU seconds so far
    log_index: Callable[[], int | None] = lambda: None  # raft: the leader's commit index


def cpu_snapshot(worker: Worker, probes: Probes) -> dict[str, float | None]:
    snap: dict[str, float | None] = dict(probes.server_cpu())
    pids = worker.pids()
    snap["worker main"] = cpu_seconds(pids[0])
    children = [cpu_seconds(p) for p in pids[1:]]
    snap["worker pool"] = sum(c for c in children if c is not None) if children else None
    times = os.times()
    snap["producer"] = times.user + times.system
    snap[MACHINE_BUSY] = machine_busy_seconds()
    return snap


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy so far (``/proc/stat``): with this run's own
    processes subtracted, what anything else on the machine took during a window."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def enqueue(app: Any, rep: int, n: int, producers: int = 1) -> tuple[list[float], list[float]]:
    """Send ``n`` tasks, one after the other from each of ``producers`` threads (task ``seq``
    goes to thread ``seq % producers``, as requests of a threaded web server would); (start,
    end) wall instants of each send."""
    starts, ends = [0.0] * n, [0.0] * n

    def send(first: int) -> None:
        for seq in range(first, n, producers):
            starts[seq] = time.time()
            app.send_task(TASK_NAME, args=(rep, seq))
            ends[seq] = time.time()

    if producers == 1:
        send(0)
    else:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return starts, ends


def measure_rep(
    app: Any,
    marks: Marks,
    rep: int,
    n: int,
    worker: Worker,
    probes: Probes,
    timeout: float,
    producers: int = 1,
) -> dict[str, Any]:
    idx0 = probes.log_index()
    cpu0 = cpu_snapshot(worker, probes)
    starts, ends = enqueue(app, rep, n, producers)
    complete = marks.wait(rep, n, timeout)
    cpu1 = cpu_snapshot(worker, probes)
    wall_cpu = time.time() - min(starts)
    done = marks.done(rep)
    out: dict[str, Any] = {
        "rep": rep,
        "tasks": n,
        "completed": len(done),
        "duplicates": marks.duplicates(rep),
        "enqueue_s": max(ends) - min(starts),
        "enqueue_per_s": n / (max(ends) - min(starts)),
    }
    calls = sorted((e - s) * 1000 for s, e in zip(starts, ends, strict=True))
    out["send_ms"] = {f"p{q}": percentile(calls, q) for q in (50, 95, 99)}
    if done:
        last = max(done.values())
        out["e2e_s"] = last - min(starts)
        out["tasks_per_s"] = len(done) / out["e2e_s"] if complete else None
        lat = sorted((t - starts[seq]) * 1000 for seq, t in done.items())
        out["latency_ms"] = {f"p{q}": percentile(lat, q) for q in (50, 95, 99)}
        out["latency_ms"]["max"] = lat[-1]
        out["window"] = [min(starts), last]
        out["_latencies"] = lat
    if not complete:
        out["error"] = f"only {len(done)}/{n} tasks completed within {timeout:.0f}s"
    out["cpu_s"] = {
        k: round(cpu1[k] - v, 3)
        for k, v in cpu0.items()
        if v is not None and cpu1.get(k) is not None
    }
    out["cpu_wall_s"] = wall_cpu
    t_done = time.monotonic()
    drained = wait_until(probes.drained, 30.0, interval=0.05)
    out["drained_after_s"] = round(time.monotonic() - t_done, 3) if drained else None
    idx1 = probes.log_index()
    if idx0 is not None and idx1 is not None:
        out["log_entries"] = idx1 - idx0  # up to the drain: includes the last acks
    return out


def round_trip(app: Any, args: argparse.Namespace, probes: Probes) -> dict[str, Any]:
    """One producer thread: ``apply_async(...).get()`` of a task returning its argument,
    ``--result-tasks`` times one after the other (after ``--result-warmup`` untimed ones); per
    call, the time from the publish to ``.get()`` returning the stored value."""
    for i in range(args.result_warmup):
        app.send_task(ECHO_NAME, args=(i,)).get(timeout=args.rep_timeout)
    idx0 = probes.log_index()
    latencies: list[float] = []
    t0 = time.perf_counter()
    for i in range(args.result_tasks):
        start = time.perf_counter()
        value = app.send_task(ECHO_NAME, args=(i,)).get(timeout=args.rep_timeout)
        latencies.append((time.perf_counter() - start) * 1000)
        if value != i:
            raise RuntimeError(f"round trip {i}: got {value!r}")
    wall = time.perf_counter() - t0
    idx1 = probes.log_index()
    lat = sorted(latencies)
    out: dict[str, Any] = {
        "calls": len(lat),
        "per_s": len(lat) / wall,
        "latency_ms": {**{f"p{q}": percentile(lat, q) for q in (50, 95, 99)}, "max": lat[-1]},
    }
    if idx0 is not None and idx1 is not None:
        out["log_entries_per_call"] = (idx1 - idx0) / len(lat)
    return out


def round_trip_line(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return (
        f"apply_async().get() p50 {fmt_ms(lat['p50'])} ms, p95 {fmt_ms(lat['p95'])} ms,"
        f" p99 {fmt_ms(lat['p99'])} ms ({r['calls']} calls, {r['per_s']:,.0f}/s)"
    )


def run_broker(
    name: str,
    url: str,
    options: dict[str, Any],
    probes: Probes,
    args: argparse.Namespace,
    base: Path,
    result: dict[str, Any],
    backend: tuple[str, dict[str, Any]] | None = None,
) -> None:
    """Worker up, warm-up, ``--reps`` measured repetitions, the result round trip (with
    ``backend``, a result backend URL and its options), then the split phase; worker down."""
    marks_dir = base / "marks"
    marks_dir.mkdir(parents=True)
    config = {
        "broker_url": url,
        "transport_options": options,
        "result_backend": backend[0] if backend else None,
        "result_options": backend[1] if backend else {},
        "queue": args.queue,
        "prefetch_multiplier": args.prefetch_multiplier,
        "marks_dir": str(marks_dir),
        "profile": args.profile,
    }

    def masked(opts: dict[str, Any]) -> dict[str, Any]:
        return {k: ("***" if k == "secret" else v) for k, v in opts.items()}

    result["config"] = {
        **config,
        "transport_options": masked(options),
        "result_options": masked(config["result_options"]),
        "concurrency": CONCURRENCY,
    }
    marks = Marks(marks_dir)
    app = make_app(config)
    if args.profile:
        install_profiling(app, ("_put",))
    worker = Worker(config, name, base / "worker.log", CONCURRENCY)
    result["worker_argv"] = worker.argv
    try:
        worker.wait_ready(60)
        log(f"{name}: worker ready (pids {worker.pids()}); warm-up {args.warmup_tasks} tasks")
        warm = measure_rep(app, marks, 0, args.warmup_tasks, worker, probes, args.rep_timeout)
        if "error" in warm:
            raise RuntimeError(f"warm-up: {warm['error']}")
        for rep in range(1, args.reps + 1):
            r = measure_rep(
                app, marks, rep, args.tasks, worker, probes, args.rep_timeout, args.producers
            )
            result["reps"].append(r)
            log(f"{name}: rep {rep}/{args.reps}: {rep_line(r)}")
            if "error" in r:
                raise RuntimeError(f"rep {rep}: {r['error']}")
        if backend and args.result_tasks:
            result["round_trip"] = round_trip(app, args, probes)
            log(f"{name}: result round trip: {round_trip_line(result['round_trip'])}")
        if args.split:
            worker.stop()

            def start_worker() -> Worker:
                return Worker(config, name, base / "worker-split.log", CONCURRENCY)

            result["split"] = split_phase(app, marks, args.reps + 1, args, start_worker, probes)
            log(f"{name}: split: {split_line(result['split'])}")
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            app.close()
        if args.profile:
            dump_profile(str(marks_dir), "producer")
            windows = [r["window"] for r in result["reps"] if "window" in r]
            result["profile"] = profile_summary(marks_dir, windows)
        result["worker_log_tail"] = (base / "worker.log").read_text(errors="replace")[-1500:]


def split_phase(
    app: Any,
    marks: Marks,
    rep: int,
    args: argparse.Namespace,
    start_worker: Callable[[], Worker],
    probes: Probes,
) -> dict[str, Any]:
    """Producer and worker apart, to see which side bounds the end-to-end rate: enqueue
    ``--tasks`` with no worker running (the producer has the broker to itself), then start a
    worker and time it draining that backlog alone (first to last completion)."""
    starts, ends = enqueue(app, rep, args.tasks, args.producers)
    out: dict[str, Any] = {
        "tasks": args.tasks,
        "enqueue_per_s": args.tasks / (max(ends) - min(starts)),
    }
    worker = start_worker()
    try:
        worker.wait_ready(60)
        cpu0 = cpu_snapshot(worker, probes)
        t0 = time.time()
        complete = marks.wait(rep, args.tasks, args.rep_timeout)
        cpu1 = cpu_snapshot(worker, probes)
        wall = time.time() - t0
    finally:
        worker.stop()
    done = sorted(marks.done(rep).values())
    out["completed"] = len(done)
    if complete and len(done) > 1:
        out["drain_per_s"] = (len(done) - 1) / (done[-1] - done[0])
    else:
        out["error"] = f"only {len(done)}/{args.tasks} tasks completed"
    out["cpu_pct"] = cpu_pct(
        {k: cpu1[k] - v for k, v in cpu0.items() if v is not None and cpu1.get(k) is not None},
        wall,
    )
    return out


def split_line(r: dict[str, Any]) -> str:
    drain = r.get("drain_per_s")
    return f"enqueue alone {r['enqueue_per_s']:,.0f}/s" + (
        f", worker drains the backlog at {drain:,.0f} tasks/s" if drain else ", incomplete"
    )


def rep_line(r: dict[str, Any]) -> str:
    rate = r.get("tasks_per_s")
    lat = r.get("latency_ms", {})
    return (f"{rate:,.0f} tasks/s end to end" if rate else "incomplete") + (
        f", enqueue {r['enqueue_per_s']:,.0f}/s, latency p50 {fmt_ms(lat.get('p50'))} ms"
        f" p99 {fmt_ms(lat.get('p99'))} ms"
        + (f", {r['log_entries'] / r['tasks']:.2f} log entries/task" if "log_entries" in r else "")
    )


def run_raft(args: argparse.Namespace, base: Path, result: dict[str, Any]) -> None:
    base = base / "raft"
    (base / "cluster").mkdir(parents=True)
    cluster = LocalCluster(
        base / "cluster",
        ROOT / "manage.py",
        # no Redis mirror; --unsafe-no-fsync bounds what the disk path costs
        settings={"STATE_MACHINE": MACHINE, "REDIS_URL": "", "UNSAFE_NO_FSYNC": unsafe(args)},
    )
    result["settings"] = dict(cluster.settings)
    coord: Coordinator | None = None
    try:
        log(f"raft://: starting 3 nodes on {sorted(cluster.addresses.values())}")
        cluster.start()
        log(f"raft://: leader {cluster.wait_for_leader(timeout=30)}")
        addresses = [f"{h}:{p}" for h, p in cluster.addresses.values()]
        coord = Coordinator(",".join(addresses), cluster.secret)
        queue = coord.queue(args.queue)

        def drained() -> bool:
            with contextlib.suppress(Exception):
                s = queue.stats()
                return s["ready"] + s["delayed"] + s["in_flight"] == 0
            return False

        def log_index() -> int | None:
            leader = cluster.leader()
            status = cluster.status(leader) if leader else None
            return status["commit"] if status else None

        def server_cpu() -> dict[str, float | None]:
            return {f"node {n}": cpu_seconds(p.pid) for n, p in cluster.procs.items()}

        options: dict[str, Any] = {"secret": cluster.secret, "visibility_timeout": VISIBILITY}
        if args.polling_wait is not None:
            options["polling_wait"] = args.polling_wait
        if args.session_ttl is not None:
            options["session_ttl"] = args.session_ttl
        options.update(args.raft_option)
        url = ";".join(f"raft://{a}" for a in addresses)
        probes = Probes(drained, server_cpu, log_index)
        backend = (url, {"secret": cluster.secret})  # raft:// results on the same cluster
        run_broker("raft", url, options, probes, args, base, result, backend)
    except Exception:
        log_node_tails(cluster, "raft://")
        raise
    finally:
        if coord is not None:
            coord.close()
        cluster.stop()


def run_redis(args: argparse.Namespace, base: Path, result: dict[str, Any]) -> None:
    base = base / "redis"
    base.mkdir(parents=True)
    r = redis.Redis.from_url(args.redis_url, socket_timeout=5)
    try:
        info = r.info("server")
        result["server"] = {"version": info.get("redis_version")}
        with contextlib.suppress(redis.RedisError):
            conf = r.config_get("appendonly") | r.config_get("appendfsync") | r.config_get("save")
            result["server"].update(conf)

        def drained() -> bool:
            with contextlib.suppress(redis.RedisError):
                # kombu's Redis transport: the queue is a list; unacked messages sit in the
                # database's "unacked" hash (the benchmark's database: nothing else uses it).
                return r.llen(args.queue) == 0 and r.hlen("unacked") == 0
            return False

        def server_cpu() -> dict[str, float | None]:
            return {"redis-server": redis_cpu(args.redis_url)}

        # Celery's Redis result backend on the same server; its keys carry the run's queue
        # name (global_keyprefix), so the clean-up below finds them.
        backend = (args.redis_url, {"global_keyprefix": f"{args.queue}-"})
        run_broker(
            "redis",
            args.redis_url,
            {"visibility_timeout": VISIBILITY},
            Probes(drained, server_cpu),
            args,
            base,
            result,
            backend,
        )
    finally:
        deleted = 0
        with contextlib.suppress(redis.RedisError):
            for key in list(r.scan_iter(match=f"*{args.queue}*", count=1000)):
                deleted += r.unlink(key)
        result["keys_deleted"] = deleted
        r.close()


# -- report --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=None, help="tasks per repetition (1,000)")
    ap.add_argument("--reps", type=int, default=None, help="measured repetitions (5)")
    ap.add_argument("--warmup-tasks", type=int, default=None, help="warm-up tasks (200)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 x 300 tasks (~30 s)")
    ap.add_argument(
        "--prefetch-multiplier",
        type=int,
        default=4,
        help="worker_prefetch_multiplier for both brokers (Celery's default, 4)",
    )
    ap.add_argument("--polling-wait", type=float, default=None, help="raft:// polling_wait (s)")
    ap.add_argument("--session-ttl", type=float, default=None, help="raft:// session_ttl (s)")
    ap.add_argument(
        "--raft-option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="another raft:// transport option, e.g. asynchronous=false or ack_linger=0.05",
    )
    ap.add_argument("--rep-timeout", type=float, default=None, help="per repetition (s)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="time the worker's delivery/basic_ack and the producer's _put (a wrapper per call)",
    )
    ap.add_argument(
        "--no-split",
        dest="split",
        action="store_false",
        help="skip the split phase (enqueue with no worker running, then drain the backlog)",
    )
    ap.add_argument(
        "--result-tasks",
        type=int,
        default=None,
        help="result round trips, apply_async().get() one after the other (500; 0 skips)",
    )
    ap.add_argument("--result-warmup", type=int, default=20, help="untimed round trips first")
    ap.add_argument(
        "--producers",
        type=int,
        default=1,
        help="threads sending tasks at once (1: one publish at a time; a threaded web server"
        " has several)",
    )
    ap.add_argument(
        "--unsafe-no-fsync",
        action="store_true",
        help="raft:// nodes skip every fsync (UNSAFE_NO_FSYNC): an upper bound, not a result",
    )
    add_run_args(ap, "raft", "redis")
    args = ap.parse_args(argv)
    defaults = (("tasks", 1000, 300), ("reps", 5, 2), ("warmup_tasks", 200, 50))
    for name, full, quick in (*defaults, ("result_tasks", 500, 100)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.rep_timeout is None:
        args.rep_timeout = max(60.0, args.tasks * 0.1)
    args.queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
    options = {}
    for item in args.raft_option:
        key, _, value = item.partition("=")
        options[key] = json.loads(value)
    args.raft_option = options
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    cmdline = [".venv/bin/python", "bench/bench_celery.py", *argv]
    raft: dict[str, Any] = {"reps": []}
    red: dict[str, Any] = {"reps": []}
    contenders = [
        ("raft://", run_raft, raft, args.skip_raft),
        ("redis://", run_redis, red, args.skip_redis),
    ]
    info = run_benchmark(args, "celery-bench-", contenders)
    if info is None:
        return 130
    kind = "celery" if args.producers == 1 else f"celery-p{args.producers}"
    kind += "-unconfirmed" if unconfirmed(args) else ""
    kind += "-nofsync" if unsafe(args) else ""
    data = {"command": shlex.join(cmdline), "info": info, **details(raft, red)}
    written, latest = write_report(args.out_dir, kind, render(args, info, raft, red, cmdline), data)
    print("\n".join(build_table(args, raft, red)))
    print()
    print("\n".join(goal_notes(args, raft, red)))
    print()
    print("\n".join(observations(args, raft, red)))
    print(f"\nwritten: {written} (.json) and {latest}")
    return 1 if ("error" in raft or "error" in red) else 0


if __name__ == "__main__":
    sys.exit(main())
