"""Evaluating the cache's writes against the store (used by ``coordination.primitives.cache``).

A write is evaluated when it takes effect, which for a queued write is later than its entry
(``Cache`` decides when). ``evaluate(kind, ctx, version, args, commit)`` answers ``(answer, keys
it changes)``; it changes the store only when ``commit``, so ``Cache`` can first ask, without
changing anything, which keys a write would change (to see whether an L1 holds one of them).
A rejection is raised before anything changes. ``version`` is the write's own entry index (for
a queued write, not ``ctx.index``); TTLs count from ``ctx.now_ms``, when the write takes effect.

``args`` are the validated arguments ``cache_commands`` produced for ``kind``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from coordination.primitives.base import Ctx
from coordination.primitives.cache_l1 import HOLDS_PER_SESSION_MAX, L1Registry
from coordination.primitives.cache_queue import WriteQueue
from coordination.primitives.cache_store import CacheStore
from coordination.primitives.errors import EVICTED, LIMIT, NOT_INTEGER, UNKNOWN_KEY, reject
from coordination.primitives.sessions import Sessions

INT64 = (-(2**63), 2**63 - 1)  # incr operands and results
_DECIMAL = re.compile(rb"-?[0-9]{1,19}")

Evaluation = tuple[Any, list[str]]  # (answer, keys changed)


def expires(ctx: Ctx, ttl: int | None) -> int | None:
    """A TTL counts from when the write takes effect."""
    return None if ttl is None else ctx.now_ms + ttl


class CacheWrites:
    """The evaluators of every write kind; ``set_hold`` also registers its writer in the L1."""

    def __init__(
        self, store: CacheStore, l1: L1Registry, queue: WriteQueue, sessions: Sessions
    ) -> None:
        self.store = store
        self.l1 = l1
        self.queue = queue
        self.sessions = sessions
        self._evals: dict[str, Callable[[Ctx, int, list[Any], bool], Evaluation]] = {
            "set": self._set,
            "set_hold": self._set_hold,
            "add": self._add,
            "delete": self._delete,
            "incr": self._incr,
            "cas": self._cas,
            "touch": self._touch,
            "set_many": self._set_many,
            "delete_many": self._delete_many,
            "clear": self._clear,
        }

    def register(
        self, kind: str, evaluator: Callable[[Ctx, int, list[Any], bool], Evaluation]
    ) -> None:
        """Add a write kind evaluated elsewhere (``cache_txn``'s ``txn``, which needs locks)."""
        self._evals[kind] = evaluator

    def evaluate(
        self, kind: str, ctx: Ctx, version: int, args: list[Any], commit: bool
    ) -> Evaluation:
        return self._evals[kind](ctx, version, args, commit)

    def _set(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        key, value, ttl = args
        if commit:
            self.store.put(key, value, expires(ctx, ttl), version)
        return version, [key]

    def _set_hold(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        key, value, ttl, sid, lease_ms = args
        answer = {"version": version, "registration": None, "lease_ms": 0}
        if not commit:
            return answer, [key]
        until_key = expires(ctx, ttl)
        self.store.put(key, value, until_key, version)
        room = len(self.l1.by_session.get(sid, ())) < HOLDS_PER_SESSION_MAX
        if sid in self.sessions.live and self.queue.head(key) is None and room:
            until = (
                ctx.now_ms + lease_ms
                if until_key is None
                else min(ctx.now_ms + lease_ms, until_key)
            )
            if until > ctx.now_ms:
                self.l1.register(sid, key, until, version)
                answer = {
                    "version": version,
                    "registration": version,
                    "lease_ms": until - ctx.now_ms,
                }
        return answer, [key]

    def _add(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        key, value, ttl = args
        if self.store.version(key) is not None:
            return None, []
        if commit:
            self.store.put(key, value, expires(ctx, ttl), version)
        return version, [key]

    def _delete(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        (key,) = args
        if self.store.version(key) is None:
            return False, []
        if commit:
            self.store.remove(key, version)
        return True, [key]

    def _incr(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        key, delta = args
        if self.store.version(key) is None:
            reject(UNKNOWN_KEY, f"no cache key {key!r} to increment")
        rec = self.store.data.get(key)
        if rec is None:
            reject(EVICTED, f"cache key {key!r} was evicted; read it from Redis and use cas")
        if not _DECIMAL.fullmatch(rec[0]):
            reject(NOT_INTEGER, f"cache key {key!r} does not hold a decimal integer")
        result = int(rec[0]) + delta
        if not INT64[0] <= result <= INT64[1]:
            reject(LIMIT, f"incr of {key!r} overflows a signed 64-bit integer")
        if commit:
            self.store.put(key, str(result).encode(), rec[2], version)
        return result, [key]

    def _cas(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        key, expected, value, ttl = args
        if self.store.version(key) != expected:
            return False, []
        if commit:
            self.store.put(key, value, expires(ctx, ttl), version)
        return version, [key]

    def _touch(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        key, ttl = args
        if self.store.version(key) is None:
            return False, []
        rec = self.store.data.get(key)
        if rec is None:
            reject(EVICTED, f"cache key {key!r} was evicted; read it from Redis and use cas")
        if commit:  # a new version, so the mirror sees the new TTL
            self.store.put(key, rec[0], expires(ctx, ttl), version)
        return True, [key]

    def _set_many(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        pairs, ttl = args
        if commit:
            until = expires(ctx, ttl)
            for key, value in pairs:
                self.store.put(key, value, until, version)
        return [version] * len(pairs), list(dict.fromkeys(key for key, _ in pairs))

    def _delete_many(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        (keys,) = args
        present = [key for key in dict.fromkeys(keys) if self.store.version(key) is not None]
        if commit:
            for key in present:
                self.store.remove(key, version)
        return len(present), present

    def _clear(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        live = self.store.live_keys()
        if commit:
            self.store.clear()
        return len(live), live
