"""ReadIndex bookkeeping on the leader (Raft thesis section 6.4).

A read is linearizable if it is served at an index ``>= `` the leader's commit index at the time
the request arrived, *and* the leader proves it was still leader at that time by hearing from a
quorum afterwards. Each request is queued with that commit index and a context; heartbeats carry
the newest context; a quorum of acknowledgements for a context also confirms every request queued
before it (their heartbeats, or later ones, went to the same quorum after they arrived).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raft_node.core.messages import Message, NodeId


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read the host may serve once its applied index reaches ``index``."""

    index: int
    context: bytes


@dataclass(slots=True)
class _PendingRead:
    index: int
    request: Message
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self._pending: dict[bytes, _PendingRead] = {}
        self._queue: list[bytes] = []

    def add_request(self, index: int, request: Message) -> None:
        ctx = request.context
        if ctx in self._pending:
            return  # duplicate delivery of the same request
        self._pending[ctx] = _PendingRead(index, request)
        self._queue.append(ctx)

    def recv_ack(self, node: NodeId, ctx: bytes) -> set[NodeId] | None:
        pending = self._pending.get(ctx)
        if pending is None:
            return None
        pending.acks.add(node)
        return pending.acks

    def advance(self, ctx: bytes) -> list[tuple[int, Message]]:
        """Release the request ``ctx`` and every request queued before it."""
        if ctx not in self._pending:
            return []
        released: list[tuple[int, Message]] = []
        while self._queue:
            head = self._queue.pop(0)
            pending = self._pending.pop(head)
            released.append((pending.index, pending.request))
            if head == ctx:
                break
        return released

    def last_pending_context(self) -> bytes:
        return self._queue[-1] if self._queue else b""

    def __len__(self) -> int:
        return len(self._queue)
