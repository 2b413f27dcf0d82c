"""Prometheus metrics of one node, on a registry of its own (several nodes may share a process
in tests). Served over HTTP by ``serve(port)`` when the node is started with a metrics port.

prometheus-client is optional (``pip install raftsync[metrics]``): without it the numbers are
still kept (an update is an add) but nothing serves them, and ``serve`` raises
``MetricsUnavailable``, so asking for a metrics port fails loudly.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from raft_node.core.ready import Role

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
except ImportError:  # the "metrics" extra is not installed
    CollectorRegistry = None  # type: ignore[assignment,misc]


class MetricsUnavailable(RuntimeError):
    """A metrics port was asked for, but prometheus-client is not installed."""


class _Metric:
    """One metric's values, kept as plain numbers and updated by the node's event-loop thread
    only. prometheus-client's own Counter/Histogram take a lock on every update, and the node
    updates several per operation; here an update is an attribute add, and the registry reads
    the numbers when scraped (``_Collector``), from its own thread. A scrape may see an update
    half-way through a histogram (its count one ahead of a bucket): harmless for monitoring.

    ``labels`` gives a child per label value, as prometheus-client does."""

    kind = ""

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.doc, self.labelnames = name, doc, labelnames
        self.children: dict[tuple[str, ...], Any] = {}
        self.value = 0.0

    def labels(self, *values: Any, **named: Any) -> Any:
        key = tuple(str(v) for v in values) or tuple(str(named[n]) for n in self.labelnames)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self._child()
        return child

    def _child(self) -> Any:
        return type(self)(self.name, self.doc)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value

    def series(self) -> Iterator[tuple[tuple[str, ...], Any]]:
        if self.labelnames:
            yield from self.children.items()
        else:
            yield (), self


class _Counter(_Metric):
    kind = "counter"


class _Gauge(_Metric):
    kind = "gauge"


class _Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, doc: str, labelnames: tuple[str, ...] = (), *, buckets: tuple = ()
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def _child(self) -> _Histogram:
        return _Histogram(self.name, self.doc, buckets=self.bounds)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Collector:
    """Builds the metric families from the plain values when the registry is scraped."""

    def __init__(self, metrics: list[_Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        for metric in self.metrics:
            labels = list(metric.labelnames)
            if metric.kind == "counter":
                family: Any = CounterMetricFamily(metric.name, metric.doc, labels=labels)
            elif metric.kind == "gauge":
                family = GaugeMetricFamily(metric.name, metric.doc, labels=labels)
            else:
                family = HistogramMetricFamily(metric.name, metric.doc, labels=labels)
            for key, series in list(metric.series()):
                if isinstance(series, _Histogram):
                    cumulative, running = [], 0
                    for bound, count in zip(
                        (*series.bounds, float("inf")), list(series.counts), strict=True
                    ):
                        running += count
                        cumulative.append((_bound(bound), running))
                    family.add_metric(list(key), cumulative, series.sum)
                else:
                    family.add_metric(list(key), series.value)
            yield family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


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
        """``enabled=False``: no registry (the simulator's thousands of short-lived nodes, which
        nobody scrapes); the metrics still count, which costs an add."""
        enabled = enabled and CollectorRegistry is not None
        self.enabled = enabled
        made: list[_Metric] = []

        def track(cls: type[_Metric]) -> Any:
            def make(name: str, doc: str, labelnames: Any = (), **kwargs: Any) -> Any:
                metric = cls(name, doc, tuple(labelnames), **kwargs)
                made.append(metric)
                return metric

            return make

        counter, gauge, histogram = track(_Counter), track(_Gauge), track(_Histogram)
        labels: dict[str, Any] = {}
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
        self.fsync_enabled = gauge(
            "raft_fsync_enabled",
            "1 if the node syncs its log before it answers; 0 with UNSAFE_NO_FSYNC (tests only)",
            **labels,
        )
        self.follower_lag = gauge(
            "raft_follower_lag_entries", "Leader: entries a follower is behind", ["peer"], **labels
        )
        self.node_id = node_id
        self.registry = None
        if enabled:
            self.registry = CollectorRegistry()
            self.registry.register(_Collector(made))

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
