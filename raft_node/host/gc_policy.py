"""CPython's cyclic garbage collector, set for a node process.

A node allocates a few containers per write that outlive it: the log entry, the state
machine's record, the watch history's event (a list and a dict; 50,000 are kept). With the
default thresholds (700, 10, 10) the young generation is collected every 700 net allocations,
and every tenth young collection moves the survivors up. So the collector keeps re-examining the
same growing state, and every so often walks all of it: the modules, Django and the state loaded
from disk included.

Measured on a 3-node cluster with 64 writes in flight, 10 s per node (`gc.callbacks`;
2026-12-05, 2-core machine):

- default: about 330 young, 30 middle and 3 full collections, 280-320 ms in all. The full
  collections paused the loop for 69-92 ms each.
- after `tune_for_node`: 11 young collections (at most 13-20 ms each) and no other, 56-71 ms
  in all.
- `bench/cpu_ab.py --rounds 6 --seconds 4 --inflight 1,64` against the default: 64 in flight
  1.12x writes/s and 0.88x the CPU per write (medians of 6 rounds), one client 1.06x and 0.94x.

``gc.freeze()`` moves every object alive at start-up into a generation no collection walks (the
use the ``gc`` documentation gives for long-lived servers). Reference counting still frees those
objects as usual; only a cycle among them that later became garbage would stay until the process
exits. The objects with cycles (the host, the state machine and its parts) live as long as the
process; the records they hold have none: restoring a snapshot over a loaded coordination state
leaves no cyclic garbage (``gc.collect()`` finds 0 objects after it).

Called once per node process (``coordination.node.node_runner.serve``), after the state is loaded
and before the loop starts; never by a library user's process or by in-process test nodes.
"""

from __future__ import annotations

import gc

THRESHOLDS = (20_000, 10, 10)
"""Young, middle and old generation thresholds for a node process (CPython's: 700, 10, 10)."""


def tune_for_node() -> int:
    """Collect once, freeze what survives, and raise the young generation's threshold. Returns
    how many objects were frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return gc.get_freeze_count()
