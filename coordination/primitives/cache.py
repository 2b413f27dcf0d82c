"""The replicated cache: versioned keys with TTLs, CAS by version, incr, linearizable L1s.

Every key has a value (bytes), a *version* (the index of the entry of the write that produced
it: unique per write, and increasing per key) and an optional expiry in log time. An expired
key reads as absent at once (queries use the log time of the last applied entry, through
``observe_time``) and is removed by the next ``tick`` that reaches its deadline, which reclaims
its memory.

**L1 coherence, linearizable** (Chubby's rule: a write takes effect only when no L1 can still
serve the old value). Clients may keep keys in a local L1 filled through ``cache.fill``, which
registers them as *holders* until a lease (``cache_l1``). A write (set, add, delete, incr, cas,
touch, set_many, delete_many, clear) that would change a key some live holder has, or that
touches a key on which writes already wait, does *not* change anything when applied: it is
queued per key, FIFO in log order (``cache_queue``), the live holders get an ``invalidate`` event
at once, and the write answers ``Pending(index)``. It takes *effect* once it is at the head of
each of its keys' queues and none of the keys it waits on has a holder left (each released it,
re-filled it, let its lease run out, or lost its session): inside the entry that removed the last
holder (a release, fill, tick or session end), in log order if several go at once. It is
*evaluated* then, against the state at that moment: ``cas`` compares with the version current
then, ``add`` checks existence then, ``incr`` reads the value then, TTLs count from then. So a
queued write may answer ``False``/``None`` or fail (``unknown_key``, ``not_integer``,
``evicted``, ``limit_exceeded``) when it takes effect; its version is still its own entry's index.
Until then queries and fills see the old (committed) value; a fill of a key with queued writes
(of any key while a ``clear`` waits) answers the committed value with ``lease_until == now``
and registers nothing (the client must not cache it: otherwise writes could starve), and a
holder re-filling such a key just drops its registration. A write that changes nothing (``add``
of an existing key, failed ``cas``, delete of an absent key, a rejected one), or one to keys
nobody holds and nothing waits on, takes effect (or is rejected) at once and emits nothing.
A ``clear`` that has something to delete while any L1 registration is live waits for every
registration to drop (every holder is invalidated). Queued writes are bounded (``cache_queue``)
and wait at most for the longest lease taken before them (60 s) plus a tick.

**TTL expiry is not a client write**: an expired key is absent for everyone by log time, and an
L1 lease never outlives the key's expiry (fill caps it, and nothing changes a held key's TTL),
so the tick that removes an expired key does not wait. A key with queued writes is only marked
expired (it reads absent); it is removed when its queue drains, unless a queued write re-created
it, so that per-key versions, deletes included, keep increasing.

**Memory budget.** ``bytes`` = sum of ``len(key) + len(value) + ENTRY_OVERHEAD``. When a write
takes the total over ``max_bytes`` the least recently changed keys are evicted from the front of
``data``. The Redis mirror still has them: an evicted key is remembered as ``evicted[key] =
version`` (bounded; forgetting one is recorded as a delete; keys that are held or have queued
writes are not forgotten, so the bound may be exceeded by that many) and reads of it answer
``{"evicted": True, "version": v}`` so the reader fetches Redis and checks the version.
``max_bytes`` must be the same on every replica.

**Redis mirror.** Effects of different keys no longer happen in version order, so changes are
numbered by a replicated *change sequence* ``seq`` (one per write, delete, expiry, forgotten
eviction or clear that takes effect). ``data`` and ``tombstones`` (a bounded record of deletes)
are kept in ``seq`` order. The node asks ``changes_since(seq)``: the current value (or delete)
of every key changed after ``seq``, oldest change first, as ``(key, value | None, version,
expires_ms)``, or ``None`` when deletes it would need were already forgotten (or a ``clear``
happened after ``seq``): then it resyncs from ``current_values()``. ``latest_change()`` is the
watermark to store once everything up to it is pushed. Redis itself guards each key by the
per-key *version*. Evicting a key before the mirror copied it makes it a miss, never a stale
read, because readers check the version.

Ops (writes) and queries, all arguments positional (``[op, *args]``); a write's answer may come
later (``Pending``) as described above:

=====================================================  ==========================================
``cache.set [key, value, ttl_ms]``                     version
``cache.add [key, value, ttl_ms]``                     version, or None if the key exists
``cache.delete [key]``                                 True if the key existed
``cache.incr [key, delta]``                            the new integer (TTL kept)
``cache.cas [key, expected_version|None, value, ttl]`` new version, or False
``cache.touch [key, ttl_ms]``                          True if the key existed (version bumped)
``cache.set_many [[[key, value], ...], ttl_ms]``       [version, ...] (one version for all)
``cache.delete_many [[key, ...]]``                     how many existed
``cache.clear []``                                     how many existed
``cache.fill [session, key, lease_ms]``                {value, version, expires_ms, lease_until,
                                                       lease_ms} (lease_ms = lease_until - now:
                                                       0 when nothing was registered)
``cache.release [session, [key, ...]]``                registrations dropped
query ``cache.get [key]``                              {value, version, expires_ms} | None |
                                                       {evicted: True, version, expires_ms}
query ``cache.get_many [[key, ...]]``                  [one ``get`` answer per key]
query ``cache.keys [prefix, limit]``                   [{key, version, size, expires_ms}] by key
query ``cache.stats []``                               counters (sizes, evictions, expiries,
                                                       fills and how many found the key)
=====================================================  ==========================================
"""

