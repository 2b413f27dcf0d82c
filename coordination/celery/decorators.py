"""``@distributed_lock``: run a function (sync or async) or a Celery task under a cluster lock.

    @app.task(bind=True)
    @distributed_lock(key="report:{customer_id}", ttl=30)
    def build_report(self, customer_id): ...

    @distributed_lock(key=lambda order: f"order:{order.id}", on_conflict="skip")
    def ship(order): ...

- The key is a template formatted with the call's *bound* arguments (so ``f(1)`` and
  ``f(customer_id=1)`` give the same key), or a callable taking the same arguments.
- The lock is taken when the function runs (for a task: when the worker runs it, not when it is
  queued) and released when it returns or raises, including Celery's ``Retry``. A worker killed
  with -9 loses its session; the cluster releases the lock after ``ttl`` seconds.
- ``ttl`` is the session TTL: how long a dead or frozen process keeps the lock (default: the
  ``COORDINATION["SESSION_TTL"]`` setting, 10 s). The session is kept alive in the background;
  in a Celery worker it is the session each worker process opens at start and closes at
  shutdown (``coordination.celery.worker``), so a clean shutdown releases locks at once.
- On conflict (not acquired within ``wait`` seconds): ``"retry"`` (the default for Celery tasks)
  retries the task with ``countdown``; ``"skip"`` returns None and logs; ``"raise"`` (the
  default for plain functions) raises ``LockNotAcquired``.
- Inside the function, ``current_lock()`` is the held lock: its fencing ``token`` (pass it to
  the resource you protect, or call ``require_token``) and ``lost`` (the session expired).

Works in either decorator order with ``@app.task``: at run time the running task is found with
``celery.current_task``. As a task option, ``@app.task(distributed_lock={...})`` or
``@shared_task(distributed_lock={...})``, on any Celery app (``coordination.celery.lock_option``).

A key template is checked when the decorator is applied: a field that is not a parameter of the
function raises ``LockKeyError`` naming the template and the field, so a typo never waits for the
first call (nor, for a task, for a worker to run it).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import re
import string
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from coordination.exceptions import LockKeyError, LockNotAcquired

log = logging.getLogger("coordination.locks")

F = TypeVar("F", bound=Callable[..., Any])
_current: contextvars.ContextVar[Any] = contextvars.ContextVar("raftsync_current_lock")
_coordinators: dict[int, Any] = {}
_coordinators_lock = threading.Lock()
_process_names: dict[int, str] = {}  # pid -> its coordinator's name (``set_process_name``)
CONFLICT_POLICIES = ("retry", "skip", "raise")


def current_lock() -> Any:
    """The lock held by the innermost running ``@distributed_lock`` function (or None)."""
    return _current.get(None)


def distributed_lock(
    key: str | Callable[..., str],
    *,
    mode: str = "exclusive",
    ttl: float | None = None,
    wait: float = 0.0,
    on_conflict: str | None = None,
    countdown: float = 5.0,
    coordinator: Any = None,
) -> Callable[[F], F]:
    if on_conflict is not None and on_conflict not in CONFLICT_POLICIES:
        raise ValueError(f"on_conflict must be one of {CONFLICT_POLICIES}")

    def decorate(fn: F) -> F:
        task = wrap_task_run(fn, decorate)
        if task is not None:
            return task
        lock_key = key_function(key, fn)

        def conflict(name: str) -> Any:
            task = _running_task()
            policy = on_conflict or ("retry" if task is not None else "raise")
            if policy == "retry" and task is not None:
                raise task.retry(countdown=countdown, exc=LockNotAcquired(name))
            if policy == "skip":
                log.info("event=lock_skipped lock=%s", name)
                return None
            raise LockNotAcquired(name)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                name = lock_key(args, kwargs)
                coord = coordinator or _coordinator(ttl)
                # The blocking client runs in a thread: the loop stays free while we wait.
                # A session per call: tasks sharing one would wait for themselves.
                session = await asyncio.to_thread(coord.session, ttl)
                try:
                    lock = coord.lock(name, mode, wait=wait, session=session, owner="call")
                    if not await asyncio.to_thread(lock.acquire):
                        return conflict(name)
                    token = _current.set(lock)
                    try:
                        return await fn(*args, **kwargs)
                    finally:
                        _current.reset(token)
                        if not lock.lost:
                            await asyncio.to_thread(lock.release)
                finally:
                    await asyncio.to_thread(session.close)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = lock_key(args, kwargs)
            coord = coordinator or _coordinator(ttl)
            # The thread's session (owner: the thread): nested calls on one key re-enter.
            lock = coord.lock(name, mode, wait=wait, session=coord.thread_session(ttl))
            if not lock.acquire():
                return conflict(name)
            token = _current.set(lock)
            try:
                return fn(*args, **kwargs)
            finally:
                _current.reset(token)
                if not lock.lost:
                    lock.release()

        return wrapper  # type: ignore[return-value]

    return decorate


def wrap_task_run(fn: Any, decorate: Callable[[Any], Any]) -> Any:
    """A decorator applied on top of ``@app.task`` wraps the task's ``run`` (every way Celery
    runs a task ends there) and gives the task back; None if ``fn`` is not a task."""
    run = getattr(fn, "run", None)
    if run is None or not hasattr(fn, "apply_async"):
        return None
    fn.run = decorate(run)
    return fn


def key_function(
    key: str | Callable[..., str], fn: Callable[..., Any], what: str = "lock"
) -> Callable[..., str]:
    """``(args, kwargs) -> key`` for calls of ``fn``: ``key`` called with the arguments, or the
    template formatted with the call's bound arguments (checked against ``fn`` now). Shared by
    ``@distributed_lock`` and ``@distributed_semaphore``."""
    signature = inspect.signature(fn)
    where = getattr(fn, "__qualname__", repr(fn))
    if not callable(key):
        check_key_template(key, signature, where, what)

    def make_key(args: tuple, kwargs: dict) -> str:
        return build_key(key, signature, args, kwargs, where, what)

    return make_key


def format_key(
    key: str,
    signature: inspect.Signature,
    args: tuple,
    kwargs: dict,
    where: str,
    what: str = "lock",
) -> str:
    """``key`` filled from the call's *bound* arguments (``f(1)`` and ``f(customer_id=1)`` give
    the same key; ``**kwargs`` names count as arguments); ``LockKeyError`` if a field has no
    value in this call. Shared by ``@distributed_lock`` and ``@rate_limit``."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:  # f(**kw): its names count as arguments
            arguments.update(arguments.pop(param.name, {}))
    try:
        return key.format(**arguments)
    except (KeyError, IndexError, AttributeError) as exc:
        raise LockKeyError(
            f"{what} key template {key!r}: this call of {where} gives no value for {exc.args[0]!r}"
        ) from None


