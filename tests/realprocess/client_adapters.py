"""Both coordination clients behind one blocking interface, so one contract suite runs on each.

``Blocking`` wraps an object of the asyncio client (``AsyncCoordinator``, its sessions, locks,
queues and messages): every call runs on a loop thread, coroutines are awaited there, and what
comes back is wrapped again. Constructors run on the loop too (a lock's default owner is the
task that made it). The one difference the wrapper papers over is ``default_session``: a
property of the blocking client, a coroutine method of the asyncio one.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any

from coordination.client.aio import (
    AsyncCoordinator,
    AsyncLock,
    AsyncMessage,
    AsyncQueue,
    AsyncSession,
)
from coordination.client.election import AsyncElection
from coordination.client.ratelimit import AsyncRateLimit
from coordination.client.semaphores import AsyncSemaphore

ASYNC_TYPES = (
    AsyncCoordinator,
    AsyncLock,
    AsyncMessage,
    AsyncQueue,
    AsyncSession,
    AsyncSemaphore,
    AsyncRateLimit,
    AsyncElection,
)
CALL_LIMIT = 120.0  # no contract call may hang a test run


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the loop, awaited if it returns an awaitable; wrapped."""

        async def run() -> Any:
            result = fn(*_unwrap(args), **_unwrap(kwargs))
            if inspect.isawaitable(result):
                result = await result
            return result

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return self.wrap(future.result(CALL_LIMIT))

    def wrap(self, value: Any) -> Any:
        if isinstance(value, ASYNC_TYPES):
            return Blocking(value, self)
        if isinstance(value, list):
            return [self.wrap(v) for v in value]
        return value

    def stop(self) -> None:
        """Cancel what the test left running (the keepalive tasks of sessions it did not close,
        as a process exiting would), then stop and close the loop: a pending task on a closed
        loop is reported as "Task was destroyed but it is pending" when collected."""

        async def cancel_the_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_the_rest(), self.loop).result(CALL_LIMIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Blocking:
    """A blocking view of one asyncio client object (module doc)."""

    def __init__(self, target: Any, loop: LoopThread) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    def __getattr__(self, name: str) -> Any:
        target, loop = self._target, self._loop
        if name == "default_session" and isinstance(target, AsyncCoordinator):
            return loop.call(target.default_session)
        value = getattr(target, name)
        if callable(value):
            return lambda *args, **kwargs: loop.call(value, *args, **kwargs)
        return loop.wrap(value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __getitem__(self, key: Any) -> Any:
        return self._target[key]

    def __enter__(self) -> Any:
        return self._loop.call(self._target.__aenter__)

    def __exit__(self, *exc: object) -> Any:
        return self._loop.call(self._target.__aexit__, *exc)


def _unwrap(value: Any) -> Any:
    if isinstance(value, Blocking):
        return value._target
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value
