"""The state both coordination clients keep between calls, without I/O: a lock handle's hold
(token, reentrant count), a session's keepalive policy, and a leased message's fields.

``Coordinator`` and ``AsyncCoordinator`` subclass these and add only the waiting: a blocking
call, or an ``await``. With ``operations`` (every call as data), this module is the client core
both share; ``raft_node.client`` under them shares the engine-level policy (leader tracking,
retries and backoff, request sequence numbers) between its blocking and asyncio clients the
same way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import coordination.client.operations as ops
from coordination.client.operations import EXCLUSIVE, SHARED
from coordination.exceptions import StaleToken
from raft_node.client import ClusterUnavailable, OutcomeUnknown, RaftError, Timeout


class FencedHold:
    """What a lock handle and a semaphore slot handle share: the fencing token and reentrant
    count of one (session, owner)'s hold, kept from the cluster's answers. Subclasses say which
    commands acquire and release (``_acquire_base``, ``_release_base``)."""

    name: str
    owner: str
    wait: float | None
    # Whether the acquire's entry also renews the session (then its answer confirms the lease).
    _renews_session = False

    def _init_hold(self) -> None:
        self.token: int | None = None
        self.count = 0
        self.lapsed = False  # the last acquire was granted, then found superseded (``_confirm``)

    def _wait_for(self, wait: float | None) -> float:
        """``wait``: None takes the handle's; None or 0 tries once."""
        return (self.wait if wait is None else wait) or 0.0

    def _acquire_base(self, session_id: int, wait: float) -> ops.Operation[Any]:
        raise NotImplementedError

    def _release_base(self, session_id: int) -> ops.Operation[Any]:
        raise NotImplementedError

    def _check_op(self) -> ops.Operation[bool]:
        """A linearizable read: is this handle's token still a current grant?"""
        raise NotImplementedError

    def _confirm(self, current: bool) -> bool:
        """After an acquire answered when the session's lease was in doubt (``SessionKeepalive
        .lease_in_doubt``) and ``_check_op`` read whether the grant still stands: if not, the
        session expired while the answer was on its way (a paused process, a slow network)
        and someone may hold the lock now. The handle forgets the token, and ``acquire``
        returns False with ``lapsed`` set, rather than a token that is already superseded."""
        if current:
            return True
        self.token, self.count, self.lapsed = None, 0, True
        return False

    def _acquire_op(self, session_id: int, wait: float) -> ops.Operation[bool]:
        def granted(result: Any) -> bool:
            self.lapsed = False
            if not result or not result.get("acquired"):
                return False
            self.token = result["token"]
            self.count = result.get("count", self.count + 1)
            return True

        base = self._acquire_base(session_id, wait)
        return ops.Operation(base.body, True, granted, base.wait)

    def _release_op(self, session_id: int) -> ops.Operation[None]:
        def released(result: Any) -> None:
            self.count = result.get("count", 0) if isinstance(result, dict) else 0
            if self.count == 0:
                self.token = None

        return ops.Operation(self._release_base(session_id).body, True, released)


class BlockingHold:
    """The blocking half of a lock or slot handle (``Lock``, ``Semaphore``): acquire and
    release through the coordinator's ``run``, on the handle's session."""

    coord: Any
    session: Any
    _acquire_op: Callable[[int, float], ops.Operation[bool]]
    _release_op: Callable[[int], ops.Operation[None]]
    _wait_for: Callable[[float | None], float]

    @property
    def lost(self) -> bool:
        """The session expired: the hold may be someone else's now."""
        return self.session.lost

    _check_op: Callable[[], ops.Operation[bool]]
    _confirm: Callable[[bool], bool]

    def acquire(self, wait: float | None = None) -> bool:
        """True with ``token`` set, or False (not granted within ``wait``; or granted and then
        lost with the session before the answer was used: ``lapsed``). A token returned was
        current after the answer arrived: the session's lease was still sure then, or a
        linearizable ``check_token`` said so (``FencedHold._confirm``)."""
        sent = time.monotonic()
        acquired = self.coord.run(self._acquire_op(self.session.id, self._wait_for(wait)))
        if self._renews_session:
            self.session._confirmed(sent)
        if acquired and self.session.lease_in_doubt:
            acquired = self._confirm(self.coord.run(self._check_op()))
        return acquired

    def release(self) -> None:
        self.coord.run(self._release_op(self.session.id))


