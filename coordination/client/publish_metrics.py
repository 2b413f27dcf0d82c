"""Prometheus counters of unconfirmed publishes (``confirm_publish=False``), in the process that
publishes: a Celery producer, a web worker.

An unconfirmed publish has returned before its put committed, so a put that fails afterwards
cannot be raised to its caller; ``put_pipeline`` logs it (``event=publish_failed``). Logs are
read after the fact; a counter can be alerted on. ``raftsync_unconfirmed_publishes_total``
counts every handed-over put once its outcome is known, by ``queue`` and ``outcome``:

- ``queued``: committed;
- ``failed``: refused (a full queue, a payload over the limit) or lost with the cluster (no
  leader for the client's whole timeout): not queued;
- ``unknown``: the batch's outcome is unknown (it may be queued);
- ``lost``: still waiting to be sent when the pipeline closed (not queued).

The counter is in ``prometheus_client``'s default registry, which the usual exporters serve
(``django-prometheus``, ``prometheus_client.start_http_server``, a multiprocess collector for
prefork pools). Without the ``metrics`` extra installed, nothing is counted and nothing fails.
It is updated once per batch and outcome by the sending thread, never per ``delay()`` call.
"""

from __future__ import annotations

from typing import Any

OUTCOMES = ("queued", "failed", "unknown", "lost")

try:
    from prometheus_client import Counter
except ImportError:  # the "metrics" extra is not installed
    Counter = None  # type: ignore[assignment,misc]

_counter: Any = None


def _publishes() -> Any:
    """The counter, made on first use (so importing this module registers nothing)."""
    global _counter
    if _counter is None and Counter is not None:
        _counter = Counter(
            "raftsync_unconfirmed_publishes",
            "Unconfirmed publishes (raft:// confirm_publish=False) by their final outcome.",
            ["queue", "outcome"],
        )
    return _counter


def count(queue: str, outcome: str, n: int) -> None:
    """Add ``n`` puts to ``queue`` that ended ``outcome`` (one of ``OUTCOMES``)."""
    if n <= 0:
        return
    counter = _publishes()
    if counter is not None:
        counter.labels(queue=queue, outcome=outcome).inc(n)
