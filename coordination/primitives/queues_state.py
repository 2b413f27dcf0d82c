"""One queue's data structures (used by ``coordination.primitives.queues``; see its design notes).

A message is ``id -> [payload, priority, delivery_count, dead_letter]`` in ``messages`` and sits in
exactly one of three places, recorded by membership:

- ``ready``: a heap of ``(PRIORITY_MAX - priority, id)``: the top is the highest priority, then the
  lowest id (FIFO, because ids are increasing log indexes). A requeued message goes back under
  its own id, so it is retried before newer messages of its priority. Only the top is ever
  removed (``pop_ready``) except by ``purge``, which clears the heap, so no lazy deletion here.
- ``delayed``: ``id -> visible_at_ms``;
- ``inflight``: ``id -> [session, lease_deadline_ms]`` (deadline None: held until the session ends).

A message put with a *held* key (``coordination.primitives.queues_keys``) is in ``held``
(``key -> [id, tag]``) and ``held_of`` (``id -> key``) for exactly as long as it is in
``messages``: every removal goes through ``remove``, which frees the key in the same entry.

``dead_letter`` is ``None``, or for a message in a dead-letter queue the dict
``{"reason", "from_queue", "delivery_count", "original_id"}``.
"""

from __future__ import annotations

import heapq
from typing import Any

from coordination.primitives import limits
from coordination.primitives.errors import LIMIT, reject

DLQ_SUFFIX = ".dlq"
PRIORITIES = limits.PRIORITY_MAX - limits.PRIORITY_MIN + 1
MAX_QUEUES_PER_WAIT = 32  # queues one get_any or subscription may name


def is_dlq(name: str) -> bool:
    return name.endswith(DLQ_SUFFIX)


def queue_name(value: Any) -> str:
    """A valid queue name: a name that leaves room for its dead-letter queue's suffix."""
    name = limits.name(value, "queue name")
    if not is_dlq(name) and len(name.encode()) + len(DLQ_SUFFIX) > limits.NAME_MAX_BYTES:
        reject(
            LIMIT,
            f"queue name longer than {limits.NAME_MAX_BYTES - len(DLQ_SUFFIX)} bytes "
            f"(its dead-letter queue name needs {len(DLQ_SUFFIX)} more)",
        )
    return name


