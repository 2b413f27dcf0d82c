"""What ``@once`` adds to ``delay()`` on ``raft://``: plain ``delay()`` against a ``@once``
task's ``delay()`` (a new key each call: enqueued, key held) and a duplicate ``delay()`` (a key
already held: nothing enqueued, the existing ``AsyncResult`` back), in one run.

    .venv/bin/python bench/bench_once.py [--calls 400]

Starts 3 real node processes (``LocalCluster``, fsync on) and no worker: the producer's side is
what ``@once`` changes (the key is one more msgpack field of the same ``queue.put`` entry; the
worker's ack frees it in the ack's own entry). The three kinds are interleaved call by call, in
a rotating order, so drift in the machine's load hits them alike; the queue is purged every 100
calls so depth does not grow. Prints p50/p95 per kind and the added latency (once minus plain)
at each; nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import percentile  # noqa: E402
from celery import Celery  # noqa: E402

import coordination  # noqa: E402, F401  (registers raft:// with kombu)
from coordination.celery.once import once  # noqa: E402
from coordination.client import Coordinator  # noqa: E402
from raft_node.testing.launcher import LocalCluster  # noqa: E402

MACHINE = "coordination.primitives.machine.CoordinationMachine"
QUEUE = "bench-once"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(
            Path(tmp), ROOT / "manage.py", settings={"STATE_MACHINE": MACHINE, "REDIS_URL": ""}
        )
        cluster.start()
        try:
            cluster.wait_for_leader(timeout=30)
            run(cluster, args.calls)
        finally:
            cluster.stop()


def run(cluster: LocalCluster, calls: int) -> None:
    url = ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())
    app = Celery("bench-once", broker=url, set_as_current=False)
    app.conf.broker_transport_options = {"secret": cluster.secret}
    app.conf.task_default_queue = QUEUE

    @app.task(name="bench.plain", shared=False)
    def plain(n: int) -> None: ...

    @once(key="bench:{n}")
    @app.task(name="bench.once", shared=False)
    def guarded(n: int) -> None: ...

    coord = Coordinator(list(cluster.addresses.values()), cluster.secret)
    kinds = {
        "plain delay()": lambda i: plain.delay(i),
        "@once delay(), new key": lambda i: guarded.delay(i),
        "@once delay(), duplicate": lambda i: guarded.delay(-1),
    }
    for i in range(50):  # warm-up: connections, the queue, the duplicate's holder
        for call in kinds.values():
            call(i + 1_000_000)
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    order = list(kinds)
    for i in range(calls):
        for kind in order[i % 3 :] + order[: i % 3]:  # rotated: no kind always goes first
            call = kinds[kind]
            start = time.perf_counter()
            call(i)
            samples[kind].append((time.perf_counter() - start) * 1000)
        if i % 100 == 99:
            coord.queue(QUEUE).purge()  # also frees the keys (the duplicate's holder too)
            guarded.delay(-1)
    coord.close()
    print(f"{calls} calls of each kind, interleaved; milliseconds per delay()")
    print(f"| {'kind':<26} | {'p50':>6} | {'p95':>6} |")
    print(f"| {'-' * 26} | {'-' * 6}:| {'-' * 6}:|")
    stats = {}
    for kind, values in samples.items():
        values.sort()
        stats[kind] = (percentile(values, 50), percentile(values, 95))
        print(f"| {kind:<26} | {stats[kind][0]:6.2f} | {stats[kind][1]:6.2f} |")
    base = stats["plain delay()"]
    for kind in list(kinds)[1:]:
        p50, p95 = (stats[kind][j] - base[j] for j in (0, 1))
        print(f"added by {kind}: p50 {p50:+.2f} ms, p95 {p95:+.2f} ms")


if __name__ == "__main__":
    main()