from __future__ import annotations

import heapq
import re
from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Ctx, Deadlines, Op, Pending, Query
from coordination.primitives.cache_l1 import HOLDS_PER_SESSION_MAX, L1Registry, lease
from coordination.primitives.cache_queue import WriteQueue
from coordination.primitives.errors import (
    BAD_COMMAND,
    EVICTED,
    LIMIT,
    NOT_INTEGER,
    UNKNOWN_KEY,
    reject,
)
from coordination.primitives.sessions import Sessions
from raft_node.host.applier import CommandRejected

__all__ = ["EVICTED", "UNKNOWN_KEY", "Cache"]

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
ENTRY_OVERHEAD = 64  # bytes accounted per key on top of key and value
EVICTED_MAX = 100_000  # evicted keys remembered (oldest forgotten, recorded as a delete)
TOMBSTONES_MAX = 100_000  # deletes remembered for changes_since
INT64 = (-(2**63), 2**63 - 1)  # incr operands and results
_DECIMAL = re.compile(rb"-?[0-9]{1,19}")

Change = tuple[str, bytes | None, int, int | None]  # (key, value or None, version, expires_ms)


def _size(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD


class Cache:
    name = "cache"
    # Rule 1 above. False restores the old, non-linearizable behaviour (a write changes the
    # value at once and only notifies holders); it exists for the tests that show the
    # difference, never set it in production.
    waits_for_holders = True

    def __init__(self, sessions: Sessions, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.sessions = sessions
        self.max_bytes = max_bytes
        self.data: dict[str, list[Any]] = {}  # key -> [value, version, expires_ms, seq]; by seq
        self.evicted: dict[str, int] = {}  # key -> version; eviction order
        self.evicted_expires: dict[str, int] = {}  # key -> expires_ms, evicted keys with a TTL
        self.tombstones: dict[str, list[int]] = {}  # key -> [delete version, seq]; by seq
        self.floor = 0  # changes_since(s) needs s >= floor (older deletes forgotten, or clear)
        self.seq = 0  # change sequence: number of the last change that took effect
        self.bytes = 0
        self.now_ms = 0
        self.evictions = 0  # totals, for stats
        self.expirations = 0
        # L1 misses filled from the cluster (every linearizable client's admitted misses), and
        # how many found the value in memory or only an evicted version (the reader goes to
        # Redis). Counted in the log, so identical on every replica; plain ``cache.get`` reads
        # are queries, not entries, and are not counted.
        self.fills = self.fill_hits = self.fill_evicted = 0
        self.l1 = L1Registry()
        self.queue = WriteQueue()
        self._ttl = Deadlines()
        self._pushes = 0
        self._evals = {
            "set": self._eval_set,
            "set_hold": self._eval_set_hold,
            "add": self._eval_add,
            "delete": self._eval_delete,
            "incr": self._eval_incr,
            "cas": self._eval_cas,
            "touch": self._eval_touch,
            "set_many": self._eval_set_many,
            "delete_many": self._eval_delete_many,
            "clear": self._eval_clear,
        }

    def ops(self) -> dict[str, Op]:
        return {
            "cache.set": self.set,
            "cache.set_hold": self.set_hold,
            "cache.add": self.add,
            "cache.delete": self.delete,
            "cache.incr": self.incr,
            "cache.cas": self.cas,
            "cache.touch": self.touch,
            "cache.set_many": self.set_many,
            "cache.delete_many": self.delete_many,
            "cache.clear": self.clear,
            "cache.fill": self.fill,
            "cache.release": self.release,
        }

    def queries(self) -> dict[str, Query]:
        return {
            "cache.get": self.get,
            "cache.get_many": self.get_many,
            "cache.keys": self.keys,
            "cache.stats": self.stats,
        }

    # -- reading state --------------------------------------------------------------------------

    def _alive(self, expires: int | None) -> bool:
        return expires is None or self.now_ms < expires

    def _version(self, key: str) -> int | None:
        """Version of the key's current value (in memory or evicted), None if absent."""
        rec = self.data.get(key)
        if rec is not None:
            return rec[1] if self._alive(rec[2]) else None
        version = self.evicted.get(key)
        if version is not None and self._alive(self.evicted_expires.get(key)):
            return version
        return None

    def _read(self, key: str) -> dict[str, Any] | None:
        rec = self.data.get(key)
        if rec is not None:
            if not self._alive(rec[2]):
                return None
            return {"value": rec[0], "version": rec[1], "expires_ms": rec[2]}
        if self._version(key) is None:
            return None
        return {"evicted": True, "version": self.evicted[key], "expires_ms": self._expiry(key)}

    def _expiry(self, key: str) -> int | None:
        rec = self.data.get(key)
        return rec[2] if rec is not None else self.evicted_expires.get(key)

    # -- entry bookkeeping ----------------------------------------------------------------------

    def observe_time(self, now_ms: int) -> None:
        """Called before every applied entry: queries use the latest entry's log time."""
        self.now_ms = max(self.now_ms, now_ms)

    def _begin(self, ctx: Ctx) -> None:
        """First thing in every op, tick and session end (even one it rejects: log time moved
        all the same)."""
        self.now_ms = max(self.now_ms, ctx.now_ms)

    def _finish(self, ctx: Ctx) -> None:
        """Last thing in every entry that was not rejected: drop registrations whose lease ran
        out, let queued writes that nothing holds back any more take effect, then evict."""
        self.l1.expire(ctx.now_ms)
        self._settle(ctx)
        self._evict(ctx)

    # -- changing state (every change goes through _put, _remove or _eval_clear) ----------------

    def _put(self, key: str, value: bytes, expires: int | None, version: int) -> None:
        old = self.data.pop(key, None)
        if old is not None:
            self.bytes -= _size(key, old[0])
        elif self.evicted.pop(key, None) is not None:
            self.evicted_expires.pop(key, None)
        self.tombstones.pop(key, None)
        self.seq += 1
        self.data[key] = [value, version, expires, self.seq]
        self.bytes += _size(key, value)
        if expires is not None:
            self._push(expires, key)

    def _remove(self, key: str, version: int) -> None:
        """Delete ``key`` (in memory or evicted) at ``version``."""
        old = self.data.pop(key, None)
        if old is not None:
            self.bytes -= _size(key, old[0])
        else:
            del self.evicted[key]
            self.evicted_expires.pop(key, None)
        self.seq += 1
        self.tombstones.pop(key, None)
        self.tombstones[key] = [version, self.seq]
        while len(self.tombstones) > TOMBSTONES_MAX:
            oldest = next(iter(self.tombstones))
            self.floor = max(self.floor, self.tombstones.pop(oldest)[1])

    def _expire(self, ctx: Ctx, key: str) -> None:
        """Remove an expired key (not a client write: holders are told, nobody waits)."""
        self._remove(key, ctx.index)
        self.expirations += 1
        self.l1.notify(key, ctx.index, ctx.now_ms)

    def _evict(self, ctx: Ctx) -> None:
        while self.bytes > self.max_bytes and self.data:
            key = next(iter(self.data))
            value, version, expires, _ = self.data[key]
            if not self._alive(expires) and key not in self.queue.by_key:
                self._expire(ctx, key)  # due anyway: an expiry, not an eviction
                continue
            del self.data[key]
            self.bytes -= _size(key, value)
            self.evicted[key] = version
            if expires is not None:
                self.evicted_expires[key] = expires
            self.evictions += 1
        while len(self.evicted) > EVICTED_MAX:
            # Forget the oldest, except keys an L1 holds or writes wait on (bounded by those).
            victim = next(
                (k for k in self.evicted if k not in self.queue.by_key and not self.l1.held(k)),
                None,
            )
            if victim is None:
                break
            self._remove(victim, ctx.index)

    def _ttl_current(self, key: str) -> int | None:
        """The deadline the TTL heap should act on: none while writes are queued on the key
        (it is removed, if still expired, when they are done: see ``_idle``)."""
        return None if key in self.queue.by_key else self._expiry(key)

    def _push(self, deadline: int, key: str) -> None:
        self._ttl.push(deadline, key)
        self._pushes += 1
        if self._pushes > 2 * (len(self.data) + len(self.evicted_expires)) + 1024:
            self._rebuild_ttl()

    def _rebuild_ttl(self) -> None:
        items = [(rec[2], key) for key, rec in self.data.items() if rec[2] is not None]
        items += [(expires, key) for key, expires in self.evicted_expires.items()]
        self._ttl.rebuild(items)
        self._pushes = len(items)

    # -- writes: decide, queue, take effect -----------------------------------------------------

    def _write(self, ctx: Ctx, kind: str, args: list[Any], keys: list[str] | None) -> Any:
        """Apply a validated write on ``keys`` (None: every key): at once, or queued."""
        if keys != [] and self.queue.blocks(keys):
            self.queue.check_room(keys)
            result: Any = self._enqueue(ctx, kind, args, keys, keys)
        else:
            result, changes = self._evals[kind](ctx, ctx.index, args, False)
            if keys is None:
                held = bool(changes) and self.l1.any_live(ctx.now_ms)
            else:
                held = any(self.l1.live(key, ctx.now_ms) for key in changes)
            if held and self.waits_for_holders:
                self.queue.check_room(keys)
                result = self._enqueue(ctx, kind, args, keys, None if keys is None else changes)
            elif changes or keys is None:
                # Same answer as the dry run, except set_hold, which registers on commit.
                result, _ = self._evals[kind](ctx, ctx.index, args, True)
                if held:  # the old behaviour (waits_for_holders False): just tell them
                    self._notify(ctx, ctx.index, changes if keys is not None else None)
        self._finish(ctx)
        return result

    def _enqueue(
        self, ctx: Ctx, kind: str, args: list[Any], keys: list[str] | None, wait: Any
    ) -> Pending:
        self.queue.push(ctx.index, kind, args, keys, wait)
        self._notify(ctx, ctx.index, wait)
        return Pending(ctx.index)

    def _notify(self, ctx: Ctx, version: int, keys: list[str] | None) -> None:
        if keys is None:
            self.l1.notify_all(version, ctx.now_ms)
        else:
            for key in keys:
                self.l1.notify(key, version, ctx.now_ms)

    def _ready(self, token: int) -> bool:
        if not self.queue.at_front(token):
            return False
        wait = self.queue.ops[token][3]
        if wait is None:
            return self.l1.count() == 0
        return not any(self.l1.held(key) for key in wait)

    def _settle(self, ctx: Ctx) -> None:
        """Let every queued write that may go now take effect, smallest token (log order)
        first. Only writes at the head of a freed key's queue, behind one that just took
        effect, or the oldest clear can have become ready, so only those are examined.
        Registrations are all live here (``_finish`` dropped the others)."""
        freed = self.l1.take_freed()
        queue = self.queue
        if not queue.ops:
            return
        todo: list[int] = []
        seen: set[int] = set()

        def consider(token: int | None) -> None:
            if token is not None and token not in seen:
                seen.add(token)
                heapq.heappush(todo, token)

        for key in freed:
            consider(queue.head(key))
        if queue.clears:
            consider(queue.clears[0])
        while todo:
            token = heapq.heappop(todo)
            seen.discard(token)
            if not self._ready(token):
                continue
            kind, args, keys, _ = queue.pop(token)
            self._take_effect(ctx, token, kind, args)
            if keys is None:  # a clear: what waited behind it may go
                for key in list(queue.by_key):
                    consider(queue.head(key))
            else:
                for key in keys:
                    if key in queue.by_key:
                        consider(queue.head(key))
                    else:
                        self._idle(ctx, key)
            if queue.clears:
                consider(queue.clears[0])

    def _take_effect(self, ctx: Ctx, token: int, kind: str, args: list[Any]) -> None:
        try:
            result, _ = self._evals[kind](ctx, token, args, True)
        except CommandRejected as exc:  # evaluated only now: the state may have changed
            ctx.fail(token, exc.code, exc.message)
        else:
            ctx.complete(token, result)

    def _idle(self, ctx: Ctx, key: str) -> None:
        """No write waits on ``key`` any more: resume its TTL (remove it if it expired)."""
        if key not in self.data and key not in self.evicted:
            return
        expires = self._expiry(key)
        if expires is None:
            return
        if expires <= self.now_ms:
            self._expire(ctx, key)
        else:
            self._push(expires, key)

    # -- evaluating writes: (answer, keys changed); change state only when ``commit`` -----------
    # Rejections are raised before anything changes. ``version`` is the write's own index.

    def _eval_set(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        key, value, ttl = args
        if commit:
            self._put(key, value, _expires(ctx, ttl), version)
        return version, [key]

    def _eval_set_hold(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        key, value, ttl, sid, lease_ms = args
        answer = {"version": version, "registration": None, "lease_ms": 0}
        if not commit:
            return answer, [key]
        expires = _expires(ctx, ttl)
        self._put(key, value, expires, version)
        room = len(self.l1.by_session.get(sid, ())) < HOLDS_PER_SESSION_MAX
        if sid in self.sessions.live and self.queue.head(key) is None and room:
            until = (
                ctx.now_ms + lease_ms if expires is None else min(ctx.now_ms + lease_ms, expires)
            )
            if until > ctx.now_ms:
                self.l1.register(sid, key, until, version)
                answer = {
                    "version": version,
                    "registration": version,
                    "lease_ms": until - ctx.now_ms,
                }
        return answer, [key]

    def _eval_add(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        key, value, ttl = args
        if self._version(key) is not None:
            return None, []
        if commit:
            self._put(key, value, _expires(ctx, ttl), version)
        return version, [key]

    def _eval_delete(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        (key,) = args
        if self._version(key) is None:
            return False, []
        if commit:
            self._remove(key, version)
        return True, [key]

    def _eval_incr(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        key, delta = args
        if self._version(key) is None:
            reject(UNKNOWN_KEY, f"no cache key {key!r} to increment")
        rec = self.data.get(key)
        if rec is None:
            reject(EVICTED, f"cache key {key!r} was evicted; read it from Redis and use cas")
        if not _DECIMAL.fullmatch(rec[0]):
            reject(NOT_INTEGER, f"cache key {key!r} does not hold a decimal integer")
        result = int(rec[0]) + delta
        if not INT64[0] <= result <= INT64[1]:
            reject(LIMIT, f"incr of {key!r} overflows a signed 64-bit integer")
        if commit:
            self._put(key, str(result).encode(), rec[2], version)
        return result, [key]

    def _eval_cas(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        key, expected, value, ttl = args
        if self._version(key) != expected:
            return False, []
        if commit:
            self._put(key, value, _expires(ctx, ttl), version)
        return version, [key]

    def _eval_touch(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        key, ttl = args
        if self._version(key) is None:
            return False, []
        rec = self.data.get(key)
        if rec is None:
            reject(EVICTED, f"cache key {key!r} was evicted; read it from Redis and use cas")
        if commit:  # a new version, so the mirror sees the new TTL
            self._put(key, rec[0], _expires(ctx, ttl), version)
        return True, [key]

    def _eval_set_many(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        pairs, ttl = args
        if commit:
            expires = _expires(ctx, ttl)
            for key, value in pairs:
                self._put(key, value, expires, version)
        return [version] * len(pairs), list(dict.fromkeys(key for key, _ in pairs))

    def _eval_delete_many(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        (keys,) = args
        present = [key for key in dict.fromkeys(keys) if self._version(key) is not None]
        if commit:
            for key in present:
                self._remove(key, version)
        return len(present), present

    def _eval_clear(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Any:
        live = [key for key in [*self.data, *self.evicted] if self._version(key) is not None]
        if commit:
            self.data, self.evicted, self.evicted_expires, self.tombstones = {}, {}, {}, {}
            self.bytes = 0
            self.seq += 1
            self.floor = self.seq  # the mirror resyncs fully after a clear
            self._rebuild_ttl()
        return len(live), live

    # -- ops: validate (rejections change nothing), then write ----------------------------------

    def set(self, ctx: Ctx, args: list[Any]) -> Any:
        self._begin(ctx)
        key, value, ttl = limits.args(args, 3, "cache.set")
        key, value, ttl = _entry(key, value, ttl)
        return self._write(ctx, "set", [key, value, ttl], [key])

    def set_hold(self, ctx: Ctx, args: list[Any]) -> Any:
        """``[session, key, value, ttl_ms, lease_ms]``: a set after which the writer holds the
        new value in its L1 (registered when the write takes effect, lease from then), so a
        process does not lose what it just wrote. Answers ``{version, registration, lease_ms}``
        (registration None, lease 0 when it could not register: session gone, or more writes
        queued on the key)."""
        self._begin(ctx)
        sid, key, value, ttl, lease_ms = limits.args(args, 5, "cache.set_hold")
        sid = self.sessions.require(sid)
        key, value, ttl = _entry(key, value, ttl)
        return self._write(ctx, "set_hold", [key, value, ttl, sid, lease(lease_ms)], [key])

    def add(self, ctx: Ctx, args: list[Any]) -> Any:
        self._begin(ctx)
        key, value, ttl = limits.args(args, 3, "cache.add")
        key, value, ttl = _entry(key, value, ttl)
        return self._write(ctx, "add", [key, value, ttl], [key])

    def delete(self, ctx: Ctx, args: list[Any]) -> Any:
        self._begin(ctx)
        (key,) = limits.args(args, 1, "cache.delete")
        key = limits.name(key, "key")
        return self._write(ctx, "delete", [key], [key])

    def incr(self, ctx: Ctx, args: list[Any]) -> Any:
        self._begin(ctx)
        key, delta = limits.args(args, 2, "cache.incr")
        key = limits.name(key, "key")
        delta = limits.integer(delta, INT64, "delta")
        return self._write(ctx, "incr", [key, delta], [key])

    def cas(self, ctx: Ctx, args: list[Any]) -> Any:
        self._begin(ctx)
        key, expected, value, ttl = limits.args(args, 4, "cache.cas")
        key, value, ttl = _entry(key, value, ttl)
        if expected is not None:
            expected = limits.integer(expected, (0, INT64[1]), "expected_version")
        return self._write(ctx, "cas", [key, expected, value, ttl], [key])

    def touch(self, ctx: Ctx, args: list[Any]) -> Any:
        self._begin(ctx)
        key, ttl = limits.args(args, 2, "cache.touch")
        key = limits.name(key, "key")
        ttl = _ttl(ttl)
        return self._write(ctx, "touch", [key, ttl], [key])

    def set_many(self, ctx: Ctx, args: list[Any]) -> Any:
        self._begin(ctx)
        items, ttl = limits.args(args, 2, "cache.set_many")
        if not isinstance(items, list) or len(items) > limits.BATCH_MAX:
            reject(LIMIT, f"set_many takes a list of at most {limits.BATCH_MAX} [key, value]")
        ttl = _ttl(ttl)
        pairs = []
        for item in items:
            if not isinstance(item, list) or len(item) != 2:
                reject(BAD_COMMAND, "set_many items must be [key, value] pairs")
            key, value, _ = _entry(item[0], item[1], None)
            pairs.append([key, value])
        keys = list(dict.fromkeys(key for key, _ in pairs))
        return self._write(ctx, "set_many", [pairs, ttl], keys)

    def delete_many(self, ctx: Ctx, args: list[Any]) -> Any:
        self._begin(ctx)
        (keys,) = limits.args(args, 1, "cache.delete_many")
        keys = _keys(keys)
        return self._write(ctx, "delete_many", [keys], list(dict.fromkeys(keys)))

    def clear(self, ctx: Ctx, args: list[Any]) -> Any:
        self._begin(ctx)
        limits.args(args, 0, "cache.clear")
        return self._write(ctx, "clear", [], None)

    def fill(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        self._begin(ctx)
        sid, key, lease_ms = limits.args(args, 3, "cache.fill")
        sid = self.sessions.require(sid)
        key = limits.name(key, "key")
        lease_ms = lease(lease_ms)
        current = self._read(key) or {"value": None, "version": None, "expires_ms": None}
        if self.queue.busy(key):
            # Writes wait on this key: serve the committed value, uncacheable, and let a
            # re-filling holder go (its copy is acknowledged as dropped).
            self.l1.drop(sid, key)
            until = ctx.now_ms
        else:
            until = ctx.now_ms + lease_ms
            if current["expires_ms"] is not None:
                until = min(until, current["expires_ms"])  # an L1 copy never outlives the key
            self.l1.register(sid, key, until, ctx.index)
        self.fills += 1  # after every check that may reject: a rejected fill changes nothing
        if current["version"] is not None:
            if current.get("evicted"):
                self.fill_evicted += 1
            else:
                self.fill_hits += 1
        self._finish(ctx)
        return {
            "value": None,
            **current,
            "lease_until": until,
            "lease_ms": until - ctx.now_ms,
            "registration": ctx.index if until > ctx.now_ms else None,
        }

    def release(self, ctx: Ctx, args: list[Any]) -> int:
        self._begin(ctx)
        sid, items = limits.args(args, 2, "cache.release")
        sid = self.sessions.require(sid)
        keys, regs = _release_items(items)
        dropped = self.l1.release(sid, keys, regs)
        self._finish(ctx)
        return dropped

    # -- time and sessions ----------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        deadlines = [self._ttl.next(self._ttl_current), self.l1.next_deadline()]
        due = [d for d in deadlines if d is not None]
        return min(due) if due else None

    def tick(self, ctx: Ctx) -> None:
        self._begin(ctx)
        self.l1.expire(ctx.now_ms)  # leases first: an L1 copy never outlives its key's expiry
        self._settle(ctx)
        for key in self._ttl.due(ctx.now_ms, self._ttl_current):
            if (key in self.data or key in self.evicted) and not self._alive(self._expiry(key)):
                self._expire(ctx, key)
        self._evict(ctx)

    def session_ended(self, ctx: Ctx, session_id: int) -> None:
        self._begin(ctx)
        self.l1.session_ended(session_id)
        self._finish(ctx)

    def drain_events(self) -> list[tuple[str, list[Any]]]:
        """Invalidation events ``(f"session:{sid}", ["invalidate", key, version])`` produced
        since the last call, in log order, for the node to push to those sessions' clients."""
        return self.l1.drain_events()

    # -- helpers for the Redis mirror (called between applies) ----------------------------------

    def latest_change(self) -> int:
        """The change sequence number of the last change (the mirror's watermark; not a key
        version)."""
        return self.seq

    def changes_since(self, seq: int) -> list[Change] | None:
        """The current state of every key changed after change number ``seq``, oldest change
        first, as ``(key, value or None for a delete, version, expires_ms)``; None means
        "resync fully" (from ``current_values``). Keys evicted since then are not included
        (the mirror keeps what it has: readers check versions)."""
        if seq < self.floor:
            return None
        out: list[tuple[int, Change]] = []
        for key in reversed(self.tombstones):
            version, changed = self.tombstones[key]
            if changed <= seq:
                break
            out.append((changed, (key, None, version, None)))
        for key in reversed(self.data):
            value, version, expires, changed = self.data[key]
            if changed <= seq:
                break
            out.append((changed, (key, value, version, expires)))
        out.sort(key=lambda item: item[0])  # change numbers are unique
        return [change for _, change in out]

    def current_values(self) -> list[Change]:
        """Every key held in memory, oldest change first (for a full resync)."""
        return [(key, rec[0], rec[1], rec[2]) for key, rec in self.data.items()]

    # -- queries --------------------------------------------------------------------------------

    def get(self, args: list[Any]) -> dict[str, Any] | None:
        (key,) = limits.args(args, 1, "cache.get")
        return self._read(limits.name(key, "key"))

    def get_many(self, args: list[Any]) -> list[dict[str, Any] | None]:
        (keys,) = limits.args(args, 1, "cache.get_many")
        return [self._read(key) for key in _keys(keys)]

    def keys(self, args: list[Any]) -> list[dict[str, Any]]:
        prefix, limit = limits.args(args, 2, "cache.keys")
        if not isinstance(prefix, str):
            reject(BAD_COMMAND, "prefix must be a string")
        limit = limits.integer(limit, (1, limits.BATCH_MAX), "limit")
        found = (
            key for key, rec in self.data.items() if key.startswith(prefix) and self._alive(rec[2])
        )
        return [
            {
                "key": key,
                "version": self.data[key][1],
                "size": len(self.data[key][0]),
                "expires_ms": self.data[key][2],
            }
            for key in heapq.nsmallest(limit, found)
        ]

    def stats(self, args: list[Any]) -> dict[str, Any]:
        limits.args(args, 0, "cache.stats")
        return {
            "keys": len(self.data),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "evicted": len(self.evicted),
            "evictions_total": self.evictions,
            "expirations_total": self.expirations,
            "fills_total": self.fills,
            "fill_hits_total": self.fill_hits,
            "fill_evicted_total": self.fill_evicted,
            "l1_holders": self.l1.count(),
            "pending_writes": len(self.queue),
            "tombstones": len(self.tombstones),
            "latest_change": self.seq,
        }

    # -- snapshots ------------------------------------------------------------------------------

    def to_state(self) -> Any:
        return {
            "data": [[key, *rec] for key, rec in self.data.items()],
            "evicted": [[k, v, self.evicted_expires.get(k)] for k, v in self.evicted.items()],
            "tombstones": [[key, *rec] for key, rec in self.tombstones.items()],
            "counters": [self.floor, self.seq, self.bytes, self.now_ms],
            "totals": [
                self.evictions,
                self.expirations,
                self.fills,
                self.fill_hits,
                self.fill_evicted,
            ],
            "l1": self.l1.to_state(),
            "queue": self.queue.to_state(),
        }

    def from_state(self, state: Any) -> None:
        self.data = {row[0]: list(row[1:]) for row in state["data"]}
        self.evicted = {key: version for key, version, _ in state["evicted"]}
        self.evicted_expires = {key: exp for key, _, exp in state["evicted"] if exp is not None}
        self.tombstones = {row[0]: list(row[1:]) for row in state["tombstones"]}
        self.floor, self.seq, self.bytes, self.now_ms = state["counters"]
        totals = [*state["totals"], 0, 0, 0]  # snapshots before fill counters had two
        self.evictions, self.expirations, self.fills, self.fill_hits, self.fill_evicted = totals[:5]
        self.l1.from_state(state["l1"])
        self.queue.from_state(state["queue"])
        self._rebuild_ttl()


def _entry(key: Any, value: Any, ttl: Any) -> tuple[str, bytes, int | None]:
    key = limits.name(key, "key")
    value = limits.blob(value, limits.VALUE_MAX_BYTES, "value")
    return key, value, _ttl(ttl)


def _ttl(ttl: Any) -> int | None:
    return limits.optional_integer(ttl, limits.CACHE_TTL_MS, "ttl_ms")


def _expires(ctx: Ctx, ttl: int | None) -> int | None:
    """A TTL counts from when the write takes effect."""
    return None if ttl is None else ctx.now_ms + ttl


def _release_items(items: Any) -> tuple[list[str], list[int | None]]:
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


def _keys(keys: Any) -> list[str]:
    if not isinstance(keys, list):
        reject(BAD_COMMAND, "keys must be a list")
    if len(keys) > limits.BATCH_MAX:
        reject(LIMIT, f"at most {limits.BATCH_MAX} keys per command")
    return [limits.name(key, "key") for key in keys]
