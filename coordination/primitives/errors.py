"""How the primitives refuse a command: by a registered code (``coordination.errors``, the one
table of codes, which also says what clients raise and which HTTP status the API answers).

    reject(DEADLOCK, "cycle: ...", cycle=[12, 15, 12], locks=["b", "a"])

The keyword arguments become the error's ``details``; they reach the client as they are
(deterministic, msgpack-able values: a rejection is remembered for retries and snapshotted).
"""

from __future__ import annotations

from typing import Any, NoReturn

from coordination.errors import (
    BAD_COMMAND,
    COMPACTED,
    DEADLOCK,
    EVICTED,
    INVALID_RATE,
    LIMIT,
    LOCK_MODE,
    MACHINE_CODES,
    NOT_HOLDER,
    NOT_INTEGER,
    SEMAPHORE_LIMIT,
    SESSION_EXPIRED,
    STALE_TOKEN,
    UNKNOWN_KEY,
    UNKNOWN_MESSAGE,
    UNKNOWN_QUEUE,
    UNKNOWN_SESSION,
    UNKNOWN_SUBSCRIPTION,
)
from raft_node.core.fsm import CommandRejected

__all__ = [
    "BAD_COMMAND",
    "CODES",
    "COMPACTED",
    "DEADLOCK",
    "EVICTED",
    "INVALID_RATE",
    "LIMIT",
    "LOCK_MODE",
    "NOT_HOLDER",
    "NOT_INTEGER",
    "SEMAPHORE_LIMIT",
    "SESSION_EXPIRED",
    "STALE_TOKEN",
    "UNKNOWN_KEY",
    "UNKNOWN_MESSAGE",
    "UNKNOWN_QUEUE",
    "UNKNOWN_SESSION",
    "UNKNOWN_SUBSCRIPTION",
    "reject",
]

CODES = MACHINE_CODES


def reject(code: str, message: str, **details: Any) -> NoReturn:
    """Refuse the command being applied with ``code``, which must be registered: a code
    clients could not map would reach users as an untyped error."""
    if code not in MACHINE_CODES:
        raise ValueError(f"{code!r} is not a registered machine error code")
    raise CommandRejected(code, message, details)