def check_key_template(
    key: Any, signature: inspect.Signature, where: str, what: str = "lock"
) -> None:
    """Raise ``LockKeyError`` unless every field of ``key`` names a parameter of the function
    (``{customer_id}``, ``{order.id}``, ``{items[0]}``; positional ``{0}``/``{}`` are refused,
    since arguments are matched by name)."""
    if not isinstance(key, str):
        raise LockKeyError(f"{what} key must be a template string or a callable, not {key!r}")
    params = signature.parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(key) if field is not None]
    except ValueError as exc:
        raise LockKeyError(f"{what} key template {key!r} of {where} is malformed: {exc}") from None
    for field in fields:
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not root or root.isdigit():
            raise LockKeyError(
                f"{what} key template {key!r} of {where} has a positional field {{{field}}}: "
                f"name a parameter instead ({', '.join(named) or 'it takes none'})"
            )
        if root not in params and not open_ended:
            raise LockKeyError(
                f"{what} key template {key!r} names {{{root}}}, which is not a parameter of "
                f"{where}{signature}"
            )


def build_key(
    key: str | Callable[..., str],
    signature: inspect.Signature,
    args: tuple | list,
    kwargs: dict[str, Any],
    where: str,
    what: str = "lock",
) -> str:
    """``key`` for one call: the callable's answer, or the template formatted with the call's
    *bound* arguments (``format_key``). Used where the signature is known apart from a function
    (``@once`` keys a task's ``apply_async`` arguments)."""
    if callable(key):
        return key(*args, **kwargs)
    return format_key(key, signature, tuple(args), kwargs, where, what)


def _running_task() -> Any:
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover - celery is a dependency
        return None
    task = current_task._get_current_object() if current_task else None
    return task if task is not None and getattr(task, "request", None) is not None else None


def _coordinator(ttl: float | None) -> Any:
    return process_coordinator() if ttl is None else process_coordinator(session_ttl=ttl)


def set_process_name(name: str) -> None:
    """Name this process's coordinator (and so its sessions' label) before it is made: a
    worker process names itself at start, whichever of its hooks or tasks connects first."""
    _process_names[os.getpid()] = name


def process_coordinator(**options: Any) -> Any:
    """This process's coordinator, from the Django settings, created on first use with
    ``options`` (after a fork, a new one: sockets and sessions are not shared)."""
    from coordination.client.coordinator import Coordinator

    pid = os.getpid()
    with _coordinators_lock:
        coord = _coordinators.get(pid)
        if coord is None:
            if pid in _process_names:
                options.setdefault("name", _process_names[pid])
            coord = _coordinators[pid] = Coordinator.from_settings(**options)
        return coord


def close_process_coordinator() -> bool:
    """Close this process's coordinator and its sessions (locks held are released)."""
    with _coordinators_lock:
        coord = _coordinators.pop(os.getpid(), None)
    if coord is None:
        return False
    coord.close()
    return True
