"""The blocking client's queue handles: ``coord.queue(name)`` and the messages it leases.

    q = coord.queue("emails")
    q.put(b"hello", priority=5)
    msg = q.get(wait=5)              # leased to the coordinator's session for 30 s
    msg.ack()                        # or msg.nack(), or let the lease run out

Every call is an operation of ``operations`` run by the coordinator (``coord.run``), so the
handles hold no connection of their own. The asyncio twins are ``aio.AsyncQueue`` and
``aio.AsyncMessage``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import coordination.client.operations as ops
from coordination.client.core import message_fields

__all__ = ["Message", "Queue"]

T = TypeVar("T")


# The handles name what they use of the coordinator and its sessions as protocols: the
# coordinator imports this module, so naming its classes here, even for type checkers only,
# would be an import circle (``tests/test_architecture.py``).
class Session(Protocol):
    @property
    def id(self) -> int: ...


class Coordinator(Protocol):
    @property
    def default_session(self) -> Any: ...

    def run(self, op: ops.Operation[T]) -> T: ...


@dataclass
class Message:
    id: int
    payload: bytes
    priority: int
    delivery_count: int
    queue: Queue = field(repr=False)
    session: Session = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    def ack(self) -> None:
        self.queue.ack(self)

    def nack(self, requeue: bool = True, delay: float = 0.0) -> None:
        self.queue.nack(self, requeue=requeue, delay=delay)

    def touch(self, visibility: float) -> None:
        """Keep the lease for ``visibility`` more seconds (a long-running task)."""
        self.queue.touch(self, visibility)


class Queue:
    """A named priority queue (0..9, higher first; FIFO within a priority)."""

    def __init__(self, coord: Coordinator, name: str) -> None:
        self.coord, self.name = coord, name

    def declare(
        self, max_deliveries: int = 5, dedup_window: float = 300.0, max_depth: int = 100_000
    ) -> dict[str, Any]:
        return self.coord.run(ops.queue_declare(self.name, max_deliveries, dedup_window, max_depth))

    def put(
        self,
        payload: bytes,
        *,
        priority: int = 0,
        dedup_id: str | None = None,
        delay: float = 0.0,
        hold_key: str | None = None,
        tag: str = "",
    ) -> ops.PutResult:
        """Enqueue; returns the message id (a ``PutResult``: an ``int`` with ``duplicate`` and
        ``tag``). With ``dedup_id``, a repeat within the queue's dedup window returns the first
        id and enqueues nothing (exactly-once enqueue). With ``hold_key``, a repeat while the
        first message is still in the queue does the same and carries the first put's ``tag``."""
        op = ops.queue_put(self.name, payload, priority, dedup_id, delay, hold_key, tag)
        return ops.PutResult(self.coord.run(op))

    def put_many(
        self, payloads: list[bytes], *, priority: int = 0, delay: float = 0.0
    ) -> list[ops.PutResult | Exception]:
        """Enqueue up to 1,000 messages in one log entry (one commit instead of one per
        message). Each is its own put, answered in order: its ``PutResult``, or the typed
        exception (returned, not raised) that refused it alone, e.g. ``LimitExceeded`` when
        the queue filled up part-way; the others went in all the same."""
        rows = [ops.put_row(p, priority, None, delay) for p in payloads]
        return self.coord.run(ops.queue_put_many(self.name, rows))

    def get(
        self, *, wait: float = 0.0, visibility: float | None = 30.0, session: Session | None = None
    ) -> Message | None:
        """Lease the next message for ``visibility`` seconds (redelivered if not acked by then,
        or if the session dies; None: for as long as the session lives); ``wait`` blocks up to
        that long for one to arrive."""
        session = session or self.coord.default_session
        row = self.coord.run(ops.queue_get(session.id, self.name, wait, visibility))
        return self._message(row, session) if row else None

    def get_many(
        self,
        max_count: int,
        *,
        wait: float = 0.0,
        visibility: float | None = 30.0,
        session: Session | None = None,
    ) -> list[Message]:
        """Lease up to ``max_count`` messages in one log entry (``[]`` if none came within
        ``wait``); each is then acked, nacked or redelivered on its own."""
        session = session or self.coord.default_session
        op = ops.queue_get_many(session.id, self.name, max_count, wait, visibility)
        return [self._message(row, session) for row in self.coord.run(op)]

    def _message(self, row: dict[str, Any], session: Session) -> Message:
        msg_id, payload, priority, delivery_count, meta = message_fields(row)
        return Message(msg_id, payload, priority, delivery_count, self, session, meta)

    def ack(self, message: Message) -> None:
        self.coord.run(ops.queue_ack(message.session.id, self.name, message.id))

    def ack_many(self, messages: list[Message]) -> list[int]:
        """Ack several messages of one session in one entry; returns the ids that were no longer
        leased to it (they are, or will be, delivered again)."""
        if not messages:
            return []
        if len({m.session.id for m in messages}) != 1:
            raise ValueError("ack_many takes messages leased to one session")
        op = ops.queue_ack_many(messages[0].session.id, self.name, [m.id for m in messages])
        return self.coord.run(op)

    def nack(self, message: Message, requeue: bool = True, delay: float = 0.0) -> None:
        op = ops.queue_nack(message.session.id, self.name, message.id, requeue, delay)
        self.coord.run(op)

    def touch(self, message: Message, visibility: float) -> None:
        self.coord.run(ops.queue_touch(message.session.id, self.name, message.id, visibility))

    def stats(self) -> dict[str, Any]:
        return self.coord.run(ops.queue_stats(self.name))

    def purge(self) -> int:
        return self.coord.run(ops.queue_purge(self.name))

    def delete(self) -> bool:
        """Remove the queue and every message in it (its dead-letter queue stays)."""
        return self.coord.run(ops.queue_delete(self.name))

    def peek(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.coord.run(ops.queue_peek(self.name, limit))

    def dead_letters(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.coord.run(ops.queue_dead_letters(self.name, limit))

    def requeue_dead(self, max_count: int = 1000) -> int:
        return self.coord.run(ops.queue_requeue_dead(self.name, max_count))
