"""Queued cache writes: writes that wait for L1 holders, kept per key in log order.

A queued write is stored *decoded* (already validated), as ``[kind, args, keys, wait]`` under
its token (the index of its own entry, also the version it writes):

- ``keys``: the distinct keys it touches (``None`` for ``clear``, which touches every key);
- ``wait``: the keys whose holders must be gone before it may take effect (``None`` for
  ``clear``, which waits for every registration).

``by_key`` gives each key's queue (tokens, FIFO = log order) and ``clears`` the queued clears.
A write may take effect when it is at the head of each of its keys' queues, no earlier clear is
queued, and no key in ``wait`` is held; a clear, when it is the oldest queued write of all and no
registration is left. Only ``ops`` is replicated state: the rest is derived from it.

Bounds: at most ``QUEUE_MAX`` queued writes per key and ``QUEUED_MAX`` in all (more is rejected
with ``limit_exceeded``). No registration is accepted on a key while writes are queued on it
(on any key while a clear is queued), so a queued write waits at most for leases taken before
it was applied: ``LEASE_MS`` max (60 s) plus the tick that notices the lease ran out.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from coordination.primitives.errors import LIMIT, reject

QUEUE_MAX = 1000  # queued writes per key
QUEUED_MAX = 100_000  # queued writes in all


class WriteQueue:
    def __init__(self) -> None:
        self.ops: dict[int, list[Any]] = {}  # token -> [kind, args, keys, wait]; log order
        self.by_key: dict[str, deque[int]] = {}
        self.clears: deque[int] = deque()

    def __len__(self) -> int:
        return len(self.ops)

    def busy(self, key: str) -> bool:
        """Writes wait on ``key``: it may not be registered in an L1 now."""
        return bool(self.clears) or key in self.by_key

    def blocks(self, keys: list[str] | None) -> bool:
        """A new write on ``keys`` (None: clear) must queue behind earlier ones."""
        if not self.ops:  # the usual case: nothing waits for L1 holders
            return False
        if keys is None or self.clears:
            return True
        by_key = self.by_key
        return any(key in by_key for key in keys)

    def check_room(self, keys: list[str] | None) -> None:
        if len(self.ops) >= QUEUED_MAX:
            reject(LIMIT, f"{QUEUED_MAX} cache writes already wait for L1 holders")
        for key in keys or ():
            queue = self.by_key.get(key)
            if queue is not None and len(queue) >= QUEUE_MAX:
                reject(LIMIT, f"{QUEUE_MAX} writes already wait for L1 holders of {key!r}")

    def push(self, token: int, kind: str, args: list[Any], keys: Any, wait: Any) -> None:
        self.ops[token] = [kind, args, keys, wait]
        if keys is None:
            self.clears.append(token)
            return
        for key in keys:
            self.by_key.setdefault(key, deque()).append(token)

    def head(self, key: str) -> int | None:
        queue = self.by_key.get(key)
        return queue[0] if queue else None

    def first(self) -> int | None:
        return next(iter(self.ops), None)

    def at_front(self, token: int) -> bool:
        """No earlier queued write shares a key with ``token`` (or is a clear)."""
        keys = self.ops[token][2]
        if keys is None:
            return self.first() == token
        if self.clears and self.clears[0] < token:
            return False
        return all(self.by_key[key][0] == token for key in keys)

    def pop(self, token: int) -> list[Any]:
        """Remove ``token`` (which must be at the front) and return its record."""
        op = self.ops.pop(token)
        keys = op[2]
        if keys is None:
            self.clears.popleft()
            return op
        for key in keys:
            queue = self.by_key[key]
            queue.popleft()
            if not queue:
                del self.by_key[key]
        return op

    def to_state(self) -> Any:
        return [[token, *op] for token, op in self.ops.items()]

    def from_state(self, state: Any) -> None:
        self.ops, self.by_key, self.clears = {}, {}, deque()
        for token, kind, args, keys, wait in state:
            self.push(token, kind, args, keys, wait)
