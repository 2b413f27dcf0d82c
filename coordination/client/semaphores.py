"""Semaphore handles for both clients: ``coord.semaphore(name, limit)``.

    with coord.semaphore("reports", 3, wait=30) as slot:      # Coordinator
        write_report(fenced_by=slot.token)
    async with acoord.semaphore("reports", 3, wait=30) as slot:  # AsyncCoordinator
        ...

A handle is one ``(session, owner)``'s claim on a slot of a named semaphore (the state machine
is ``coordination.primitives.semaphores``: FIFO fair, session-bound, fenced). ``SlotHold`` is
the sans-I/O half both handles share (what to send, what the answers mean, as ``core.LockHold``
is for locks); ``Semaphore`` blocks and ``AsyncSemaphore`` awaits, nothing else differs.

``wait``: None or 0 tries once; seconds wait in the semaphore's FIFO queue, served by the leader
(no polling). Re-acquiring with the same handle (same session and owner) re-enters the slot.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import coordination.client.operations as ops
from coordination.client.core import BlockingHold, FencedHold, require_current
from coordination.errors import LIMIT, build
from coordination.exceptions import SemaphoreNotAcquired
from coordination.primitives import limits

# The handles take their coordinator and session untyped (``Any``): the clients import this
# module, and naming their classes here, even for type checkers only, would be an import circle.

__all__ = ["AsyncSemaphore", "Semaphore", "SlotHold", "check_limit"]


def check_limit(limit: Any) -> int:
    """``limit`` if it is a valid slot count, else ``LimitExceeded`` (the cluster's own error
    for it, raised before anything is sent: a decorator fails when applied, not when run)."""
    lo, hi = limits.SEMAPHORE_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool) or not lo <= limit <= hi:
        raise build(LIMIT, f"semaphore limit must be an integer in [{lo}, {hi}], got {limit!r}")
    return limit


class SlotHold(FencedHold):
    """One (session, owner)'s slot of a semaphore: token and re-entry count, and the
    operations that acquire and release it."""

    def __init__(self, name: str, limit: int, owner: str, wait: float | None) -> None:
        self.name, self.limit, self.owner, self.wait = name, check_limit(limit), owner, wait
        self._init_hold()

    def _acquire_base(self, session_id: int, wait: float) -> ops.Operation[Any]:
        return ops.sem_acquire(session_id, self.name, self.limit, self.owner, wait)

    def _release_base(self, session_id: int) -> ops.Operation[Any]:
        return ops.sem_release(session_id, self.name, self.owner)

    def _check_op(self) -> ops.Operation[bool]:
        return ops.sem_check_token(self.name, self.token or 0)


class Semaphore(BlockingHold, SlotHold):
    """A blocking handle; ``with`` acquires (raising ``SemaphoreNotAcquired`` if no slot came
    within ``wait``) and releases."""

    def __init__(
        self,
        coord: Any,
        name: str,
        limit: int,
        session: Any,
        owner: str | None,
        wait: float | None,
    ) -> None:
        owner = owner if owner is not None else f"thread-{threading.get_ident()}"
        super().__init__(name, limit, owner, wait)
        self.coord, self.session = coord, session

    def inspect(self) -> dict[str, Any]:
        return self.coord.run(ops.sem_inspect(self.name))

    def require_token(self) -> None:
        """``StaleToken`` unless this handle's token is still held (a fenced write's check)."""
        token = self.token or 0
        require_current(self.name, token, self.coord.run(ops.sem_check_token(self.name, token)))

    def __enter__(self) -> Semaphore:
        if not self.acquire():
            raise SemaphoreNotAcquired(self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.lost:
            self.release()


class AsyncSemaphore(SlotHold):
    """The asyncio handle (``async with``). Without a session it uses the coordinator's
    default one; the owner defaults to the calling task, so tasks hold separate slots."""

    def __init__(
        self,
        coord: Any,
        name: str,
        limit: int,
        session: Any,
        owner: str | None,
        wait: float | None,
    ) -> None:
        owner = owner if owner is not None else f"task-{id(asyncio.current_task())}"
        super().__init__(name, limit, owner, wait)
        self.coord, self.session = coord, session

    @property
    def lost(self) -> bool:
        return self.session is not None and self.session.lost

    async def acquire(self, wait: float | None = None) -> bool:
        if self.session is None:
            self.session = await self.coord.default_session()
        acquired = await self.coord.run(self._acquire_op(self.session.id, self._wait_for(wait)))
        if acquired and self.session.lease_in_doubt:  # as ``BlockingHold.acquire``
            acquired = self._confirm(await self.coord.run(self._check_op()))
        return acquired

    async def release(self) -> None:
        assert self.session is not None, "release of a semaphore never acquired"
        await self.coord.run(self._release_op(self.session.id))

    async def inspect(self) -> dict[str, Any]:
        return await self.coord.run(ops.sem_inspect(self.name))

    async def require_token(self) -> None:
        token = self.token or 0
        current = await self.coord.run(ops.sem_check_token(self.name, token))
        require_current(self.name, token, current)

    async def __aenter__(self) -> AsyncSemaphore:
        if not await self.acquire():
            raise SemaphoreNotAcquired(self.name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.lost:
            await self.release()
