"""Releasing L1 registrations the cache client evicted, off the reader's thread.

When the L1 is full, taking a new key evicts the least recently used one. If that entry was
registered with the cluster (linearizable mode), the cluster still counts this session as a
holder, and any write to the key waits until the registration is released or its lease runs out.
Releasing is a ``cache.release`` proposal, a cluster round trip that the ``get`` that caused the
eviction should not wait for. One worker thread per cache client sends them (it used to be one
new thread per evicted key): evictions queued while a release is in flight go out together, as
one proposal of up to ``BATCH`` pairs, in eviction order.

A release that fails is not retried: the registration's lease runs out anyway, and a write
waits at most that long. Releases name the registration (``[key, registration]``), so one that
arrives after this process re-filled the key cannot drop the newer registration.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from coordination.primitives.limits import BATCH_MAX

__all__ = ["ReleaseWorker"]

BATCH = BATCH_MAX  # pairs per cache.release proposal (the state machine's limit)
Pair = tuple[str, int]  # (key, registration)


class ReleaseWorker:
    """Sends ``release(pairs)`` for submitted pairs from one daemon thread, started on first
    use. ``release`` must not raise (the cache client's ``_release`` swallows failures)."""

    def __init__(self, release: Callable[[list[Pair]], None], name: str = "cache-release") -> None:
        self._release = release
        self._name = name
        self._pending: list[Pair] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, pairs: list[Pair]) -> None:
        """Queue ``pairs`` for release; returns at once."""
        with self._cond:
            if self._closed:
                return
            self._pending.extend(pairs)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, then stop the thread (waiting at most ``timeout`` seconds)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and drained
                batch = self._pending[:BATCH]
                del self._pending[:BATCH]
            self._release(batch)
