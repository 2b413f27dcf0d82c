"""The product's clients of a raftsync cluster, one room: everything a process holds to talk to it.

- ``coordinator``: ``Coordinator`` (blocking: locks, sessions, queues, cache, results);
- ``aio``: ``AsyncCoordinator``, the same operations for asyncio code;
- ``cache``: ``Cache``, the replicated cache with a per-process L1 and optional Redis reads;
- ``results``: the Celery result store's client side.

They talk to the engine only through ``raft_node.client``; the commands they send are built by
``coordination.primitives.commands``, the state machine's own vocabulary.
"""

from coordination.client.coordinator import (
    EXCLUSIVE,
    SHARED,
    WAIT_MARGIN,
    Coordinator,
    Lock,
    Message,
    Queue,
    Session,
)

__all__ = [
    "EXCLUSIVE",
    "SHARED",
    "WAIT_MARGIN",
    "Coordinator",
    "Lock",
    "Message",
    "Queue",
    "Session",
]
