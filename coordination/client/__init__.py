"""The product's clients of a raftsync cluster, one room: everything a process holds to talk to it.

- ``operations`` and ``core``: the sans-I/O client core (every call as data; locks' and
  sessions' bookkeeping), shared by the two clients below so they cannot drift apart;
- ``coordinator``: ``Coordinator`` (blocking: locks, sessions, queues, cache, results);
- ``queue_handles``: the blocking client's ``Queue`` and ``Message`` (``coord.queue(name)``);
- ``aio``: ``AsyncCoordinator``, the same operations for asyncio code (it only waits otherwise);
- ``semaphores``: the semaphore handles of both clients (``coord.semaphore(name, limit)``);
- ``cache``: ``Cache``, the replicated cache with a per-process L1 and optional Redis reads;
- ``results``: the Celery result store's client side;
- ``ratelimit``: handles on the cluster's token buckets (``coord.rate_limit(key, "100/m")``);
- ``watch``: ``coord.watch(prefix, since_version)``, the cache and lock change history as an
  iterator that resumes across reconnects (sync and asyncio).

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