class QueueState:
    __slots__ = (
        "dedup",
        "dedup_window_ms",
        "delayed",
        "dropped",
        "held",
        "held_of",
        "inflight",
        "max_deliveries",
        "max_depth",
        "messages",
        "name",
        "ready",
        "ready_by_priority",
        "total_acked",
        "total_dead_lettered",
        "total_put",
        "waiters",
    )

    def __init__(
        self, name: str, max_deliveries: int, dedup_window_ms: int, max_depth: int
    ) -> None:
        self.name = name
        self.max_deliveries = max_deliveries
        self.dedup_window_ms = dedup_window_ms
        self.max_depth = max_depth
        self.messages: dict[int, list[Any]] = {}
        self.ready: list[tuple[int, int]] = []
        self.ready_by_priority = [0] * PRIORITIES
        self.delayed: dict[int, int] = {}
        self.inflight: dict[int, list[Any]] = {}
        self.waiters: dict[int, None] = {}  # tokens of blocked gets, FIFO
        self.dedup: dict[str, list[int]] = {}  # dedup_id -> [msg_id, expires_ms], oldest first
        self.held: dict[str, list[Any]] = {}  # held key -> [msg_id, tag], put order
        self.held_of: dict[int, str] = {}  # msg_id -> its held key
        self.total_put = 0
        self.total_acked = 0
        self.total_dead_lettered = 0  # sent to the DLQ (or dropped) from this queue
        self.dropped = 0  # dead-lettered but dropped: this is a DLQ, or the DLQ was full

    @property
    def is_dlq(self) -> bool:
        return is_dlq(self.name)

    # -- the ready heap -------------------------------------------------------------------------

    def push_ready(self, mid: int) -> None:
        priority = self.messages[mid][1]
        heapq.heappush(self.ready, (limits.PRIORITY_MAX - priority, mid))
        self.ready_by_priority[priority] += 1

    def pop_ready(self) -> int:
        _, mid = heapq.heappop(self.ready)
        self.ready_by_priority[self.messages[mid][1]] -= 1
        return mid

    def ready_in_order(self, limit: int) -> list[int]:
        return [mid for _, mid in heapq.nsmallest(limit, self.ready)]

    def clear_ready(self) -> list[int]:
        ids = [mid for _, mid in self.ready]
        self.ready = []
        self.ready_by_priority = [0] * PRIORITIES
        return ids

    # -- held keys ------------------------------------------------------------------------------

    def hold(self, key: str, mid: int, tag: str) -> None:
        self.held[key] = [mid, tag]
        self.held_of[mid] = key

    def held_rows(self, prefix: str) -> list[dict[str, Any]]:
        """This queue's held keys starting with ``prefix``, in put order, each with where its
        message is now (the ``queue.held`` query: what the admin shows of ``@once`` keys)."""
        return [
            self.held_view(key, mid, tag)
            for key, (mid, tag) in self.held.items()
            if key.startswith(prefix)
        ]

    def held_view(self, key: str, mid: int, tag: str) -> dict[str, Any]:
        _, priority, count, _ = self.messages[mid]
        lease = self.inflight.get(mid)
        if lease is not None:
            state = "in_flight"
        elif mid in self.delayed:
            state = "delayed"
        else:
            state = "ready"
        return {
            "queue": self.name,
            "key": key,
            "tag": tag,
            "id": mid,
            "state": state,
            "priority": priority,
            "delivery_count": count,
            "session": lease[0] if lease is not None else None,
            "lease_expires_ms": lease[1] if lease is not None else None,
            "visible_at_ms": self.delayed.get(mid),
        }

    def remove(self, mid: int) -> list[Any]:
        """Take ``mid`` out of ``messages`` (the caller has taken it out of ready, delayed or
        in flight) and free its held key: the one way a message leaves a queue."""
        key = self.held_of.pop(mid, None)
        if key is not None:
            del self.held[key]
        return self.messages.pop(mid)

    # -- views ----------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_deliveries": self.max_deliveries,
            "dedup_window_ms": self.dedup_window_ms,
            "max_depth": self.max_depth,
        }

    def view(self, mid: int) -> dict[str, Any]:
        payload, priority, count, dead = self.messages[mid]
        lease = self.inflight.get(mid)
        return {
            "id": mid,
            "payload": payload,
            "priority": priority,
            "delivery_count": count,
            "queue": self.name,
            "dead_letter": dict(dead) if dead is not None else None,
            "lease_expires_ms": lease[1] if lease is not None else None,
        }

    def stats(self, dead_letters: int) -> dict[str, Any]:
        return {
            **self.config(),
            "depth": len(self.messages),
            "depth_by_priority": {str(p): n for p, n in enumerate(self.ready_by_priority)},
            "ready": len(self.ready),
            "delayed": len(self.delayed),
            "in_flight": len(self.inflight),
            "dead_letters": dead_letters,
            "consumers_waiting": len(self.waiters),
            "total_put": self.total_put,
            "total_acked": self.total_acked,
            "total_dead_lettered": self.total_dead_lettered,
            "dropped": self.dropped,
        }

    # -- snapshots ------------------------------------------------------------------------------

    def to_state(self) -> list[Any]:
        return [
            self.name,
            self.max_deliveries,
            self.dedup_window_ms,
            self.max_depth,
            [self.total_put, self.total_acked, self.total_dead_lettered, self.dropped],
            [[mid, *msg] for mid, msg in self.messages.items()],
            list(self.ready),  # the heap array as is: restoring it gives the identical heap
            list(self.delayed.items()),
            [[mid, *lease] for mid, lease in self.inflight.items()],
            [[key, *entry] for key, entry in self.dedup.items()],
            list(self.waiters),
            [[key, *entry] for key, entry in self.held.items()],  # optional: absent before
        ]

    @classmethod
    def from_state(cls, state: list[Any]) -> QueueState:
        name, max_deliveries, window, depth, counters, msgs, ready, delayed, inflight, dedup, w = (
            state[:11]
        )
        q = cls(name, max_deliveries, window, depth)
        q.total_put, q.total_acked, q.total_dead_lettered, q.dropped = counters
        q.messages = {row[0]: list(row[1:]) for row in msgs}
        q.ready = [(key, mid) for key, mid in ready]
        for _, mid in q.ready:
            q.ready_by_priority[q.messages[mid][1]] += 1
        q.delayed = {mid: at for mid, at in delayed}
        q.inflight = {row[0]: list(row[1:]) for row in inflight}
        q.dedup = {row[0]: list(row[1:]) for row in dedup}
        q.waiters = dict.fromkeys(w)
        for key, mid, tag in state[11] if len(state) > 11 else ():  # older snapshots: none
            q.hold(key, mid, tag)
        return q
