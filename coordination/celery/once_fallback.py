"""``@once`` on brokers other than ``raft://`` (Redis, RabbitMQ, SQS...): a session-held lock.

Those brokers cannot hold a key for exactly as long as a message lives, so the producer takes an
exclusive cluster lock ``once:<key>`` at send time, owned by the task id, in its thread's session
(kept alive in the background while the producer process lives), and names it in a message
header (``raftsync_once_lock = [lock, session, task id]``). The worker releases it on the
producer's behalf when the task ends (``task_postrun``: success, failure or retry) or is
discarded as revoked (``task_revoked``). A send that finds the lock held gets the holder's task id
from the lock's owner.

Weaker than the ``raft://`` path, and documented so:

- the lock dies with the producer's *session*: a producer process that exits (a short-lived
  script, a recycled web worker) frees the key while its task may still be queued or running;
- a worker killed mid-task never sends ``task_postrun``: the key stays held until the broker's
  redelivery runs and ends, or the producer's session ends;
- a ``retry()`` ends a run (``task_postrun``) and so frees the key before the retry runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from celery.signals import task_postrun, task_revoked
from kombu.utils.uuid import uuid

import coordination.client.operations as ops
from coordination.celery.decorators import process_coordinator
from coordination.exceptions import (
    AlreadyQueued,
    LockNotAcquired,
    NotHolder,
    SessionExpired,
    UnknownSession,
)

LOCK_HEADER = "raftsync_once_lock"
LOCK_PREFIX = "once:"
ACQUIRE_ATTEMPTS = 3  # a holder that releases between our try and our look: try again


def send(
    task: Any,
    plain: Callable[..., Any],
    key: str,
    args: Any,
    kwargs: Any,
    more: tuple[Any, ...],
    options: dict[str, Any],
) -> Any:
    """``apply_async`` for a ``@once`` task on a non-``raft://`` broker."""
    coord = task.once.get("coordinator") or process_coordinator()
    name = LOCK_PREFIX + key
    task_id = options.get("task_id") or uuid()
    options["task_id"] = task_id
    session = coord.default_session
    existing = None
    for _ in range(ACQUIRE_ATTEMPTS):
        if coord.run(ops.lock_acquire(session.id, name, ops.EXCLUSIVE, task_id))["acquired"]:
            break
        holders = coord.run(ops.lock_inspect(name))["holders"]
        if holders:
            existing = str(holders[0]["owner"])
            break
    else:
        raise LockNotAcquired(name)
    if existing is not None:
        if task.once["on_duplicate"] == "raise":
            raise AlreadyQueued(key, existing)
        return task.AsyncResult(existing)
    header = [name, session.id, task_id]
    options["headers"] = {**(options.get("headers") or {}), LOCK_HEADER: header}
    try:
        return plain(task, args, kwargs, *more, **options)
    except BaseException:
        release(header)  # nothing was queued: nothing will release it
        raise


def release(header: Any, coordinator: Any = None) -> bool:
    """Release the lock a header names, for its producer (False: it was not held any more)."""
    if not isinstance(header, (list, tuple)) or len(header) != 3:
        return False
    name, session, owner = header
    coord = coordinator or process_coordinator()
    with contextlib.suppress(NotHolder, UnknownSession, SessionExpired):
        coord.run(ops.lock_release(int(session), str(name), str(owner)))
        return True
    return False


def _coordinator_of(task: Any) -> Any:
    spec = getattr(task, "once", None) or {}
    return spec.get("coordinator")


@task_postrun.connect(weak=False, dispatch_uid="raftsync-once-postrun")
def _task_ended(sender: Any = None, task: Any = None, **_: Any) -> None:
    task = task or sender
    header = getattr(getattr(task, "request", None), LOCK_HEADER, None)
    if header is not None:
        release(header, _coordinator_of(task))


@task_revoked.connect(weak=False, dispatch_uid="raftsync-once-revoked")
def _task_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    header = getattr(request, LOCK_HEADER, None)
    if header is not None:
        release(header, _coordinator_of(sender))
