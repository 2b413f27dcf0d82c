"""What the cyclic garbage collector costs a node holding N cache keys, in one process.

    .venv/bin/python bench/gc_state.py [--keys 1000000]    -> a few lines and one JSON line

Loads ``--keys`` keys (16-byte keys, 100-byte values, ``cache.set_many`` batches of 1,000, as
``bench_growth.py`` does) into an ``Applier(CoordinationMachine())`` with Django's settings
imported (a node's heap holds them too), then measures, with the collector on as in a node:

- ``full_collection_ms``: one ``gc.collect()``, i.e. what every full collection costs the
  event loop at that state (a node runs one whenever the long-lived objects grew by a quarter);
- ``tracked``: the objects such a collection walks;
- ``snapshot_cpu_s`` / ``restore_cpu_s``: ``Applier.snapshot()`` and ``Applier.restore()`` of
  that state (CPU time of this thread), best of ``--reps``.

Run at two commits (``git archive <commit> | tar -x -C DIR``, then this file from DIR) it shows
what a change to the state's shape or to the snapshot path does; ``bench_growth.py`` measures
the same snapshot on a real cluster, where three nodes and the load share the cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncproject.settings")
    import django

    django.setup()
    from coordination.primitives import commands as c
    from coordination.primitives.machine import CoordinationMachine
    from raft_node.core.messages import Entry
    from raft_node.host.applier import Applier, encode_command

    applier = Applier(CoordinationMachine())
    value = os.urandom(92)
    t0 = time.process_time()
    for n, lo in enumerate(range(0, args.keys, 1000), start=1):
        items = [(f"gk:{i:013d}", value + i.to_bytes(8, "big")) for i in range(lo, lo + 1000)]
        body = c.cache_set_many(items[: args.keys - lo], None)
        applier.apply(Entry(1, n, encode_command("load", n, 1_000 + n, body)))
        applier.sm.drain_events()  # type: ignore[attr-defined]
    load_s = time.process_time() - t0
    gc.collect()
    t0 = time.perf_counter()
    gc.collect()
    full_ms = (time.perf_counter() - t0) * 1000
    tracked = len(gc.get_objects())
    snapshot_s, restore_s = [], []
    for _ in range(args.reps):
        t0 = time.thread_time()
        data = applier.snapshot()
        snapshot_s.append(time.thread_time() - t0)
        copy = Applier(CoordinationMachine())
        t0 = time.thread_time()
        copy.restore(data)
        restore_s.append(time.thread_time() - t0)
        del copy, data
        gc.collect()
    out = {
        "keys": args.keys,
        "load_cpu_s": round(load_s, 2),
        "full_collection_ms": round(full_ms),
        "tracked": tracked,
        "snapshot_cpu_s": round(min(snapshot_s), 3),
        "restore_cpu_s": round(min(restore_s), 3),
    }
    print(
        f"{args.keys:,} keys: a full collection {full_ms:,.0f} ms over {tracked:,} objects;"
        f" snapshot {out['snapshot_cpu_s']} s, restore {out['restore_cpu_s']} s of CPU;"
        f" load {load_s:.1f} s"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
