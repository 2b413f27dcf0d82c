"""A node process tunes CPython's collector once its state is loaded (``gc_policy``), and says so
in its log: ``event=gc_tuned`` with the objects frozen and the thresholds."""

from __future__ import annotations

import re
import time

import pytest

from raft_node.host import gc_policy
from raft_node.testing.launcher import LocalCluster

pytestmark = pytest.mark.realprocess


def _gc_tuned_line(cluster: LocalCluster, node: str, timeout: float = 30.0) -> re.Match | str:
    """The node's ``gc_tuned`` line, or its log's tail if none came within ``timeout``. The
    fixture waits for a leader only, and two nodes make one: the third may still be between
    its ``event_loop`` line and the collection that precedes ``gc_tuned`` (seen in CI)."""
    pattern = re.compile(r"event=gc_tuned node=\S+ frozen=(\d+) thresholds=(\S+)")
    deadline = time.monotonic() + timeout
    while True:
        log = cluster.log_path(node).read_text(errors="replace")
        line = pattern.search(log)
        if line is not None or time.monotonic() > deadline:
            return line or log[-2000:]
        time.sleep(0.1)


def test_every_node_process_runs_with_the_tuned_collector(coordination_cluster: LocalCluster):
    expected = ",".join(map(str, gc_policy.THRESHOLDS))
    for node in coordination_cluster.ids:
        line = _gc_tuned_line(coordination_cluster, node)
        assert isinstance(line, re.Match), line
        assert int(line.group(1)) > 10_000  # Django and the modules, at least
        assert line.group(2) == expected
