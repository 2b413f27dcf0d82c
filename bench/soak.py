"""Soak: a mixed workload on a real 3-node cluster for minutes, with a fault every ``--fault-every``
seconds, reporting per minute what would show a leak: each node's and the Celery worker's RSS
and open file descriptors, each node's disk use (log segments, snapshots), the latency of each
kind of operation, and the state machine's retained state.

    python bench/soak.py                          # 10 minutes, a fault every 30 s
    python bench/soak.py --minutes 1.5 --fault-every 15 --warm-up 1 --out /tmp/soak.md  # CI

Workload (one thread each, back to back): cache writes over 2,000 keys of 100 B; lock acquire +
release over 10 locks on one session; queue put + get + ack; and Celery tasks, ``apply_async``
then ``.get()`` of a task that returns its argument, through the ``raft://`` broker and result
backend with a real prefork worker subprocess (``bench/celery_app.py``, results kept 60 s).

Before the clock starts, ``fill`` brings the retained state to its caps (the watch history's
50,000 changes, every cache key), so that what the run measures is not the state filling up;
``soak_report`` states the bounds and why. Faults, in turn: kill -9 a random node (restarted
3 s later), SIGSTOP the leader for 2 s, kill -9 the leader (restarted 3 s later). One node, the
*witness* (n1), is never killed, so one node process lives through every fault: when it leads at
a "kill the leader" turn, it first hands leadership to another node, which is then killed. Nodes
snapshot every ``SNAPSHOT_EVERY`` entries, so the log is compacted as it grows.

The report goes to ``--out`` (default ``bench/results/soak-latest.md``) and the process exits 1
if a bound or the error budget is broken.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
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

from celery_app import ECHO_NAME, make_app  # noqa: E402
from celery_worker import Worker  # noqa: E402
from soak_report import WORKER, bounds, budget, render  # noqa: E402

from coordination.client import Coordinator  # noqa: E402
from coordination.primitives import commands as c  # noqa: E402
from coordination.primitives import limits  # noqa: E402
from raft_node.client import RaftError  # noqa: E402
from raft_node.testing.launcher import LocalCluster  # noqa: E402

MACHINE = "coordination.primitives.machine.CoordinationMachine"
SNAPSHOT_EVERY = 5_000
KEYS = 2_000
WITNESS = "n1"
RESULT_EXPIRES = 60  # seconds a Celery result is kept: their number levels off after that
CELERY_QUEUE = "soak-celery"
SETTLE_S = 15.0  # a new process's first seconds count for no floor (see ``Sampler``)
_IMAGE = re.compile(r"event=snapshot_taken .*bytes=(\d+)")


class Workload:
    """The client threads; latencies are kept per (minute, kind)."""

    def __init__(self, coord: Coordinator, celery: Any, started: float) -> None:
        self.coord, self.celery, self.started = coord, celery, started
        self.samples: dict[tuple[int, str], list[float]] = defaultdict(list)
        self.errors: dict[tuple[int, str], int] = defaultdict(int)
        self.first_errors: list[str] = []
        self.wrong = 0  # Celery tasks whose result was not their argument
        self.halt = threading.Event()
        kinds = {
            "cache": self._cache,
            "lock": self._lock,
            "queue": self._queue,
            "celery": self._celery,
        }
        self.threads = [
            threading.Thread(target=self._loop, args=(kind, fn), daemon=True)
            for kind, fn in kinds.items()
        ]
        self._session = coord.session(ttl=5.0, label="soak")
        self._jobs = coord.queue("soak-jobs")

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(60)

    def _loop(self, kind: str, op: Any) -> None:
        i = 0
        while not self.halt.is_set():
            began = time.monotonic()
            minute = int((began - self.started) // 60)
            try:
                op(i)
                self.samples[(minute, kind)].append((time.monotonic() - began) * 1000)
            except Exception as exc:  # a fault's casualty: counted against the error budget
                self.errors[(minute, kind)] += 1
                if len(self.first_errors) < 8:
                    self.first_errors.append(f"{kind} at {began - self.started:.0f} s: {exc!r}")
                time.sleep(0.05)
            i += 1

    def _cache(self, i: int) -> None:
        self.coord.propose(c.cache_set(f"soak:{i % KEYS}", os.urandom(100), None))

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

    def _celery(self, i: int) -> None:
        result = self.celery.send_task(ECHO_NAME, args=[i], queue=CELERY_QUEUE)
        value = result.get(timeout=30)
        if value != i:
            self.wrong += 1
            raise AssertionError(f"task {result.id} returned {value!r} for {i}")


def fill(coord: Coordinator) -> dict[str, Any]:
    """Bring the retained state to its caps before measuring: write every cache key, in
    batches, until the watch history holds as many changes as it ever will. Returns its
    status (``retained`` must equal ``max_events``)."""
    status = coord.query(c.history_status())
    n = 0
    while status["retained"] < status["max_events"]:
        batch = [(f"soak:{(n + j) % KEYS}", os.urandom(100)) for j in range(limits.BATCH_MAX)]
        coord.propose(c.cache_set_many(batch, None))
        n += limits.BATCH_MAX
        status = coord.query(c.history_status())
    return status


def proc_sample(pids: list[int]) -> dict[str, float] | None:
    """RSS and descriptors summed over ``pids`` (a worker and its pool), with the first pid."""
    rss_kb = fds = 0
    try:
        for pid in pids:
            status = Path(f"/proc/{pid}/status").read_text()
            rss_kb += int(
                next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
            )
            fds += len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None
    return {"rss_mb": rss_kb / 1024, "fds": fds, "pid": pids[0]}


def node_sample(cluster: LocalCluster, node: str) -> dict[str, float] | None:
    proc = cluster.procs.get(node)
    if proc is None or proc.poll() is not None:
        return None
    sample = proc_sample([proc.pid])
    if sample is not None:
        files = (cluster.base_dir / node).rglob("*")
        sample["disk_mb"] = sum(f.stat().st_size for f in files if f.is_file()) / 1e6
    return sample


class Sampler:
    """Per minute and process: the latest sample, and the lowest and highest RSS of the 1 s
    samples. The lowest (the floor) leaves out a process's first ``SETTLE_S`` seconds: a
    restarted node starts from a few MB and reaches its working size within about 7 s."""

    def __init__(self, started: float, trace: str | None) -> None:
        self.started = started
        self.procs: dict[int, dict[str, dict[str, float]]] = {}
        self._born: dict[str, tuple[float, float]] = {}  # name -> (pid, first seen)
        self._trace = open(trace, "w") if trace else None  # noqa: SIM115 - closed in close()

    def take(self, minute: int, cluster: LocalCluster, worker: Worker) -> None:
        now = time.monotonic()
        samples = {node: node_sample(cluster, node) for node in cluster.ids}
        samples[WORKER] = proc_sample(worker.pids()) if worker.proc.poll() is None else None
        for name, sample in samples.items():
            if sample is None:
                continue
            if self._born.get(name, (None,))[0] != sample["pid"]:
                self._born[name] = (sample["pid"], now)
            seen = self.procs.setdefault(minute, {}).get(name, {})
            sample["peak_mb"] = max(seen.get("peak_mb", 0.0), sample["rss_mb"])
            floor = seen.get("floor_mb")
            if now - self._born[name][1] >= SETTLE_S:
                floor = min(floor or sample["rss_mb"], sample["rss_mb"])
            if floor is not None:
                sample["floor_mb"] = floor
            self.procs[minute][name] = sample
            if self._trace is not None:
                self._trace.write(
                    f"{now - self.started:.1f},{name},{sample['pid']:.0f},"
                    f"{sample['rss_mb']:.1f},{sample['fds']:.0f}\n"
                )

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()


def state_sample(cluster: LocalCluster, coord: Coordinator) -> dict[str, float] | None:
    """The state machine's own accounting (linearizable queries), and the largest snapshot
    image any node has logged so far."""
    try:
        history = coord.query(c.history_status(), timeout=5)
        cache = coord.query(c.cache_stats(), timeout=5)
        results = coord.query(c.result_stats(), timeout=5)
    except RaftError:
        return None
    images = [0]
    for node in cluster.ids:
        text = cluster.log_path(node).read_text(errors="replace")
        images += [int(m[1]) for m in _IMAGE.finditer(text)][-1:]
    return {
        "history_events": history["retained"],
        "history_mb": history["bytes"] / 1e6,
        "cache_keys": cache["keys"],
        "results": results["records"],
        "image_mb": max(images) / 1e6,
    }


def fault(cluster: LocalCluster, n: int, rng: random.Random) -> str:
    """Kill -9 a random node but the witness; SIGSTOP the leader; kill -9 the leader (handed on
    first if the witness leads)."""
    leader = cluster.leader() or rng.choice(cluster.ids)
    kind = n % 3
    if kind == 1:
        cluster.pause(leader)
        time.sleep(2.0)
        cluster.resume(leader)
        return f"SIGSTOP {leader} (leader) 2 s"
    others = [node for node in cluster.ids if node != WITNESS]
    victim, note = rng.choice(others), ""
    if kind == 2:
        victim = leader
        if leader == WITNESS:
            victim = rng.choice(others)
            note = f"leadership handed from {WITNESS} first, "
            try:
                with cluster.client([WITNESS], timeout=5) as client:
                    client.transfer_leadership(victim)
                cluster.wait_for_leader(among=[victim], timeout=5)
            except (RaftError, TimeoutError):
                note = f"{WITNESS} leads and would not hand over: a follower instead, "
    leads = " (leader)" if victim == cluster.leader() else ""
    cluster.kill(victim)
    time.sleep(3.0)
    cluster.start_node(victim)
    return f"kill -9 {victim}{leads}, {note}restarted after 3 s"


def start_celery(cluster: LocalCluster, base: Path) -> tuple[Any, Worker]:
    """The producer's app and a worker subprocess, both on ``raft://`` for broker and results."""
    url = ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())
    marks = base / "celery"
    marks.mkdir()
    config = {
        "broker_url": url,
        "transport_options": {"secret": cluster.secret, "visibility_timeout": 60},
        "result_backend": url,
        "result_options": {"secret": cluster.secret},
        "result_expires": RESULT_EXPIRES,
        "queue": CELERY_QUEUE,
        "prefetch_multiplier": 1,
        "marks_dir": str(marks),
    }
    worker = Worker(config, "soak", base / "worker.log", concurrency=1)
    worker.wait_ready(60)
    return make_app(config), worker


