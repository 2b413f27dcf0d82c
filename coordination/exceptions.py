"""Typed errors of the coordination client. Every error code maps to one class, so callers write
``except Deadlock`` rather than parse messages; the table of codes (which class, which HTTP
status) is ``coordination.errors``. Each error carries ``code``, ``message`` and ``details`` (a
dict: e.g. a deadlock's cycle), as the cluster sent them."""

from __future__ import annotations

from typing import Any

from kombu.exceptions import EncodeError

from raft_node.client import (
    AuthenticationFailed,
    BadRequest,
    ClusterUnavailable,
    NotLeader,
    OutcomeUnknown,
    RaftError,
    Rejected,
    Timeout,
)

__all__ = [
    "AlreadyQueued",
    "AuthenticationFailed",
    "BadRequest",
    "ChangePending",
    "ClusterUnavailable",
    "CoordinationError",
    "Deadlock",
    "Evicted",
    "InvalidRate",
    "LimitExceeded",
    "LockKeyError",
    "LockModeError",
    "LockNotAcquired",
    "MemberUnreachable",
    "MembershipRefused",
    "NotHolder",
    "NotInteger",
    "NotLeader",
    "OutcomeUnknown",
    "RaftError",
    "RateLimited",
    "ResultTooLarge",
    "SemaphoreLimitError",
    "SemaphoreNotAcquired",
    "SessionExpired",
    "StaleToken",
    "Superseded",
    "Timeout",
    "UnknownKey",
    "UnknownMessage",
    "UnknownQueue",
    "UnknownSession",
    "UnknownSubscription",
    "WatchCompacted",
]


class CoordinationError(Rejected):
    """A primitive refused the request (``code`` says why; ``details`` may say more)."""


class SessionExpired(CoordinationError):
    """The session timed out (or was closed): its locks, leases and waits are gone."""


class UnknownSession(CoordinationError):
    pass


class Deadlock(CoordinationError):
    """Waiting would have closed a cycle in the wait-for graph; ``message`` names the cycle."""


class NotHolder(CoordinationError):
    pass


class LockModeError(CoordinationError):
    pass


class LimitExceeded(CoordinationError):
    pass


class InvalidRate(CoordinationError, ValueError):
    """A rate limit's rate or burst is unusable: a zero or negative count, an unknown unit
    (``"100/s"``, ``"100/m"``, ``"100/h"`` are the forms), a period or burst out of range. The
    client raises it before sending; the cluster refuses such a ``ratelimit.take`` with it
    too (HTTP 400). Also a ``ValueError``, as the bad argument it is."""


class ResultTooLarge(LimitExceeded, EncodeError):
    """A task's (or group's) encoded result is over the result store's value limit; raised by
    the ``raft://`` result backend before anything is sent. Also a kombu ``EncodeError``, so a
    Celery worker records it as the task's failure (its result-encoding error path), and the
    caller's ``.get()`` raises it. ``args`` are ``(id, size, limit, what)`` so it survives
    Celery's exception serialization."""

    def __init__(self, task_id: str, size: int, limit: int, what: str = "task") -> None:
        message = (
            f"result of {what} {task_id} is {size} bytes encoded (with its metadata: args and "
            f"kwargs too under result_extended), over the result store's {limit}-byte limit "
            "(RESULT_VALUE_MAX_BYTES); store large results elsewhere and return a reference"
        )
        super().__init__("limit_exceeded", message)
        self.task_id, self.size, self.limit, self.what = task_id, size, limit, what
        self.args = (task_id, size, limit, what)


class SemaphoreLimitError(CoordinationError):
    """An acquire named another limit than the semaphore has while it is in use (``details``:
    ``semaphore``, ``limit`` in force, ``requested``)."""


class UnknownQueue(CoordinationError):
    pass


class UnknownMessage(CoordinationError):
    pass


class UnknownSubscription(CoordinationError):
    """A change to a queue subscription that the session does not hold (never had, or it ended
    with an earlier session)."""


class NotInteger(CoordinationError):
    pass


class UnknownKey(CoordinationError):
    pass


class Evicted(CoordinationError):
    """The value lives only in the Redis mirror now; read it there and write with ``cas``."""


class MembershipRefused(CoordinationError):
    """A membership change the cluster will not make: ``code`` is ``member_exists``,
    ``unknown_member``, ``not_learner`` or ``last_voter`` (``details["node"]`` names it)."""


