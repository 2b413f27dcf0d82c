"""``gc_policy.tune_for_node``: run in a fresh interpreter, since it changes the whole process's
collector (and the test process must keep CPython's defaults)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import gc, json
from raft_node.host import gc_policy
before = gc.get_threshold()
frozen = gc_policy.tune_for_node()
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after the freeze: still collected
del a, b
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen,
                  "count": gc.get_freeze_count(), "collected": gc.collect()}))
"""


def test_tuning_freezes_the_start_up_heap_raises_the_thresholds_and_still_collects_cycles():
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["before"] == [700, 10, 10]
    assert result["after"] == [20_000, 10, 10]
    assert result["frozen"] == result["count"] > 1_000  # the modules' objects at least
    assert result["collected"] >= 2  # the two objects of the new cycle
