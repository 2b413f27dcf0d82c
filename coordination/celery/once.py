"""``@once``: a Celery task with a key is never queued twice, and never queued while it runs.

    @once(key="report:{customer_id}", on_duplicate="return")
    @app.task
    def build_report(customer_id): ...

    build_report.delay(7)   # queued
    build_report.delay(7)   # not queued: AsyncResult of the first (or AlreadyQueued)

celery-once takes a Redis key with a guessed TTL when a task is sent and deletes it when the task
ends; a worker killed with -9, or a task revoked before it ran, leaves the key until the TTL runs
out (celery-once#147, celery-singleton#40/#29), and a TTL shorter than the task lets a
duplicate in. Here the key is a *held key* of the message in the cluster's queue
(``coordination.primitives.queues_keys``): the put that enqueues the task takes it, and the
entry that removes the message (the worker's ack after the task ends, a dead-lettering, a purge)
frees it. So its lifetime is the message's, with no clock: a killed worker's task is redelivered
still holding it, and the moment the redelivered run is acked, the next ``delay()`` is accepted.

How a send flows:

- ``apply_async``/``delay`` (the hook below, installed on Celery's base ``Task`` like
  ``coordination.celery.lock_option``) computes the key from the call's *bound* arguments
  (``build_key``; bad templates fail at decoration, a key past ``limits.NAME_MAX_BYTES`` fails
  here, typed) and passes it in the message headers;
- the ``before_task_publish`` handler stamps the header for sends that bypass the hook
  (``app.send_task`` by name, when the task is registered in ``current_app``);
- the ``raft://`` transport (``Channel._put``) sends it as the put's held key with the task id
  as tag. A duplicate is reported to the hook through a context variable (``report_duplicate``)
  and the publish returns normally: an exception out of a publish makes kombu replace the
  pooled connection, and the next send would pay a reconnect (~40 ms, measured). The hook then
  returns ``AsyncResult(existing_task_id)`` for ``on_duplicate="return"`` or raises
  ``AlreadyQueued(key, existing_task_id)`` for ``"raise"``. A send without the hook
  (``send_task``) gets ``AlreadyQueued`` raised out of the publish itself.

Limits (documented in the README): the task runs ``acks_late`` (set by the decorator), since the
key must outlive the message's delivery: without it the worker acks, and frees the key, as the
task *starts*. A ``retry()`` republishes without the key (the original message still holds it
until the retrying run is acked, so a duplicate may slip in between that ack and the retry's
run). Keys are per queue: the same key routed to two queues is two keys. Only ``raft://`` holds
keys in the queue; other brokers get a session-held cluster lock instead
(``coordination.celery.once_fallback``, with weaker guarantees listed there).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from celery import Task, current_app
from celery.signals import before_task_publish

from coordination.celery import once_fallback
from coordination.celery.decorators import build_key, check_key_template
from coordination.exceptions import AlreadyQueued, LimitExceeded, LockKeyError
from coordination.primitives import limits

ONCE_HEADER = "raftsync_once"  # the key (a str), or {"error": why} if it could not be computed
POLICIES = ("return", "raise")
_MARK = "_raftsync_once_hook"
# Set by the apply_async hook around its publish: where the transport reports a duplicate.
_outcome: ContextVar[dict[str, tuple[str, str]] | None] = ContextVar("raftsync_once", default=None)

__all__ = [
    "ONCE_HEADER",
    "POLICIES",
    "AlreadyQueued",
    "held_key",
    "once",
    "report_duplicate",
]


def once(
    key: str | Callable[..., str], *, on_duplicate: str = "return", coordinator: Any = None
) -> Callable[[Any], Any]:
    """Mark a Celery task (apply it above ``@app.task``/``@shared_task``) as once-per-key.
    ``coordinator``: the cluster client of the lock fallback on non-``raft://`` brokers
    (default: the process's, from the Django settings)."""
    if on_duplicate not in POLICIES:
        raise ValueError(f"on_duplicate must be one of {POLICIES}, not {on_duplicate!r}")

    def decorate(task: Any) -> Any:
        if not hasattr(task, "apply_async"):
            raise TypeError("@once goes above @app.task (it marks a Celery task)")
        if not callable(key):
            check_key_template(key, inspect.signature(task.run), task.name)
        task.once = {"key": key, "on_duplicate": on_duplicate, "coordinator": coordinator}
        task.acks_late = True  # the key lives until the ack: after the task, not before it
        return task

    return decorate


def once_key(task: Any, args: Any, kwargs: Any) -> str:
    """The key of one send of ``task`` (typed errors for a template the call cannot fill or a
    key longer than the cluster's key limit)."""
    key = build_key(
        task.once["key"],
        inspect.signature(task.run),
        tuple(args or ()),
        dict(kwargs or {}),
        task.name,
    )
    if not isinstance(key, str) or not key:
        raise LockKeyError(f"once key of {task.name} must be a non-empty string, got {key!r}")
    if len(key.encode()) > limits.NAME_MAX_BYTES:
        raise LimitExceeded(
            "limit_exceeded",
            f"once key of {task.name} longer than {limits.NAME_MAX_BYTES} bytes: {key[:40]!r}...",
            {"key": key},
        )
    return key


def held_key(headers: dict[str, Any]) -> tuple[str, str] | None:
    """``(key, task id)`` for the transport's put, or None (no ``@once``, or a retry: see the
    module notes). A header holding an error (a send the signal handler could not key) raises
    rather than enqueue an unguarded task."""
    value = headers.get(ONCE_HEADER)
    if value is None or headers.get("retries"):
        return None
    if not isinstance(value, str):
        raise LockKeyError(str(value.get("error") if isinstance(value, dict) else value))
    return value, str(headers.get("id") or "")


def report_duplicate(key: str, task_id: str) -> bool:
    """Called by the transport for a put refused as a duplicate: True if an ``apply_async``
    hook in this context takes the answer (else the transport raises ``AlreadyQueued``)."""
    slot = _outcome.get()
    if slot is None:
        return False
    slot["duplicate"] = (key, task_id)
    return True


def _is_raft(app: Any) -> bool:
    url = app.conf.broker_write_url or app.conf.broker_url or ""
    return str(url).split("://", 1)[0] == "raft"


def _teach_celery() -> None:
    """Hook ``Task.apply_async`` (idempotent): key, broker check, the duplicate policy."""
    if getattr(Task.apply_async, _MARK, False):
        return
    plain = Task.apply_async

    def apply_async(self: Any, args: Any = None, kwargs: Any = None, *more: Any, **options: Any):
        spec = getattr(self, "once", None)
        if not spec or options.get("retries"):  # a retry() re-sends without the key
            return plain(self, args, kwargs, *more, **options)
        key = once_key(self, args, kwargs)
        if not _is_raft(self.app):
            return once_fallback.send(self, plain, key, args, kwargs, more, options)
        options["headers"] = {**(options.get("headers") or {}), ONCE_HEADER: key}
        slot: dict[str, tuple[str, str]] = {}
        token = _outcome.set(slot)
        try:
            result = plain(self, args, kwargs, *more, **options)
        finally:
            _outcome.reset(token)
        duplicate = slot.get("duplicate")
        if duplicate is None:
            return result
        if spec["on_duplicate"] == "raise":
            raise AlreadyQueued(*duplicate)
        return self.AsyncResult(duplicate[1])

    apply_async.__wrapped__ = plain  # type: ignore[attr-defined]
    setattr(apply_async, _MARK, True)
    Task.apply_async = apply_async  # type: ignore[method-assign]


@before_task_publish.connect(weak=False, dispatch_uid="raftsync-once")
def _stamp(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    """Key sends that did not go through ``apply_async`` (``send_task`` by name). Celery logs
    and ignores a handler's exception, so a failure is written into the header for the
    transport to refuse the send with."""
    if headers is None or ONCE_HEADER in headers or not isinstance(body, (tuple, list)):
        return
    task = current_app.tasks.get(sender) if isinstance(sender, str) else None
    if task is None or not getattr(task, "once", None):
        return
    try:
        headers[ONCE_HEADER] = once_key(task, body[0], body[1])
    except Exception as exc:  # any failure must stop the send, not vanish
        headers[ONCE_HEADER] = {"error": f"{type(exc).__name__}: {exc}"}


_teach_celery()
