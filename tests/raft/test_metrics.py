"""The node's metrics are plain numbers read at scrape time; what a scrape shows must match
what prometheus-client's own Counter/Histogram would have shown."""

from __future__ import annotations

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from raft_node.core.ready import Role  # noqa: E402
from raft_node.host.metrics import NodeMetrics  # noqa: E402


def _scrape(metrics: NodeMetrics) -> dict[str, float]:
    out = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def test_counters_gauges_and_labels_are_scraped():
    m = NodeMetrics("n1")
    m.proposals.inc()
    m.proposals.inc(2)
    m.reads.labels(mode="stale").inc()
    m.reads.labels(mode="linearizable").inc(3)
    m.follower_lag.labels(peer="n2").set(7)
    m.observe_status(Role.LEADER, 4, 9, 8, 2)
    seen = _scrape(m)
    assert seen["raft_proposals_total{}"] == 3
    assert seen["raft_reads_total{mode=stale}"] == 1
    assert seen["raft_reads_total{mode=linearizable}"] == 3
    assert seen["raft_follower_lag_entries{peer=n2}"] == 7
    assert seen["raft_is_leader{}"] == 1 and seen["raft_term{}"] == 4


def test_histogram_buckets_are_cumulative_and_inclusive():
    m = NodeMetrics("n1")
    for value in (0.0001, 0.0003, 0.001, 7.0):  # on a bound counts in that bound's bucket (le)
        m.commit_seconds.observe(value)
    seen = _scrape(m)
    assert seen["raft_commit_seconds_bucket{le=0.0001}"] == 1
    assert seen["raft_commit_seconds_bucket{le=0.0005}"] == 2
    assert seen["raft_commit_seconds_bucket{le=0.001}"] == 3
    assert seen["raft_commit_seconds_bucket{le=2.5}"] == 3
    assert seen["raft_commit_seconds_bucket{le=+Inf}"] == 4
    assert seen["raft_commit_seconds_count{}"] == 4
    assert seen["raft_commit_seconds_sum{}"] == pytest.approx(7.0014)


def test_disabled_metrics_have_no_registry_but_still_count():
    m = NodeMetrics("n1", enabled=False)
    m.proposals.inc()
    m.commit_seconds.observe(0.01)
    assert m.registry is None and m.proposals.value == 1
