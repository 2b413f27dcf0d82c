"""Prometheus metrics of one node, on a registry of its own (several nodes may share a process
in tests). Served over HTTP by ``serve(port)`` when the node is started with a metrics port.

prometheus-client is optional (``pip install raftsync[metrics]``): without it every metric is a
no-op and ``serve`` raises ``MetricsUnavailable``, so asking for a metrics port fails loudly.
"""

from __future__ import annotations

from typing import Any

from raft_node.core.ready import Role

try:
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        start_http_server,
    )
except ImportError:  # the "metrics" extra is not installed
    CollectorRegistry = None  # type: ignore[assignment,misc]


class MetricsUnavailable(RuntimeError):
    """A metrics port was asked for, but prometheus-client is not installed."""


class _NoMetric:
    """Stands in for a Counter, Gauge or Histogram when prometheus-client is absent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def labels(self, *args: Any, **kwargs: Any) -> _NoMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


if CollectorRegistry is None:
    Counter = Gauge = Histogram = _NoMetric  # type: ignore[assignment,misc]

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry() if CollectorRegistry is not None else None
        labels = {"registry": self.registry}
        self.term = Gauge("raft_term", "Current Raft term", **labels)
        self.role = Gauge(
            "raft_role", "Role: 0 follower, 1 pre-candidate, 2 candidate, 3 leader", **labels
        )
        self.is_leader = Gauge("raft_is_leader", "1 if this node is the leader", **labels)
        self.commit_index = Gauge("raft_commit_index", "Highest committed log index", **labels)
        self.applied_index = Gauge("raft_applied_index", "Highest applied log index", **labels)
        self.snapshot_index = Gauge("raft_snapshot_index", "Index of the latest snapshot", **labels)
        self.elections = Counter("raft_elections_won", "Times this node became leader", **labels)
        self.role_changes = Counter("raft_role_changes", "Role transitions", **labels)
        self.proposals = Counter("raft_proposals", "Client commands proposed as leader", **labels)
        self.proposals_failed = Counter(
            "raft_proposals_failed", "Proposals answered with an error", **labels
        )
        self.reads = Counter("raft_reads", "Client reads served", ["mode"], **labels)
        self.fsync_seconds = Histogram(
            "raft_fsync_seconds", "Duration of one Storage.save", buckets=_LATENCY_BUCKETS, **labels
        )
        self.commit_seconds = Histogram(
            "raft_commit_seconds",
            "Leader: proposal to applied",
            buckets=_LATENCY_BUCKETS,
            **labels,
        )
        self.batch_entries = Histogram(
            "raft_ready_entries",
            "Entries persisted per Ready (group commit size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            **labels,
        )
        self.follower_lag = Gauge(
            "raft_follower_lag_entries", "Leader: entries a follower is behind", ["peer"], **labels
        )
        self.node_id = node_id

    def observe_status(self, role: Role, term: int, commit: int, applied: int, snap: int) -> None:
        self.term.set(term)
        self.role.set(int(role))
        self.is_leader.set(1 if role == Role.LEADER else 0)
        self.commit_index.set(commit)
        self.applied_index.set(applied)
        self.snapshot_index.set(snap)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        if self.registry is None:
            raise MetricsUnavailable(
                "a metrics port needs prometheus-client: pip install 'raftsync[metrics]'"
            )
        start_http_server(port, addr=addr, registry=self.registry)