class LockHold(FencedHold):
    """A handle on a named lock for one (session, owner): what to send to acquire, release and
    renew it, and what the answers mean for the handle. Reentrant: nested acquires count."""

    def __init__(self, name: str, mode: str, owner: str, wait: float | None) -> None:
        if mode not in (EXCLUSIVE, SHARED):
            raise ValueError(f"mode must be {EXCLUSIVE!r} or {SHARED!r}")
        self.name, self.mode, self.owner, self.wait = name, mode, owner, wait
        self._init_hold()

    # The cluster renews the session in the acquire's own entry (``locks.acquire``).
    _renews_session = True

    def _acquire_base(self, session_id: int, wait: float) -> ops.Operation[Any]:
        return ops.lock_acquire(session_id, self.name, self.mode, self.owner, wait)

    def _release_base(self, session_id: int) -> ops.Operation[Any]:
        return ops.lock_release(session_id, self.name, self.owner)

    def _renew_op(self, session_id: int) -> ops.Operation[int]:
        return ops.lock_renew(session_id, self.name, self.owner)

    def _check_op(self) -> ops.Operation[bool]:
        return ops.lock_check_token(self.name, self.token or 0)


class SessionKeepalive:
    """A session's liveness as its client sees it: renewed every TTL/3 in the background (a
    thread, or a task); lost once the cluster says it is gone (expired, closed, unknown), or
    once no renewal succeeded for a whole TTL (the cluster will have expired it: presume it
    did). Locks renewed explicitly count as renewals too.

    The lease: the cluster sets a session's deadline to the log time of the keepalive entry
    plus the TTL, and that entry is stamped after the client sent it. So the session cannot
    expire before ``confirmed_at + ttl`` on this process's clock, ``confirmed_at`` being when
    the last keepalive the cluster confirmed was *sent* (or the session was opened).
    ``lease_in_doubt`` says when that bound (less ``LEASE_MARGIN`` of the TTL, for clock
    rates and leader changes) has passed: then a grant may already be gone."""

    LEASE_MARGIN = 0.1  # of the TTL

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.id = 0
        self.last_renewed = time.monotonic()
        self.confirmed_at = self.last_renewed  # before the open is sent: a safe lower bound

    @property
    def keepalive_interval(self) -> float:
        return self.ttl / 3

    @property
    def lease_in_doubt(self) -> bool:
        """True if the cluster may have expired this session by now (see the class doc)."""
        sure_until = self.confirmed_at + self.ttl * (1 - self.LEASE_MARGIN)
        return time.monotonic() >= sure_until

    def _renewed(self) -> None:
        self.last_renewed = time.monotonic()

    def _confirmed(self, sent: float) -> None:
        """An entry that renews the session (a lock acquire, sent at ``sent``) was applied:
        the lease is sure from ``sent`` on, and the next keepalive can wait a full interval."""
        self._renewed()
        self.confirmed_at = max(self.confirmed_at, sent)

    def _keepalive_wait(self) -> float:
        """Seconds until a keepalive is due (a renewing entry, such as a lock acquire, moved
        it on); 0 when it is due now."""
        left = self.last_renewed + self.keepalive_interval - time.monotonic()
        return left if left > 0.05 * self.keepalive_interval else 0.0

    def _keepalive_lost(self, error: RaftError | None, sent: float | None = None) -> bool:
        """After one keepalive sent at ``sent`` (``error`` None if it succeeded): True if the
        session must now be presumed lost; transient failures are retried at the next
        interval."""
        if error is None:
            self._renewed()
            if sent is not None:
                self.confirmed_at = max(self.confirmed_at, sent)
            return False
        if isinstance(error, (Timeout, ClusterUnavailable)):
            return time.monotonic() - self.last_renewed >= self.ttl
        return True  # refused (expired or unknown): the cluster released everything


def require_current(name: str, token: int, current: bool) -> None:
    """``require_token``'s rule, for both clients."""
    if not current:
        raise StaleToken(name, token)


@contextlib.contextmanager
def remember(op: ops.Operation[Any]) -> Iterator[None]:
    """Around a write: an ``OutcomeUnknown`` leaving it keeps the operation's ``decode``, so
    ``resolve`` returns what the call would have (a lock handle gets its token, say)."""
    try:
        yield
    except OutcomeUnknown as exc:
        exc.decode = op.decode  # type: ignore[attr-defined]
        raise


def decoded(unknown: OutcomeUnknown, value: Any) -> Any:
    """A resolved write's result, decoded as its call would have (raw without a ``decode``:
    an ``OutcomeUnknown`` of ``propose``)."""
    decode = getattr(unknown, "decode", None)
    return value if decode is None else decode(value)


def message_fields(row: dict[str, Any]) -> tuple[int, bytes, int, int, dict[str, Any]]:
    """A leased queue row as a message's fields: id, payload, priority, delivery count, and
    the rest (``meta``: enqueued time, ``dead_letter`` origin, ``queue`` for ``get_any``)."""
    meta = {k: v for k, v in row.items() if k not in ("id", "payload", "priority")}
    return row["id"], row["payload"], row["priority"], row["delivery_count"], meta


__all__ = [
    "EXCLUSIVE",
    "SHARED",
    "LockHold",
    "SessionKeepalive",
    "message_fields",
    "require_current",
]
