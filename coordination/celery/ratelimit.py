"""``@rate_limit``: a cluster-wide rate limit for Celery tasks and plain functions.

    @app.task(bind=True)
    @rate_limit("100/m", key="github:{account}")
    def sync_account(self, account): ...

    @rate_limit("5/s", key="smtp")       # a plain function: blocks until a token is there
    def send(message): ...

Celery's own ``rate_limit`` task option is enforced by each worker process on its own
(celery#5732, #4727): four workers run four times the rate. Here every run takes a token from
one bucket in the cluster (``coordination.primitives.ratelimits``), whichever worker, host or
process runs it, and the bucket survives a leader change (it is replicated state on log time).

- The key is a template filled from the call's *bound* arguments, as ``@distributed_lock``'s
  (checked when the decorator is applied: ``LockKeyError`` names a field the function does not
  take), or a callable, or None: one bucket per function (``ratelimit:<module>.<name>``).
- ``rate``: ``"100/s"``, ``"100/m"``, ``"100/h"`` (Celery's format) or ``(count, period_ms)``;
  ``burst`` (default: the count) is how many may run at once after a quiet spell. A bad rate
  raises ``InvalidRate`` when the decorator is applied.
- **In a worker**, a run that finds no token is not run: the task is sent again with the
  countdown the bucket computed (the wait until a token exists) and the worker records a RETRY,
  as ``self.retry(countdown=...)`` does. A countdown task waits in the cluster (``raft://``
  delayed messages), not in a worker. These re-sends keep the task's ``retries`` as it was, so
  they never count against ``max_retries``: a task that waits for a token ten times can still
  ``self.retry()`` for its own errors as often as its ``max_retries`` allows, and a busy limit
  never kills a task with ``MaxRetriesExceededError``. (``task.request.retries`` therefore
  counts only the task's own retries.) The retry's ``exc`` is ``RateLimited``.
- **Elsewhere** (a plain function, a task called directly, ``apply()``/eager mode, where a
  retry would run again at once), the call blocks: it sleeps the computed wait and takes again
  (``RateLimit.acquire``), up to ``timeout`` seconds (None: as long as it takes), then raises
  ``RateLimited``. ``async def`` functions are supported (the wait does not block the loop).

Works in either decorator order with ``@app.task``, like ``@distributed_lock``. As with
``@distributed_lock``, the running task is found with ``celery.current_task``: a decorated
helper called from inside a running task counts as that task (over the limit, the task is
re-sent), so the wait never blocks a worker slot.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from coordination.celery.decorators import (
    _running_task,
    key_function,
    process_coordinator,
    wrap_task_run,
)
from coordination.exceptions import RateLimited
from coordination.primitives.rates import check_burst, default_burst, parse_rate

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["rate_limit", "retry_later"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/@+=#{}\[\]-]")  # outside the key charset (``<locals>``)


def rate_limit(
    rate: Any,
    *,
    key: str | Callable[..., str] | None = None,
    burst: int | None = None,
    n: int = 1,
    timeout: float | None = None,
    coordinator: Any = None,
) -> Callable[[F], F]:
    count, period_ms = parse_rate(rate)  # InvalidRate now, not at the first call
    burst = default_burst(count) if burst is None else check_burst(burst)

    def decorate(fn: F) -> F:
        task = wrap_task_run(fn, decorate)
        if task is not None:
            return task
        where = getattr(fn, "__qualname__", repr(fn))
        make_key = None if key is None else key_function(key, fn, "rate limit")
        default_key = _UNSAFE.sub("", f"ratelimit:{getattr(fn, '__module__', '')}.{where}")

        def limit_for(args: tuple, kwargs: dict) -> Any:
            name = default_key if make_key is None else make_key(args, kwargs)
            coord = coordinator or process_coordinator()
            return coord.rate_limit(name, (count, period_ms), burst)

        def gate(limit: Any) -> None:
            """Take a token, or retry the running task with the countdown, or block."""
            task = _running_task()
            if task is not None and not _runs_inline(task):
                granted, wait = limit.try_acquire(n)
                if not granted:
                    raise retry_later(task, limit.key, wait)
                return
            if not limit.acquire(n, timeout):
                raise RateLimited(limit.key, limit.retry_after)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                limit = limit_for(args, kwargs)
                await asyncio.to_thread(gate, limit)  # the blocking client, off the loop
                return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            gate(limit_for(args, kwargs))
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _runs_inline(task: Any) -> bool:
    """Eager (``apply()``) or called directly: a retry would run again at once, so block."""
    request = task.request
    return bool(getattr(request, "is_eager", False) or getattr(request, "called_directly", True))


def retry_later(task: Any, key: str, wait: float) -> BaseException:
    """Send the running task again in ``wait`` seconds with the same ``retries`` (so the wait
    never counts against ``max_retries``) and return the ``Retry`` for the worker to record,
    as ``Task.retry`` does for a task's own retries."""
    from celery.exceptions import Retry

    request = task.request
    signature = task.signature_from_request(
        request, None, None, countdown=wait, retries=request.retries
    )
    signature.apply_async()
    return Retry(exc=RateLimited(key, wait), when=wait, sig=signature)
