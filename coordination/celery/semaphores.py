"""``@distributed_semaphore``: at most ``limit`` runs per key at once, across every worker.

    @app.task(bind=True, max_retries=None)
    @distributed_semaphore(limit=3, key="export:{tenant}")
    def export(self, tenant): ...

    @distributed_semaphore(limit=2, key="ocr", wait=60)
    def ocr(path): ...              # a plain function waits up to 60 s for a slot

The key is built as ``@distributed_lock``'s (a template over the call's bound arguments,
checked when the decorator is applied, or a callable). A slot is taken when the function runs
and released when it returns or raises; it belongs to the running process's session (in a
worker, the one each process opens at start), so a worker killed with -9 frees it when that
session expires, and ``revoke(terminate=True)`` frees it at once (``coordination.celery.worker``).
``current_slot()`` inside gives the slot: its fencing ``token`` strictly increases per key.

When no slot is free:

- a **Celery task** first waits ``wait`` seconds in the semaphore's FIFO queue (default 0: a
  worker process is too valuable to park), then is retried with ``task.retry(countdown=...)``:
  never a busy wait in the worker. The countdown is ``countdown`` seconds if given; otherwise an
  estimate of when a slot frees: this process's moving average of how long a run of the key
  holds its slot, divided by ``limit`` (with ``limit`` runs in progress, started at random
  times, one ends about every ``average / limit``), ``DEFAULT_COUNTDOWN`` before any run was
  seen; bounded to ``COUNTDOWN_BOUNDS`` and jittered by +-50% so retries of a burst spread out
  instead of colliding again. ``on_conflict="skip"`` returns None, ``"raise"`` raises;
- a **plain function** waits up to ``wait`` seconds (default ``PLAIN_WAIT``), served by the
  leader in arrival order, then raises ``SemaphoreNotAcquired`` (or returns None with
  ``on_conflict="skip"``).

Retries do not keep a place in the FIFO queue (the slot goes to whoever asks first after it
frees); tasks that need strict order across a burst set ``wait`` so they queue in the cluster.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from coordination.celery.decorators import (
    CONFLICT_POLICIES,
    _coordinator,
    _running_task,
    key_function,
    wrap_task_run,
)
from coordination.client.semaphores import check_limit
from coordination.exceptions import SemaphoreNotAcquired

log = logging.getLogger("coordination.semaphores")

F = TypeVar("F", bound=Callable[..., Any])
_current: contextvars.ContextVar[Any] = contextvars.ContextVar("raftsync_current_slot")
DEFAULT_COUNTDOWN = 1.0  # seconds, before this process has timed any run of the key
COUNTDOWN_BOUNDS = (0.2, 60.0)
PLAIN_WAIT = 30.0  # seconds a plain function waits for a slot by default
SMOOTHING = 0.3  # weight of the latest run in the moving average


def current_slot() -> Any:
    """The slot held by the innermost running ``@distributed_semaphore`` function (or None)."""
    return _current.get(None)


class HoldTimes:
    """A per-process moving average of how long runs hold their slot, per key."""

    def __init__(self) -> None:
        self._averages: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, key: str, seconds: float) -> None:
        with self._lock:
            previous = self._averages.get(key)
            self._averages[key] = (
                seconds if previous is None else previous + SMOOTHING * (seconds - previous)
            )

    def countdown(self, key: str, limit: int, rng: random.Random | None = None) -> float:
        """Seconds until a slot is likely free (module doc), jittered by +-50%."""
        with self._lock:
            average = self._averages.get(key)
        estimate = DEFAULT_COUNTDOWN if average is None else average / limit
        lo, hi = COUNTDOWN_BOUNDS
        return min(hi, max(lo, estimate * (rng or random).uniform(0.5, 1.5)))


_hold_times = HoldTimes()


def distributed_semaphore(
    limit: int,
    key: str | Callable[..., str],
    *,
    ttl: float | None = None,
    wait: float | None = None,
    on_conflict: str | None = None,
    countdown: float | None = None,
    coordinator: Any = None,
) -> Callable[[F], F]:
    """At most ``limit`` concurrent runs per key (module doc). ``ttl``: the session TTL, how
    long a killed process keeps its slot (default ``COORDINATION["SESSION_TTL"]``)."""
    limit = check_limit(limit)
    if on_conflict is not None and on_conflict not in CONFLICT_POLICIES:
        raise ValueError(f"on_conflict must be one of {CONFLICT_POLICIES}")

    def decorate(fn: F) -> F:
        task = wrap_task_run(fn, decorate)
        if task is not None:
            return task
        slot_key = key_function(key, fn)

        def wait_for(task: Any) -> float:
            if wait is not None:
                return wait
            return 0.0 if task is not None else PLAIN_WAIT

        def conflict(name: str, task: Any) -> Any:
            policy = on_conflict or ("retry" if task is not None else "raise")
            if policy == "retry" and task is not None:
                delay = countdown if countdown is not None else _hold_times.countdown(name, limit)
                log.debug("event=semaphore_retry semaphore=%s countdown=%.2f", name, delay)
                raise task.retry(countdown=delay, exc=SemaphoreNotAcquired(name))
            if policy == "skip":
                log.info("event=semaphore_skipped semaphore=%s", name)
                return None
            raise SemaphoreNotAcquired(name)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                name = slot_key(args, kwargs)
                task = _running_task()
                coord = coordinator or _coordinator(ttl)
                # A session per call (as @distributed_lock's async path): calls on one loop
                # thread must not share an owner, and the blocking client runs in a thread.
                session = await asyncio.to_thread(coord.session, ttl)
                try:
                    slot = coord.semaphore(name, limit, session=session, owner="call")
                    if not await asyncio.to_thread(slot.acquire, wait_for(task)):
                        return conflict(name, task)
                    return await _run_async(fn, name, slot, args, kwargs)
                finally:
                    await asyncio.to_thread(session.close)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = slot_key(args, kwargs)
            task = _running_task()
            coord = coordinator or _coordinator(ttl)
            # The thread's session, owned by the thread: a nested call on one key re-enters.
            slot = coord.semaphore(name, limit, session=coord.thread_session(ttl))
            if not slot.acquire(wait_for(task)):
                return conflict(name, task)
            token = _current.set(slot)
            started = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                _current.reset(token)
                _hold_times.record(name, time.monotonic() - started)
                if not slot.lost:
                    slot.release()

        return wrapper  # type: ignore[return-value]

    return decorate


async def _run_async(fn: Any, name: str, slot: Any, args: tuple, kwargs: dict) -> Any:
    token = _current.set(slot)
    started = time.monotonic()
    try:
        return await fn(*args, **kwargs)
    finally:
        _current.reset(token)
        _hold_times.record(name, time.monotonic() - started)
        if not slot.lost:
            await asyncio.to_thread(slot.release)
