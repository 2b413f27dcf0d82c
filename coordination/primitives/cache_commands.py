"""Validating the cache's commands (used by ``coordination.primitives.cache``).

Each write command's arguments arrive positional and untrusted (``[op, *args]`` off the log).
``WRITES`` maps an op to its parser, which checks them against ``limits`` and answers a
``Write``: the kind of write, its validated arguments (what ``cache_writes`` evaluates and what a
queued write stores in the snapshot) and the keys it touches (``None`` for ``clear``: every
key). Parsers reject before anything changes, in argument order, so a command with several bad
arguments always fails on the same one on every replica.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Check
from coordination.primitives.cache_l1 import lease
from coordination.primitives.cache_writes import INT64
from coordination.primitives.errors import BAD_COMMAND, LIMIT, reject
from coordination.primitives.sessions import Sessions

Write = tuple[str, list[Any], list[str] | None]  # (kind, validated args, keys; None: every key)


def parse_set(args: list[Any], sessions: Sessions) -> Write:
    key, value, ttl = limits.args(args, 3, "cache.set")
    key, value, ttl = entry(key, value, ttl)
    return "set", [key, value, ttl], [key]


def parse_set_hold(args: list[Any], sessions: Sessions) -> Write:
    """``[session, key, value, ttl_ms, lease_ms]``: a set after which the writer holds the new
    value in its L1 (registered when the write takes effect, lease from then), so a process does
    not lose what it just wrote. Answers ``{version, registration, lease_ms}`` (registration
    None, lease 0 when it could not register: session gone, or more writes queued on the key)."""
    sid, key, value, ttl, lease_ms = limits.args(args, 5, "cache.set_hold")
    sid = sessions.require(sid)
    key, value, ttl = entry(key, value, ttl)
    return "set_hold", [key, value, ttl, sid, lease(lease_ms)], [key]


def parse_add(args: list[Any], sessions: Sessions) -> Write:
    key, value, ttl = limits.args(args, 3, "cache.add")
    key, value, ttl = entry(key, value, ttl)
    return "add", [key, value, ttl], [key]


def parse_delete(args: list[Any], sessions: Sessions) -> Write:
    (key,) = limits.args(args, 1, "cache.delete")
    key = limits.name(key, "key")
    return "delete", [key], [key]


def parse_incr(args: list[Any], sessions: Sessions) -> Write:
    key, delta = limits.args(args, 2, "cache.incr")
    key = limits.name(key, "key")
    delta = limits.integer(delta, INT64, "delta")
    return "incr", [key, delta], [key]


def parse_cas(args: list[Any], sessions: Sessions) -> Write:
    key, expected, value, ttl = limits.args(args, 4, "cache.cas")
    key, value, ttl = entry(key, value, ttl)
    if expected is not None:
        expected = limits.integer(expected, (0, INT64[1]), "expected_version")
    return "cas", [key, expected, value, ttl], [key]


def parse_touch(args: list[Any], sessions: Sessions) -> Write:
    key, ttl = limits.args(args, 2, "cache.touch")
    key = limits.name(key, "key")
    return "touch", [key, ttl_ms(ttl)], [key]


def parse_set_many(args: list[Any], sessions: Sessions) -> Write:
    items, ttl = limits.args(args, 2, "cache.set_many")
    if not isinstance(items, list) or len(items) > limits.BATCH_MAX:
        reject(LIMIT, f"set_many takes a list of at most {limits.BATCH_MAX} [key, value]")
    ttl = ttl_ms(ttl)
    pairs = []
    for item in items:
        if not isinstance(item, list) or len(item) != 2:
            reject(BAD_COMMAND, "set_many items must be [key, value] pairs")
        key, value, _ = entry(item[0], item[1], None)
        pairs.append([key, value])
    keys = list(dict.fromkeys(key for key, _ in pairs))
    return "set_many", [pairs, ttl], keys


def parse_delete_many(args: list[Any], sessions: Sessions) -> Write:
    (keys,) = limits.args(args, 1, "cache.delete_many")
    names = key_list(keys)
    return "delete_many", [names], list(dict.fromkeys(names))


def parse_clear(args: list[Any], sessions: Sessions) -> Write:
    limits.args(args, 0, "cache.clear")
    return "clear", [], None


WRITES: dict[str, Callable[[list[Any], Sessions], Write]] = {
    "cache.set": parse_set,
    "cache.set_hold": parse_set_hold,
    "cache.add": parse_add,
    "cache.delete": parse_delete,
    "cache.incr": parse_incr,
    "cache.cas": parse_cas,
    "cache.touch": parse_touch,
    "cache.set_many": parse_set_many,
    "cache.delete_many": parse_delete_many,
    "cache.clear": parse_clear,
}


class _NoSessions:
    """Stands in for ``Sessions`` when a parser runs as a pre-log check: a check must not read
    state, so a parser that starts to (``require``) fails loudly instead of checking stale
    state on the leader."""

    def require(self, session_id: Any) -> int:
        raise RuntimeError("a cache parser that reads sessions cannot be a pre-log check")


def _stateless(parse: Callable[[list[Any], Sessions], Write]) -> Check:
    def check(args: list[Any]) -> Write:
        return parse(args, _NO_SESSIONS)  # type: ignore[arg-type]

    return check


def _session_first(count: int, op: str) -> Check:
    """Arity and the session id's type: the checks of an op that looks its session up next."""

    def check(args: list[Any]) -> int:
        return limits.session_id(limits.args(args, count, op)[0])

    return check


_NO_SESSIONS = _NoSessions()

# What the leader checks before proposing (``CoordinationMachine.validate``): every write's whole
# parse, except ``set_hold``'s, which looks its session up after the arity; fills, releases and
# renewals too.
CHECKS: dict[str, Check] = {
    **{op: _stateless(parse) for op, parse in WRITES.items() if op != "cache.set_hold"},
    "cache.set_hold": _session_first(5, "cache.set_hold"),
    "cache.fill": _session_first(3, "cache.fill"),
    "cache.release": _session_first(2, "cache.release"),
    "cache.renew": _session_first(3, "cache.renew"),
}


# -- argument checks shared with fills, releases and queries ------------------------------------


def entry(key: Any, value: Any, ttl: Any) -> tuple[str, bytes, int | None]:
    key = limits.name(key, "key")
    value = limits.blob(value, limits.VALUE_MAX_BYTES, "value")
    return key, value, ttl_ms(ttl)


def ttl_ms(ttl: Any) -> int | None:
    return limits.optional_integer(ttl, limits.CACHE_TTL_MS, "ttl_ms")


def release_items(items: Any) -> tuple[list[str], list[int | None]]:
    """``cache.release`` takes keys, or ``[key, registration]`` pairs (see L1Registry.release)."""
    if not isinstance(items, list):
        reject(BAD_COMMAND, "keys must be a list")
    if len(items) > limits.BATCH_MAX:
        reject(LIMIT, f"at most {limits.BATCH_MAX} keys per command")
    keys: list[str] = []
    regs: list[int | None] = []
    for item in items:
        if isinstance(item, list) and len(item) == 2:
            keys.append(limits.name(item[0], "key"))
            regs.append(limits.integer(item[1], (0, 2**63 - 1), "registration"))
        else:
            keys.append(limits.name(item, "key"))
            regs.append(None)
    return keys, regs


def key_list(keys: Any) -> list[str]:
    if not isinstance(keys, list):
        reject(BAD_COMMAND, "keys must be a list")
    if len(keys) > limits.BATCH_MAX:
        reject(LIMIT, f"at most {limits.BATCH_MAX} keys per command")
    return [limits.name(key, "key") for key in keys]