class ChangePending(MembershipRefused):
    """Another membership change is not committed yet (or a new leader has not committed in
    its term): retry shortly."""


class MemberUnreachable(MembershipRefused):
    """The new node does not answer at its address (start it first), or did not catch up."""


class WatchCompacted(CoordinationError):
    """A watch asked to resume from a version the cluster no longer retains (its history keeps
    the latest changes only). ``oldest`` is the oldest version still available: re-read the
    state you follow, then watch again from ``revision``."""

    @property
    def oldest(self) -> int:
        return int(self.details.get("oldest", 0))

    @property
    def revision(self) -> int:
        return int(self.details.get("revision", 0))


class Superseded(CoordinationError):
    """The cluster had already applied a later write of this client id (``duplicate``): a
    client reusing an id with a stale sequence number, never a normal outcome."""


class LockNotAcquired(CoordinationError):
    """``acquire`` gave up (try failed, or the wait timed out)."""

    def __init__(self, name: str, message: str = "") -> None:
        message = message or f"lock {name!r} not acquired"
        super().__init__("not_acquired", message, {"lock": name})
        self.name = name
        self.args = (name, message)

    @classmethod
    def from_record(cls, code: str, message: str, details: dict[str, Any]) -> LockNotAcquired:
        return cls(str(details.get("lock", "")), message)


class AlreadyQueued(CoordinationError):
    """A ``@once`` task was sent while a task with the same key is queued or running; its id is
    ``task_id`` (so the caller can follow the existing run: ``AsyncResult(task_id)``)."""

    def __init__(self, key: str, task_id: str, message: str = "") -> None:
        message = message or f"a task with once key {key!r} is already queued ({task_id})"
        super().__init__("already_queued", message, {"key": key, "task_id": task_id})
        self.key, self.task_id = key, task_id
        self.args = (key, task_id, message)

    @classmethod
    def from_record(cls, code: str, message: str, details: dict[str, Any]) -> AlreadyQueued:
        return cls(str(details.get("key", "")), str(details.get("task_id", "")), message)


class LockKeyError(ValueError):
    """A ``@distributed_lock`` key template names something the function does not take (raised
    when the decorator is applied, or when a call leaves a ``**kwargs`` field unfilled)."""


class StaleToken(CoordinationError):
    """A fencing token is no longer the lock's current grant (raised by ``require_token``)."""

    def __init__(self, name: str, token: int) -> None:
        message = f"token {token} is not the current grant of {name!r}"
        super().__init__("stale_token", message, {"lock": name, "token": token})
        self.args = (name, token)

    @classmethod
    def from_record(cls, code: str, message: str, details: dict[str, Any]) -> StaleToken:
        return cls(str(details.get("lock", "")), int(details.get("token", 0)))


class SemaphoreNotAcquired(LockNotAcquired):
    """A semaphore ``acquire`` gave up (no free slot on a try, or the wait timed out). A
    ``LockNotAcquired``, so code handling both catches one class."""

    def __init__(self, name: str, message: str = "") -> None:
        super().__init__(name, message or f"semaphore {name!r}: no slot acquired")
        self.details = {"semaphore": name}

    @classmethod
    def from_record(cls, code: str, message: str, details: dict[str, Any]) -> SemaphoreNotAcquired:
        return cls(str(details.get("semaphore", "")), message)


class RateLimited(CoordinationError):
    """A rate limit's tokens were not there: a blocking ``acquire`` (``@rate_limit`` on a plain
    function) would have had to wait past its timeout, or a Celery task is being retried with
    the countdown. ``retry_after`` is that countdown in seconds (HTTP 429 with ``Retry-After``
    in the REST API)."""

    def __init__(self, key: str, retry_after: float, message: str = "") -> None:
        message = message or f"rate limit {key!r}: no tokens for {retry_after:.3f} s"
        super().__init__("rate_limited", message, {"key": key, "retry_after": retry_after})
        self.key, self.retry_after = key, retry_after
        self.args = (key, retry_after, message)

    @classmethod
    def from_record(cls, code: str, message: str, details: dict[str, Any]) -> RateLimited:
        return cls(str(details.get("key", "")), float(details.get("retry_after", 0.0)), message)
