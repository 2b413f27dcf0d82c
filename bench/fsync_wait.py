"""Which node's fsync does an acknowledged write wait for? One node's ``fdatasync`` and ``fsync``
are made slow on purpose, and a single client times its writes.

    .venv/bin/python bench/fsync_wait.py [--delay-ms 200] [--writes 15] [--skip-etcd]

For raftsync (3 ``run_raft_node`` processes, the engine's key-value state machine) and, when the
``etcd`` binary is installed, a 3-member etcd cluster (``bench/etcd_cluster.py``), one client
sends ``--writes`` 100-byte writes to the leader, one at a time, three times: with no delay,
with the leader's syncs delayed by ``--delay-ms``, and with one follower's delayed. The delay is
``strace``'s fault injection (``-e inject=fdatasync,fsync:delay_exit=...``) on every thread of
that one process, so the call still syncs and then returns late. Both clusters run with a 2 s
election timeout, so a leader whose loop waits out a delayed sync keeps its leadership (the run
checks that the leader is the same after each case).

Why: a Raft write is durable once a majority has it on disk. A system that counts the leader's
copy before the leader's own sync (etcd's raft library updates the leader's progress when it
appends in memory) could acknowledge with one disk holding the write; this shows what each
system waits for in practice rather than what its code appears to allow. A write that waits
for the leader's sync takes at least the delay; one that commits through the undelayed
follower does not. The table gives the median and the maximum in ms. Needs ``strace`` and the
right to trace the node processes (root, or ``ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from raft_node import kvstore
from raft_node.client import RaftClient
from raft_node.testing.launcher import LocalCluster

ROOT = Path(__file__).resolve().parent.parent

STRACE = shutil.which("strace")
ATTACH_S = 10.0  # at most this long for strace to attach to every thread of the process
ELECTION_MS = 2000  # well above any delay asked for: no election while a sync is held back

Write = Callable[[int], object]
Roles = Callable[[], tuple[int, int]]  # (the leader's pid, a follower's pid), asked each time


def timed(write: Write, writes: int) -> tuple[float, float]:
    """(median, max) ms of ``writes`` writes, one at a time."""
    samples = []
    for i in range(writes):
        start = time.perf_counter()
        write(i)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples)


@contextlib.contextmanager
def slow_syncs(pid: int, delay_ms: float) -> Iterator[None]:
    """Every ``fdatasync``/``fsync`` of process ``pid`` (all its threads) returns ``delay_ms``
    late, for the duration of the block."""
    tracer = subprocess.Popen(
        [
            *(STRACE or "strace", "-f", "-qq", "-p", str(pid), "-o", "/dev/null"),
            *("-e", "trace=fdatasync,fsync"),
            *("-e", f"inject=fdatasync,fsync:delay_exit={int(delay_ms * 1000)}"),
        ],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + ATTACH_S
    while not _all_threads_traced(pid):
        if tracer.poll() is not None or time.monotonic() > deadline:
            tracer.kill()
            error = tracer.stderr.read().decode() if tracer.stderr else ""
            raise RuntimeError(f"strace did not attach to every thread of {pid}: {error}")
        time.sleep(0.02)
    try:
        yield
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)


def _all_threads_traced(pid: int) -> bool:
    """Is every thread of ``pid`` traced (``TracerPid`` set in its ``/proc`` status)?"""
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            if fields.get("TracerPid", "0").strip() == "0":
                return False
    return True


def three_cases(write: Write, roles: Roles, args: argparse.Namespace) -> dict[str, tuple]:
    timed(write, 3)  # warm-up: connections, the leader's first entries
    rows: dict[str, tuple] = {"no delay": timed(write, args.writes)}
    for case, delayed in (("leader's syncs delayed", 0), ("one follower's syncs delayed", 1)):
        before = roles()
        with slow_syncs(before[delayed], args.delay_ms):
            rows[case] = timed(write, args.writes)
        if roles()[0] != before[0]:
            raise RuntimeError(f"the leader changed during '{case}': the figures mean nothing")
    return rows


def measure_raftsync(base: Path, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    (base / "raftsync").mkdir()
    timers = {"TICK_INTERVAL_MS": 10, "ELECTION_TICKS": ELECTION_MS // 10, "HEARTBEAT_TICKS": 2}
    with LocalCluster(base / "raftsync", ROOT / "manage.py", settings=timers) as cluster:
        leader = cluster.wait_for_leader(timeout=30)

        def roles() -> tuple[int, int]:
            now = cluster.wait_for_leader(timeout=30)
            follower = next(node for node in cluster.ids if node != now)
            return cluster.procs[now].pid, cluster.procs[follower].pid

        with RaftClient([cluster.addresses[leader]], cluster.secret, timeout=30) as client:

            def write(i: int) -> object:
                return client.propose(kvstore.put(f"k{i}", b"v" * 100))

            return three_cases(write, roles, args)


def measure_etcd(base: Path, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    import grpc
    from aetcd import rpc
    from etcd_cluster import EtcdCluster

    cluster = EtcdCluster(base / "etcd", heartbeat_ms=20, election_ms=ELECTION_MS)
    cluster.start()
    try:
        leader, _term = cluster.wait_for_leader()

        def roles() -> tuple[int, int]:
            now, _term = cluster.wait_for_leader()
            follower = next(member for member in cluster.ids if member != now)
            return cluster.procs[now].pid, cluster.procs[follower].pid

        channel = grpc.insecure_channel(cluster.endpoint(leader))
        stub = rpc.KVStub(channel)

        def write(i: int) -> object:
            return stub.Put(rpc.PutRequest(key=b"k%d" % i, value=b"v" * 100), timeout=30)

        try:
            return three_cases(write, roles, args)
        finally:
            channel.close()
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay-ms", type=float, default=200.0, help="added to each sync (200)")
    ap.add_argument("--writes", type=int, default=15, help="writes per case (15)")
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument("--data-dir", default=None, help="parent of the temporary data directory")
    args = ap.parse_args(argv)
    if STRACE is None:
        print("strace is not installed: apt-get install -y strace", file=sys.stderr)
        return 2
    systems: dict[str, Callable[[Path, argparse.Namespace], dict]] = {"raftsync": measure_raftsync}
    if not args.skip_etcd and shutil.which("etcd"):
        systems["etcd"] = measure_etcd
    with tempfile.TemporaryDirectory(prefix="fsync-wait-", dir=args.data_dir) as tmp:
        results = {name: measure(Path(tmp), args) for name, measure in systems.items()}
    print(f"# fsync_wait: {args.writes} writes per case, syncs delayed by {args.delay_ms:g} ms")
    print("| system | case | median ms | max ms |")
    print("|---|---|--:|--:|")
    for name, rows in results.items():
        for case, (median, worst) in rows.items():
            print(f"| {name} | {case} | {median:.2f} | {worst:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
