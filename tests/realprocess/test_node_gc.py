"""A node process tunes CPython's collector once its state is loaded (``gc_policy``), and says so
in its log: ``event=gc_tuned`` with the objects frozen and the thresholds."""

from __future__ import annotations

import re

import pytest

from raft_node.host import gc_policy
from raft_node.testing.launcher import LocalCluster

pytestmark = pytest.mark.realprocess


def test_every_node_process_runs_with_the_tuned_collector(coordination_cluster: LocalCluster):
    expected = ",".join(map(str, gc_policy.THRESHOLDS))
    for node in coordination_cluster.ids:
        log = coordination_cluster.log_path(node).read_text(errors="replace")
        line = re.search(r"event=gc_tuned node=\S+ frozen=(\d+) thresholds=(\S+)", log)
        assert line is not None, log[-2000:]
        assert int(line.group(1)) > 10_000  # Django and the modules, at least
        assert line.group(2) == expected
