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
    _Counter = _Gauge = _Histogram = _NoMetric
else:
    _Counter, _Gauge, _Histogram = Counter, Gauge, Histogram

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
    def __init__(self, node_id: str, *, enabled: bool = True) -> None:
        """``enabled=False``: every metric is a no-op (the simulator's thousands of short-lived
        nodes, which nobody scrapes)."""
        enabled = enabled and CollectorRegistry is not None
        self.registry = CollectorRegistry() if enabled else None
        self.enabled = enabled
        labels: dict[str, Any] = {"registry": self.registry}
        counter, gauge, histogram = (
            (_Counter, _Gauge, _Histogram) if enabled else (_NoMetric, _NoMetric, _NoMetric)
        )
        self.term = gauge("raft_term", "Current Raft term", **labels)
        self.role = gauge(
            "raft_role", "Role: 0 follower, 1 pre-candidate, 2 candidate, 3 leader", **labels
        )
        self.is_leader = gauge("raft_is_leader", "1 if this node is the leader", **labels)
        self.commit_index = gauge("raft_commit_index", "Highest committed log index", **labels)
        self.applied_index = gauge("raft_applied_index", "Highest applied log index", **labels)
        self.snapshot_index = gauge("raft_snapshot_index", "Index of the latest snapshot", **labels)
        self.elections = counter("raft_elections_won", "Times this node became leader", **labels)
        self.role_changes = counter("raft_role_changes", "Role transitions", **labels)
        self.proposals = counter("raft_proposals", "Client commands proposed as leader", **labels)
        self.proposals_failed = counter(
            "raft_proposals_failed", "Proposals answered with an error", **labels
        )
        self.proposals_refused = counter(
            "raft_proposals_refused",
            "Client commands the state machine's validate refused before proposing (no entry)",
            **labels,
        )
        self.reads = counter("raft_reads", "Client reads served", ["mode"], **labels)
        self.fsync_seconds = histogram(
            "raft_fsync_seconds", "Duration of one Storage.save", buckets=_LATENCY_BUCKETS, **labels
        )
        self.commit_seconds = histogram(
            "raft_commit_seconds",
            "Leader: proposal to applied",
            buckets=_LATENCY_BUCKETS,
            **labels,
        )
        self.batch_entries = histogram(
            "raft_ready_entries",
            "Entries persisted per Ready (group commit size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            **labels,
        )
        self.follower_lag = gauge(
            "raft_follower_lag_entries", "Leader: entries a follower is behind", ["peer"], **labels
        )
        self.node_id = node_id

    def observe_status(self, role: Role, term: int, commit: int, applied: int, snap: int) -> None:
        if not self.enabled:
            return
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
