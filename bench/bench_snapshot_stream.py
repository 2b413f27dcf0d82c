"""Streamed snapshots on a real cluster: a follower with an empty disk catches up on a >= 200 MB
state while the leader keeps taking writes.

Starts 3 ``manage.py run_raft_node`` processes (``LocalCluster``, fsync on, the coordination
state machine, ``MAX_PEER_FRAME_BYTES`` 8 MiB, client frames 4 MiB), fills the cache with
``--mb`` MiB of 1 MiB values (the cache's budget is 256 MiB, ``cache_store.DEFAULT_MAX_BYTES``),
then small writes until ``SNAPSHOT_EVERY`` (1000) applied entries make every node take a
snapshot. ``SNAPSHOT_KEEP`` is 50, so the log behind the snapshot holds only small entries and a
follower starting from nothing needs the snapshot. Then:

1. (``--wipe-follower``) a follower is stopped before the fill, and its data directory wiped
   after it; by default instead, a new machine ``n4`` joins empty (``--join``) in step 3 and is
   added as a learner (``MEMBERS add_learner``), as ``raft_members add`` does;
2. a steady write load starts (one 100-byte cache write at a time, ``--rate`` per second, from
   one client thread) and runs ``--idle`` seconds: the idle latencies;
3. the new learner (or the wiped follower) starts empty; the leader streams it the snapshot.
   The transfer lasts from the leader's ``snapshot_send`` log line to its ``snapshot_sent``
   (the follower's ``SNAP_ACK``);
   "caught up" is when the follower has applied the snapshot's index. Writes issued meanwhile
   are the transfer latencies. The leader's VmRSS is sampled every 50 ms from
   ``/proc/<pid>/status``; the growth is the peak during the transfer minus the median of the
   idle phase (the snapshot bytes themselves are resident in the leader before it starts: the
   core keeps its latest snapshot).

    python bench/bench_snapshot_stream.py [--mb 210] [--rate 50] [--idle 5] [--dir /tmp/x]

No more than ``SNAPSHOT_EVERY`` writes may happen between the snapshot and the end, or a new
snapshot (another serialisation of the whole state) would land in the measurement; the script
checks it and says so.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import vm_rss_kb  # noqa: E402

from coordination.client import Coordinator  # noqa: E402
from coordination.primitives import commands as c  # noqa: E402
from raft_node.testing.launcher import LocalCluster  # noqa: E402

MACHINE = "coordination.primitives.machine.CoordinationMachine"
SNAPSHOT_EVERY = 1000
MiB = 1 << 20


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(p / 100 * len(s)) - 1))] if s else float("nan")


class Load(threading.Thread):
    """Sequential small writes at a fixed rate; (start time, latency in ms) per write."""

    def __init__(self, coord: Coordinator, rate: float) -> None:
        super().__init__(daemon=True)
        self.coord = coord
        self.period = 1.0 / rate
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        value = b"v" * 100
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                self.coord.propose(c.cache_set(f"load-{i % 100}", value, None), timeout=10)
                self.samples.append((t0, (time.monotonic() - t0) * 1000))
            except Exception:
                self.errors += 1
            i += 1
            next_at += self.period
            time.sleep(max(0.0, next_at - time.monotonic()))

    def between(self, start: float, end: float) -> list[float]:
        return [ms for t, ms in self.samples if start <= t < end]


def log_time(path: Path, event: str) -> float | None:
    """Wall time (epoch seconds) of the last ``event=<event>`` line in a node log."""
    found = None
    for line in path.read_text(errors="replace").splitlines():
        if f"event={event} " in line:
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
            if m:
                stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                found = stamp + int(m.group(2)) / 1000
    return found


def snapshot_bytes(path: Path) -> int:
    found = re.findall(r"event=snapshot_taken .*bytes=(\d+)", path.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def stable_leader(cluster: LocalCluster) -> str:
    """A leader that every live node agrees on, twice, one second apart."""
    previous = None
    while True:
        leader = cluster.wait_for_leader(timeout=60)
        views = {(cluster.status(n) or {}).get("leader") for n in cluster.ids if cluster.alive(n)}
        if views == {leader} and leader == previous:
            return leader
        previous = leader
        time.sleep(1.0)


def until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=210, help="MiB of cache values to fill")
    ap.add_argument("--rate", type=float, default=50.0, help="steady writes per second")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle measurement")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument(
        "--wipe-follower",
        action="store_true",
        help="restart a wiped follower instead of adding a new learner",
    )
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-snapstream-"))
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    settings = {
        "STATE_MACHINE": MACHINE,
        "REDIS_URL": "",
        "SNAPSHOT_EVERY": SNAPSHOT_EVERY,
        "SNAPSHOT_KEEP": 50,
        "MAX_PEER_FRAME_BYTES": 8 * MiB,
        "MAX_FRAME_BYTES": 4 * MiB,
    }
    cluster = LocalCluster(base, ROOT / "manage.py", settings=settings)
    cluster.start()
    try:
        run(cluster, args)
    finally:
        cluster.stop()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


def run(cluster: LocalCluster, args: argparse.Namespace) -> None:
    leader = stable_leader(cluster)
    addrs = [cluster.addresses[n] for n in cluster.ids]
    coord = Coordinator(addrs, cluster.secret, timeout=30, name="bench-fill")
    coord.propose(c.cache_set("hello", b"world", None))
    # The follower goes down *before* the fill, so the leader's record of it predates the
    # snapshot: when it comes back empty the leader must send the snapshot. (Wiping a node that
    # had acknowledged recent entries would break Raft's assumption that acknowledged entries
    # stay on disk; the leader would keep probing from where it believes the node is.)
    follower = next(n for n in cluster.ids if n != leader)
    if args.wipe_follower:
        cluster.kill(follower, sig=15)
    else:
        follower = "n4"
        cluster.add_machine(follower)
    t0 = time.monotonic()
    value = os.urandom(MiB - 1024)  # a value under the 1 MiB limit, incompressible
    for i in range(args.mb):
        coord.propose(c.cache_set(f"big-{i:04d}", value[:-4] + i.to_bytes(4, "big"), None))
    status = cluster.status(cluster.wait_for_leader())
    assert status is not None
    for i in range(SNAPSHOT_EVERY - status["applied"] + 20):
        coord.propose(c.cache_set(f"small-{i % 50}", b"s", None))
    # Every node serialises and writes the snapshot (seconds for this state, on its event loop:
    # a leader may lose its quorum meanwhile); wait until all are done and a leader is stable.
    until(
        lambda: all(
            log_time(cluster.log_path(n), "snapshot_taken") for n in cluster.ids if n != follower
        ),
        180,
        "no snapshot taken",
    )
    fill_s = time.monotonic() - t0
    leader = stable_leader(cluster)
    snap_index = cluster.status(leader)["snapshot_index"]  # type: ignore[index]
    snap_bytes = snapshot_bytes(cluster.log_path(leader))
    print(f"filled {args.mb} MiB in {fill_s:.1f} s; leader {leader}, snapshot index {snap_index}")
    print(f"snapshot: {snap_bytes / 1e6:.1f} MB (the leader's snapshot_taken line)")

    if args.wipe_follower:
        shutil.rmtree(cluster.base_dir / follower)
    pid = cluster.procs[leader].pid
    load = Load(Coordinator(addrs, cluster.secret, timeout=10, name="bench-load"), args.rate)
    rss: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            kb = vm_rss_kb(pid)
            if kb is not None:
                rss.append((time.monotonic(), kb))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load.start()
    idle_start = time.monotonic()
    time.sleep(args.idle)
    restart = time.monotonic()
    restart_wall = time.time()
    cluster.start_node(follower)
    if not args.wipe_follower:
        host, port = cluster.addresses[follower]
        until(lambda: cluster.status(follower, timeout=0.5) is not None, 30, "n4 did not start")
        joined = coord.new_client().members("add_learner", follower, f"{host}:{port}")
        print(f"added {follower} as a learner: {joined['voters']} + {joined['learners']}")

    def caught_up() -> bool:
        st = cluster.status(follower, timeout=0.5)
        return st is not None and st["applied"] >= snap_index

    until(caught_up, 300, "the follower did not catch up")
    done = time.monotonic()
    time.sleep(1.0)
    load.stop.set()
    load.join(15)
    sampling.set()
    sampler.join()
    log = cluster.log_path(leader)
    send_wall, sent_wall = log_time(log, "snapshot_send"), log_time(log, "snapshot_sent")
    if send_wall is not None and sent_wall is not None:
        # Map the leader's log clock onto our monotonic clock through the restart instant.
        start, end = restart + (send_wall - restart_wall), restart + (sent_wall - restart_wall)
        transfer_s = sent_wall - send_wall
    else:
        start, end, transfer_s = restart, done, float("nan")
    still = cluster.leader()
    idle_rss = [kb for t, kb in rss if idle_start + 0.5 <= t < restart]
    during_rss = [kb for t, kb in rss if start - 0.05 <= t <= end + 0.05]
    base_kb = statistics.median(idle_rss)
    peak_kb = max(during_rss or [0])
    idle = load.between(idle_start, restart)
    during = load.between(start, end)
    catchup = load.between(restart, done)
    after = [
        n
        for n in cluster.ids
        if n != "n4" and (cluster.status(n) or {}).get("snapshot_index") != snap_index
    ]
    writes_since = len(load.samples)
    print(f"steady load: {args.rate:.0f} writes/s of 100 B, {load.errors} errors")
    print(f"transfer (leader snapshot_send -> snapshot_sent): {transfer_s:.2f} s")
    print(f"follower restart -> applied the snapshot index:   {done - restart:.2f} s")
    print(
        f"leader VmRSS: idle median {base_kb / 1024:.1f} MiB, peak during transfer "
        f"{peak_kb / 1024:.1f} MiB, growth {(peak_kb - base_kb) / 1024:.1f} MiB "
        f"({len(during_rss)} samples)"
    )
    for name, xs in (("idle", idle), ("transfer", during), ("restart..caught up", catchup)):
        print(
            f"write latency {name:>18}: n={len(xs):4d} p50 {pct(xs, 50):7.2f} ms  "
            f"p99 {pct(xs, 99):7.2f} ms  max {max(xs, default=float('nan')):7.2f} ms"
        )
    if still != leader:
        print(f"WARNING: the leader changed during the run ({leader} -> {still})")
    if writes_since >= SNAPSHOT_EVERY or after:
        print(f"WARNING: a new snapshot may have been taken during the run ({after})")


if __name__ == "__main__":
    main()
