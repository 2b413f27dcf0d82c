"""Error codes the primitives reject commands with. Clients map each code to a typed exception
(``coordination.client``); the REST API maps them to HTTP statuses. Codes are wire format."""

from __future__ import annotations

from typing import NoReturn

from raft_node.core.fsm import CommandRejected

BAD_COMMAND = "bad_command"  # malformed command (wrong op, arity or types)
LIMIT = "limit_exceeded"  # a documented limit (name, size, range, depth) was exceeded
UNKNOWN_SESSION = "unknown_session"  # no such session (never existed, or closed)
SESSION_EXPIRED = "session_expired"  # the session timed out; everything it held is released
NOT_HOLDER = "not_holder"  # release/renew of a lock the caller does not hold
DEADLOCK = "deadlock"  # waiting would close a cycle in the wait-for graph (message names it)
LOCK_MODE = "lock_mode"  # e.g. reentrant upgrade from shared to exclusive
UNKNOWN_QUEUE = "unknown_queue"
UNKNOWN_MESSAGE = "unknown_message"  # ack/nack of a message not leased to the caller
NOT_INTEGER = "not_integer"  # incr of a cache value that is not an integer
UNKNOWN_KEY = "unknown_key"  # incr of a cache key that does not exist
EVICTED = "evicted"  # incr/touch of a cache key whose value now lives only in Redis

CODES = frozenset(
    {
        BAD_COMMAND,
        LIMIT,
        UNKNOWN_SESSION,
        SESSION_EXPIRED,
        NOT_HOLDER,
        DEADLOCK,
        LOCK_MODE,
        UNKNOWN_QUEUE,
        UNKNOWN_MESSAGE,
        NOT_INTEGER,
        UNKNOWN_KEY,
        EVICTED,
    }
)


def reject(code: str, message: str) -> NoReturn:
    raise CommandRejected(code, message)
