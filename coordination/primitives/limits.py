"""Explicit limits, checked before a command can change anything (violations raise
``limit_exceeded`` or ``bad_command`` with the limit named). Documented in the README."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from coordination.primitives.errors import BAD_COMMAND, LIMIT, reject

NAME_MAX_BYTES = 200  # lock, queue and cache key names
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:/@+=#{}\[\]-]+")  # printable, no spaces or quotes
OWNER_MAX_BYTES = 128
PAYLOAD_MAX_BYTES = 256 * 1024  # one queue message
VALUE_MAX_BYTES = 1024 * 1024  # one cache value
BATCH_MAX = 1000  # keys in get_many / set_many
TXN_OPS_MAX = 64  # compares and operations of one cache.txn (both branches), or one fenced write
PRIORITY_MIN, PRIORITY_MAX = 0, 9
SESSION_TTL_MS = (1_000, 3_600_000)  # 1 s .. 1 h
WAIT_MS = (0, 300_000)  # lock and queue waits: 0 (try) .. 5 min
VISIBILITY_MS = (1_000, 12 * 3_600_000)  # queue lease: 1 s .. 12 h
DELAY_MS = (0, 7 * 24 * 3_600_000)  # delayed delivery: up to 7 days
CACHE_TTL_MS = (1, 30 * 24 * 3_600_000)  # up to 30 days; None = no expiry
QUEUE_DEPTH_MAX = 100_000  # messages (ready + delayed + in flight) per queue
LOCK_WAITERS_MAX = 10_000  # waiting requests per lock (and per semaphore)
SEMAPHORE_LIMIT = (1, 10_000)  # slots of one semaphore
MAX_DELIVERIES = (1, 1000)
DEDUP_WINDOW_MS = (0, 24 * 3_600_000)
# Task results (``results``): one stored value fits a 1 MiB client request with its envelope
# (key, op, msgpack framing); the totals keep the part's share of a snapshot bounded (the cache
# has its own 256 MiB budget; a snapshot is held in memory whole on every node).
RESULT_VALUE_MAX_BYTES = 512 * 1024
RESULT_RECORDS_MAX = 200_000  # stored results and counters
RESULT_TOTAL_MAX_BYTES = 128 * 1024 * 1024  # keys + values + per-record overhead
RESULT_TTL_MS = (1, 3650 * 24 * 3_600_000)  # 1 ms .. 10 years; None = no expiry
RESULT_WAITERS_MAX = 10_000  # blocked result.wait requests, over all keys
RESULT_WAITED_KEYS_MAX = 200_000  # keys those requests wait on, in total (up to 1,000 each)
RESULT_COUNTER_MEMBERS_MAX = 100_000  # distinct members one counter remembers (chord parts)
RESULT_READ_BUDGET_BYTES = 2 * 1024 * 1024  # values in one get_many / wait answer (>= 1 record)
# Rate limits (``ratelimits``): a rate is ``count`` tokens per ``period_ms``; ``burst`` tokens
# at most in a bucket. Integer token math stays exact within int64 at these bounds.
RATE_COUNT = (1, 1_000_000_000)
RATE_PERIOD_MS = (1, 24 * 3_600_000)  # 1 ms .. 1 day
RATE_BURST = (1, 1_000_000_000)
RATELIMIT_BUCKETS_MAX = 100_000  # buckets not yet full again (full ones are dropped)


def name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not value:
        reject(BAD_COMMAND, f"{what} must be a non-empty string")
    if len(value.encode()) > NAME_MAX_BYTES:
        reject(LIMIT, f"{what} longer than {NAME_MAX_BYTES} bytes")
    if not NAME_PATTERN.fullmatch(value):
        reject(BAD_COMMAND, f"{what} {value[:40]!r} has characters outside {NAME_PATTERN.pattern}")
    return value


def owner(value: Any) -> str:
    if not isinstance(value, str):
        reject(BAD_COMMAND, "owner must be a string")
    if len(value.encode()) > OWNER_MAX_BYTES:
        reject(LIMIT, f"owner longer than {OWNER_MAX_BYTES} bytes")
    return value


def blob(value: Any, limit: int, what: str) -> bytes:
    if not isinstance(value, bytes):
        reject(BAD_COMMAND, f"{what} must be bytes")
    if len(value) > limit:
        reject(LIMIT, f"{what} larger than {limit} bytes")
    return value


def integer(value: Any, bounds: tuple[int, int], what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        reject(BAD_COMMAND, f"{what} must be an integer")
    lo, hi = bounds
    if not lo <= value <= hi:
        reject(LIMIT, f"{what} must be in [{lo}, {hi}], got {value}")
    return value


def optional_integer(value: Any, bounds: tuple[int, int], what: str) -> int | None:
    return None if value is None else integer(value, bounds, what)


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        reject(BAD_COMMAND, f"{what} must be a boolean")
    return value


def session_id(value: Any) -> int:
    """A session id's type (whether the session is live is ``Sessions.require``'s to say)."""
    if not isinstance(value, int) or isinstance(value, bool):
        reject(BAD_COMMAND, "session must be an integer id")
    return value


def args(values: list[Any], count: int, op: str) -> list[Any]:
    if len(values) != count:
        reject(BAD_COMMAND, f"{op} takes {count} arguments, got {len(values)}")
    return values


def arity(count: int, op: str) -> Callable[[list[Any]], list[Any]]:
    """A part's ``checks()`` entry for an op whose first check is ``args(values, count, op)``
    and whose next ones read state (or are not worth repeating before the log)."""

    def check(values: list[Any]) -> list[Any]:
        return args(values, count, op)

    return check


def arities(counts: dict[str, int]) -> dict[str, Callable[[list[Any]], list[Any]]]:
    """``arity`` for several ops: ``{op: count}``."""
    return {op: arity(count, op) for op, count in counts.items()}


def prefix_and_limit(
    values: list[Any], op: str, most: int | None = None, optional: bool = False
) -> tuple[str, int | None]:
    """A listing query's ``[prefix, limit]`` (``limit`` in 1..``most``, default ``BATCH_MAX``).
    ``optional``: no arguments at all mean every name, ``("", None)``."""
    if optional and not values:
        return "", None
    prefix, limit = args(values, 2, op)
    if not isinstance(prefix, str):
        reject(BAD_COMMAND, "prefix must be a string")
    return prefix, integer(limit, (1, BATCH_MAX if most is None else most), "limit")
