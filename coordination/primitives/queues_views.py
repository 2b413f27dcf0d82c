"""The read-only queries of the ``queues`` part (``queue.stats``, ``queue.peek``...): a mixin of
``Queues``, kept apart so the part's module holds what changes state and nothing else."""

from __future__ import annotations

from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Query
from coordination.primitives.queue_consumers import Consumers
from coordination.primitives.queues_state import DLQ_SUFFIX, QueueState
from coordination.primitives.queues_state import queue_name as _queue_name


class QueueViews:
    """What ``Queues`` answers without a log entry. Needs the part's ``queues``, ``consumers``
    and ``_require``."""

    queues: dict[str, QueueState]
    consumers: Consumers

    def _require(self, name: str) -> QueueState:
        raise NotImplementedError

    def queries(self) -> dict[str, Query]:
        return {
            "queue.stats": self.stats,
            "queue.list": self.list,
            "queue.peek": self.peek,
            "queue.dead_letters": self.dead_letters,
            "queue.held": self.held_keys,
            "queue.pushed": lambda args: self.consumers.pushed(args, self._view),
        }

    def stats(self, args: list[Any]) -> dict[str, Any]:
        (name,) = limits.args(args, 1, "queue.stats")
        return self._stats(self._require(_queue_name(name)))

    def list(self, args: list[Any]) -> list[dict[str, Any]]:
        limits.args(args, 0, "queue.list")
        return [self._stats(self.queues[name]) for name in sorted(self.queues)]

    def peek(self, args: list[Any]) -> list[dict[str, Any]]:
        """``[name, limit]`` -> up to ``limit`` ready messages in delivery order, not leased."""
        name, limit = limits.args(args, 2, "queue.peek")
        q = self._require(_queue_name(name))
        limit = limits.integer(limit, (1, limits.BATCH_MAX), "limit")
        return [q.view(mid) for mid in q.ready_in_order(limit)]

    def dead_letters(self, args: list[Any]) -> list[dict[str, Any]]:
        """``[name, limit]`` -> up to ``limit`` ready messages of ``name.dlq`` in its order."""
        name, limit = limits.args(args, 2, "queue.dead_letters")
        self._require(_queue_name(name))
        limit = limits.integer(limit, (1, limits.BATCH_MAX), "limit")
        dlq = self.queues.get(name + DLQ_SUFFIX)
        return [] if dlq is None else [dlq.view(mid) for mid in dlq.ready_in_order(limit)]

    def held_keys(self, args: list[Any]) -> list[dict[str, Any]]:
        """``[prefix, limit]`` -> up to ``limit`` held keys (``queues_keys``) starting with
        ``prefix``, by queue name then put order: ``{"queue", "key", "tag", "id", "state"
        (ready, delayed or in_flight), "priority", "delivery_count", "session" and
        "lease_expires_ms" (of the lease, None unless in flight), "visible_at_ms" (delayed)}``.
        A held key lives exactly as long as its message, so this is every key a put would
        refuse right now: how an operator sees which ``@once`` tasks are queued or running."""
        prefix, limit = limits.prefix_and_limit(args, "queue.held")
        assert limit is not None
        rows: list[dict[str, Any]] = []
        for name in sorted(self.queues):
            rows += self.queues[name].held_rows(prefix)[: limit - len(rows)]
            if len(rows) >= limit:
                break
        return rows

    def _stats(self, q: QueueState) -> dict[str, Any]:
        dlq = None if q.is_dlq else self.queues.get(q.name + DLQ_SUFFIX)
        stats = q.stats(len(dlq.messages) if dlq is not None else 0)
        stats["subscribers"] = self.consumers.count(q.name)
        return stats

    def _view(self, name: str, mid: int) -> dict[str, Any]:
        return self.queues[name].view(mid)