def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="raftsync-soak-"))
    settings = {"STATE_MACHINE": MACHINE, "SNAPSHOT_EVERY": SNAPSHOT_EVERY, "SNAPSHOT_KEEP": 500}
    (base / "cluster").mkdir()
    cluster = LocalCluster(base / "cluster", ROOT / "manage.py", settings=settings)
    cluster.start()
    worker, passed = None, False
    try:
        cluster.wait_for_leader(timeout=60)
        coord = Coordinator(list(cluster.addresses.values()), cluster.secret, timeout=10)
        filled_at = time.monotonic()
        history = fill(coord)
        filled = f"{history['retained']:,} changes in {time.monotonic() - filled_at:.0f} s"
        celery, worker = start_celery(cluster, base)
        started = time.monotonic()
        load = Workload(coord, celery, started)
        load.start()
        rng = random.Random(args.seed)
        faults: list[str] = []
        sampler = Sampler(started, args.trace)
        state: dict[int, dict[str, float]] = {}
        next_fault, next_state = started + args.fault_every, started
        end = started + args.minutes * 60
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_fault:
                faults.append(f"{now - started:5.0f} s: {fault(cluster, len(faults), rng)}")
                next_fault = now + args.fault_every
            minute = int((time.monotonic() - started) // 60)
            sampler.take(minute, cluster, worker)
            if now >= next_state and (sample := state_sample(cluster, coord)) is not None:
                state[minute], next_state = sample, now + 10
            time.sleep(1.0)
        load.stop()
        sampler.close()
        procs = sampler.procs
        header = [
            f"# Soak: {args.minutes:g} min, a fault every {args.fault_every:.0f} s",
            "",
            f"Command: `python bench/soak.py --minutes {args.minutes:g} --fault-every "
            f"{args.fault_every:.0f} --warm-up {args.warm_up}`; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Filled before the clock "
            f"started: the watch history at its cap ({filled}), all {KEYS:,} cache keys. "
            f"Warm-up: the first {args.warm_up} minute(s); witness: {WITNESS} (never killed).",
        ]
        if load.first_errors:
            header += ["", "First errors:", "", *[f"- `{e}`" for e in load.first_errors]]
        checks, notes = bounds(procs, WITNESS, args.warm_up)
        checks += budget(load.samples, load.errors, load.wrong)
        checks.append(("the Celery worker is still running", worker.proc.poll() is None))
        report = render(header, procs, state, load.samples, load.errors, faults, checks, notes)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(report)
        passed = all(ok for _, ok in checks)
        return 0 if passed else 1
    finally:
        if worker is not None:
            worker.stop()
        cluster.stop()
        if passed:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"node and worker logs kept in {base}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fault-every", type=float, default=30.0)
    ap.add_argument("--warm-up", type=int, default=2, help="minutes before the bounds apply")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trace", help="also write every 1 s sample here (CSV: s,name,pid,MB,fds)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak-latest.md"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(run(ap.parse_args()))


if __name__ == "__main__":
    main()
