"""The memory and restore time of a snapshotted state alone, in a fresh process (for
``bench_growth.py``).

    MALLOC_MMAP_THRESHOLD_=131072 python bench/growth_state.py DATA_DIR    -> one JSON line

Reads the newest snapshot file of a node's data directory and restores it into a new
``Applier(CoordinationMachine())``, as a node does on start. A node's RSS also holds the
snapshot image itself, the log since it, and whatever its allocator kept from earlier
serialisations; here, with Django's imports and the file's bytes already resident before the
first reading, the RSS growth across the restore is the state's own cost, so it tells a state
that costs more per key from an allocator that keeps more. The restore's CPU time is what a
follower pays to install that snapshot (on its event loop).

``ALLOCATOR_ENV`` is the environment ``bench_growth.py`` runs it with. glibc serves a large
allocation with its own mapping, returned when freed, but after freeing one it raises that
threshold to the freed size (up to 32 MiB), so a snapshot-sized buffer under 32 MiB freed
during the restore stays in the heap and in the RSS, and one above does not: that alone made a
100k-key state look 35% dearer per key than a 1M-key one. A fixed threshold keeps it out.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import vm_rss_kb

from coordination.primitives.machine import CoordinationMachine
from raft_node.host.applier import Applier
from raft_node.storage.durable_format import decode_snapshot_file, parse_snapshot_name

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}  # glibc's default, kept fixed


def newest_snapshot(data_dir: Path) -> Path:
    """The snapshot file with the highest index in ``data_dir/snapshots``."""
    files = [
        (key, path)
        for path in (data_dir / "snapshots").iterdir()
        if (key := parse_snapshot_name(path.name)) is not None
    ]
    if not files:
        raise FileNotFoundError(f"no snapshot in {data_dir}")
    return max(files)[1]


def measure(data_dir: Path) -> dict[str, object]:
    path = newest_snapshot(data_dir)
    snap = decode_snapshot_file(path.read_bytes(), path)
    applier = Applier(CoordinationMachine())
    gc.collect()
    before = vm_rss_kb(os.getpid()) or 0
    cpu = time.process_time()
    applier.restore(snap.data)
    restore_cpu = time.process_time() - cpu
    gc.collect()
    after = vm_rss_kb(os.getpid()) or 0
    cache = applier.sm.part("cache").store  # type: ignore[attr-defined]
    return {
        "index": snap.index,
        "bytes": len(snap.data),
        "keys": len(cache.data),
        "state_kb": after - before,
        "restore_cpu_s": restore_cpu,
    }


def main() -> None:
    print(json.dumps(measure(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
