"""The one table of error codes: for each code, the Python exception it raises and the HTTP
status the REST API answers it with.

An error crosses the wire as a record ``(code, message, details)`` (``raft_node``'s client
protocol); nothing parses a message. Everyone reads this table:

- the primitives refuse commands by code (``coordination.primitives.errors.reject`` accepts only
  the ``MACHINE`` codes below);
- the raft client raises a generic ``Rejected(code, message, details)``, and the coordination
  clients turn it into the class registered here (``typed``);
- the REST API answers a registered error with its status and ``{"code", "detail"}`` body
  (``coordination.api.errors``).

Origins: ``MACHINE`` codes come from the state machine (a primitive, or the applier's
``duplicate``), ``ENGINE`` codes from the engine and the raft client (retries exhausted, bad
requests, credentials), ``CLIENT`` codes are raised by the coordination client itself.

Definite and uncertain: every error here means the request had no effect (``definite``), except
``timeout`` and ``outcome_unknown``. A write that may have been applied ends ``outcome_unknown``
(``OutcomeUnknown``, a ``Timeout``), carrying its request id; ``coord.resolve(exc)`` learns the
outcome. The API answers it 503 with ``Retry-After`` and the request id in the body.

``body_code`` is the ``code`` of the API's error body where it differs from the error's own:
those bodies are a public contract older than this table (a malformed command was always a
``bad_request``, a timeout always ``unavailable``; an unknown outcome, a kind of timeout, too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordination import exceptions as exc
from raft_node.client import RaftError, Rejected

MACHINE, ENGINE, CLIENT = "machine", "engine", "client"

# Machine codes: what a primitive (or the applier) refuses a command with.
BAD_COMMAND = "bad_command"  # malformed command (wrong op, arity or types)
LIMIT = "limit_exceeded"  # a documented limit (name, size, range, depth) was exceeded
UNKNOWN_SESSION = "unknown_session"  # no such session (never existed, or closed)
SESSION_EXPIRED = "session_expired"  # the session timed out; everything it held is released
NOT_HOLDER = "not_holder"  # release/renew of a lock the caller does not hold
DEADLOCK = "deadlock"  # waiting would close a cycle in the wait-for graph (details: the cycle)
LOCK_MODE = "lock_mode"  # e.g. reentrant upgrade from shared to exclusive
UNKNOWN_QUEUE = "unknown_queue"
UNKNOWN_MESSAGE = "unknown_message"  # ack/nack of a message not leased to the caller
UNKNOWN_SUBSCRIPTION = "unknown_subscription"  # a queue subscription the session does not hold
NOT_INTEGER = "not_integer"  # incr of a cache value that is not an integer
UNKNOWN_KEY = "unknown_key"  # incr of a cache key that does not exist
EVICTED = "evicted"  # incr/touch of a cache key whose value now lives only in Redis
SEMAPHORE_LIMIT = "semaphore_limit"  # acquire naming another limit than the live semaphore's
INVALID_RATE = "invalid_rate"  # a rate limit's rate or burst is unusable (zero, negative, unit)
COMPACTED = "compacted"  # a watch resumed from a version older than the retained history
DUPLICATE = "duplicate"  # the applier: a write older than the client's latest (superseded)
# A fencing token that is not the lock's current grant: a fenced write or txn refused by the
# machine, or ``require_token`` in the client.
STALE_TOKEN = "stale_token"

# Engine codes (the raft client's own errors) and client codes.
BAD_REQUEST = "bad_request"
NOT_LEADER = "not_leader"
TIMEOUT = "timeout"
OUTCOME_UNKNOWN = "outcome_unknown"  # a write may or may not have been applied (resolve it)
UNAVAILABLE = "unavailable"
AUTH_FAILED = "auth_failed"
NOT_ACQUIRED = "not_acquired"
RATE_LIMITED = "rate_limited"
MEMBER_EXISTS = "member_exists"  # membership: the id is already a member
UNKNOWN_MEMBER = "unknown_member"
NOT_LEARNER = "not_learner"  # promote of a node that is not a learner
LAST_VOTER = "last_voter"  # removing the last voter
CHANGE_PENDING = "change_pending"  # another membership change is not committed yet
MEMBER_UNREACHABLE = "member_unreachable"  # the new node does not answer, or did not catch up
ALREADY_QUEUED = "already_queued"  # a @once task whose key is held by a queued or running task


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    exception: type[RaftError]
    status: int  # the REST API's HTTP status
    origin: str  # MACHINE, ENGINE or CLIENT
    body_code: str = ""  # the API body's code, if not ``code``

    @property
    def api_code(self) -> str:
        return self.body_code or self.code


_TABLE = (
    ErrorCode(BAD_COMMAND, exc.BadRequest, 400, MACHINE, body_code=BAD_REQUEST),
    ErrorCode(LIMIT, exc.LimitExceeded, 400, MACHINE),
    ErrorCode(INVALID_RATE, exc.InvalidRate, 400, MACHINE),
    ErrorCode(UNKNOWN_SESSION, exc.UnknownSession, 404, MACHINE),
    ErrorCode(SESSION_EXPIRED, exc.SessionExpired, 404, MACHINE),
    ErrorCode(UNKNOWN_QUEUE, exc.UnknownQueue, 404, MACHINE),
    ErrorCode(UNKNOWN_KEY, exc.UnknownKey, 404, MACHINE),
    ErrorCode(NOT_HOLDER, exc.NotHolder, 409, MACHINE),
    ErrorCode(LOCK_MODE, exc.LockModeError, 409, MACHINE),
    ErrorCode(UNKNOWN_MESSAGE, exc.UnknownMessage, 409, MACHINE),
    ErrorCode(UNKNOWN_SUBSCRIPTION, exc.UnknownSubscription, 404, MACHINE),
    ErrorCode(NOT_INTEGER, exc.NotInteger, 409, MACHINE),
    ErrorCode(EVICTED, exc.Evicted, 409, MACHINE),
    ErrorCode(DUPLICATE, exc.Superseded, 409, MACHINE),
    ErrorCode(COMPACTED, exc.WatchCompacted, 410, MACHINE),
    ErrorCode(SEMAPHORE_LIMIT, exc.SemaphoreLimitError, 409, MACHINE),
    ErrorCode(DEADLOCK, exc.Deadlock, 423, MACHINE),
    ErrorCode(STALE_TOKEN, exc.StaleToken, 409, MACHINE),
    ErrorCode(BAD_REQUEST, exc.BadRequest, 400, ENGINE),
    ErrorCode(NOT_LEADER, exc.NotLeader, 503, ENGINE, body_code=UNAVAILABLE),
    ErrorCode(TIMEOUT, exc.Timeout, 503, ENGINE, body_code=UNAVAILABLE),
    ErrorCode(OUTCOME_UNKNOWN, exc.OutcomeUnknown, 503, ENGINE, body_code=UNAVAILABLE),
    ErrorCode(UNAVAILABLE, exc.ClusterUnavailable, 503, ENGINE),
    ErrorCode(AUTH_FAILED, exc.AuthenticationFailed, 500, ENGINE),
    ErrorCode(NOT_ACQUIRED, exc.LockNotAcquired, 409, CLIENT),
    ErrorCode(RATE_LIMITED, exc.RateLimited, 429, CLIENT),
    ErrorCode(ALREADY_QUEUED, exc.AlreadyQueued, 409, CLIENT),
    ErrorCode(MEMBER_EXISTS, exc.MembershipRefused, 409, ENGINE),
    ErrorCode(UNKNOWN_MEMBER, exc.MembershipRefused, 404, ENGINE),
    ErrorCode(NOT_LEARNER, exc.MembershipRefused, 409, ENGINE),
    ErrorCode(LAST_VOTER, exc.MembershipRefused, 409, ENGINE),
    ErrorCode(CHANGE_PENDING, exc.ChangePending, 409, ENGINE),
    ErrorCode(MEMBER_UNREACHABLE, exc.MemberUnreachable, 409, CLIENT),
)

CODES: dict[str, ErrorCode] = {entry.code: entry for entry in _TABLE}
MACHINE_CODES = frozenset(code for code, entry in CODES.items() if entry.origin == MACHINE)


def lookup(error: BaseException) -> ErrorCode | None:
    """The table's row for ``error`` (by its code), or None if it is not a registered error."""
    if not isinstance(error, RaftError):
        return None
    return CODES.get(error.code)


def build(code: str, message: str, details: dict[str, Any] | None = None) -> RaftError:
    """The registered exception for ``code`` (``CoordinationError`` for an unknown code)."""
    entry = CODES.get(code)
    if entry is None:
        return exc.CoordinationError(code, message, details)
    return entry.exception.from_record(code, message, details or {})


def typed(error: RaftError) -> RaftError:
    """The specific exception for a raft client error: a generic ``Rejected`` becomes its
    code's class; anything else is typed already and comes back as it is."""
    if type(error) is not Rejected:
        return error
    return build(error.code, error.message, error.details)
