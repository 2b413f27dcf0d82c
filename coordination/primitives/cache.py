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

**The parts.** ``cache_store`` holds the keys, versions, TTLs, the memory budget (eviction)
and the change sequence the Redis mirror follows (its docstring describes them);
``cache_commands`` validates each write's arguments; ``cache_writes`` evaluates a write against
the store; ``cache_txn`` parses and evaluates transactions and fenced writes (a write kind
that compares keys and lock tokens, and may release locks, so it holds the locks part);
``cache_l1`` is the registry of L1 holders and ``cache_queue`` the queued writes. This
module is the state-machine part that joins them: it decides whether a write takes effect at once
or waits, lets waiting writes go, and answers fills, releases, ticks, queries and snapshots.

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
``cache.txn [compares, success, failure]``             {succeeded, results} (``cache_txn``)
``cache.fenced [lock, token, ops]``                    [result, ...], or ``stale_token``
``cache.fill [session, key, lease_ms]``                {value, version, expires_ms, lease_until,
                                                       lease_ms} (lease_ms = lease_until - now:
                                                       0 when nothing was registered)
``cache.release [session, [key, ...]]``                registrations dropped
``cache.renew [session, [[key, reg], ...], lease_ms]`` [[key, lease_ms], ...] for the live,
                                                       unnotified registrations it extended
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
from collections.abc import Callable
from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Check, Ctx, Op, Pending, Query, Record
from coordination.primitives.cache_commands import (
    CHECKS,
    WRITES,
    Write,
    key_list,
    release_items,
)
from coordination.primitives.cache_l1 import L1Registry, lease
from coordination.primitives.cache_queue import WriteQueue
from coordination.primitives.cache_store import (
    DEFAULT_MAX_BYTES,
    ENTRY_OVERHEAD,
    CacheStore,
    Change,
)
from coordination.primitives.cache_txn import KIND as TXN
from coordination.primitives.cache_txn import TXN_CHECKS, TXN_WRITES, LockTable, Txns
from coordination.primitives.cache_writes import CacheWrites
from coordination.primitives.errors import BAD_COMMAND, EVICTED, UNKNOWN_KEY, reject
from coordination.primitives.sessions import Sessions
from raft_node.core.fsm import CommandRejected

__all__ = ["ENTRY_OVERHEAD", "EVICTED", "UNKNOWN_KEY", "Cache"]


class Cache:
    name = "cache"
    # Rule 1 above. False restores the old, non-linearizable behaviour (a write changes the
    # value at once and only notifies holders); it exists for the tests that show the
    # difference, never set it in production.
    waits_for_holders = True

    def __init__(
        self,
        sessions: Sessions,
        max_bytes: int = DEFAULT_MAX_BYTES,
        record: Record | None = None,
        locks: LockTable | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = CacheStore(max_bytes, record)
        # L1 misses filled from the cluster (every linearizable client's admitted misses), and
        # how many found the value in memory or only an evicted version (the reader goes to
        # Redis). Counted in the log, so identical on every replica; plain ``cache.get`` reads
        # are queries, not entries, and are not counted.
        self.fills = self.fill_hits = self.fill_evicted = 0
        self.l1 = L1Registry()
        self.queue = WriteQueue()
        self.writes = CacheWrites(self.store, self.l1, self.queue, sessions)
        self.writes.register(TXN, Txns(self.store, locks).evaluate)

    @property
    def max_bytes(self) -> int:
        """The memory budget; it must be the same on every replica (eviction is replicated)."""
        return self.store.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.store.max_bytes = value

    def ops(self) -> dict[str, Op]:
        parsers = {**WRITES, **TXN_WRITES}
        ops: dict[str, Op] = {op: self._command(parse) for op, parse in parsers.items()}
        ops["cache.fill"] = self.fill
        ops["cache.release"] = self.release
        ops["cache.renew"] = self.renew
        return ops

    def checks(self) -> dict[str, Check]:
        return {**CHECKS, **TXN_CHECKS}

    def queries(self) -> dict[str, Query]:
        return {
            "cache.get": self.get,
            "cache.get_many": self.get_many,
            "cache.keys": self.keys,
            "cache.stats": self.stats,
        }

    # -- entry bookkeeping ----------------------------------------------------------------------

    def observe_time(self, now_ms: int) -> None:
        """Called before every applied entry: queries use the latest entry's log time."""
        self.store.observe(now_ms)

    def _begin(self, ctx: Ctx) -> None:
        """First thing in every op, tick and session end (even one it rejects: log time moved
        all the same)."""
        self.store.observe(ctx.now_ms)

    def _finish(self, ctx: Ctx) -> None:
        """Last thing in every entry that was not rejected: drop registrations whose lease ran
        out, let queued writes that nothing holds back any more take effect, then evict."""
        self.l1.expire(ctx.now_ms)
        self._settle(ctx)
        self._evict(ctx)

    def _expire(self, ctx: Ctx, key: str) -> None:
        """Remove an expired key (not a client write: holders are told, nobody waits)."""
        self.store.expire(key, ctx.index)
        self.l1.notify(key, ctx.index, ctx.now_ms)

    def _evict(self, ctx: Ctx) -> None:
        for key in self.store.evict(ctx.index, self.queue.by_key, self.l1.held):
            self.l1.notify(key, ctx.index, ctx.now_ms)  # expired rather than evicted

    # -- writes: decide, queue, take effect -----------------------------------------------------

    def _command(self, parse: Callable[[list[Any], Sessions], Write]) -> Op:
        """The op handler of a write command: validate (rejections change nothing), then
        write."""

        def handler(ctx: Ctx, args: list[Any]) -> Any:
            self._begin(ctx)
            kind, write_args, keys = parse(args, self.sessions)
            return self._write(ctx, kind, write_args, keys)

        return handler

    def _write(self, ctx: Ctx, kind: str, args: list[Any], keys: list[str] | None) -> Any:
        """Apply a validated write on ``keys`` (None: every key): at once, or queued."""
        if keys != [] and self.queue.blocks(keys):
            self.queue.check_room(keys)
            result: Any = self._enqueue(ctx, kind, args, keys, keys)
        elif self._unheld(keys):
            # No L1 holds a key this write may change, so nothing can make it wait: apply it
            # once, with no dry run. (The evaluators refuse before they change anything, and
            # one that changes nothing answers as its dry run would.)
            result, _ = self.writes.evaluate(kind, ctx, ctx.index, args, True)
        else:
            result, changes = self.writes.evaluate(kind, ctx, ctx.index, args, False)
            if kind == TXN:
                # A txn's branch is chosen when it takes effect, and a queued one may take the
                # other: it waits out the holders of every key either branch writes. It always
                # commits (its lock releases are changes no key list shows).
                changes = keys
            if keys is None:
                held = bool(changes) and self.l1.any_live(ctx.now_ms)
            else:
                held = any(self.l1.live(key, ctx.now_ms) for key in changes)
            if held and self.waits_for_holders:
                self.queue.check_room(keys)
                result = self._enqueue(ctx, kind, args, keys, None if keys is None else changes)
            elif changes or keys is None or kind == TXN:
                # Same answer as the dry run, except set_hold, which registers on commit.
                result, _ = self.writes.evaluate(kind, ctx, ctx.index, args, True)
                if held:  # the old behaviour (waits_for_holders False): just tell them
                    self._notify(ctx, ctx.index, changes if keys is not None else None)
        self._finish(ctx)
        return result

    def _unheld(self, keys: list[str] | None) -> bool:
        """Whether no L1 registration (live or not yet dropped) covers ``keys`` (None: every
        key). A write's changes are always among its ``keys``."""
        l1 = self.l1
        if not l1.count():
            return True
        return keys is not None and not any(l1.held(key) for key in keys)

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
            result, _ = self.writes.evaluate(kind, ctx, token, args, True)
        except CommandRejected as exc:  # evaluated only now: the state may have changed
            ctx.fail(token, exc.code, exc.message, exc.details)
        else:
            ctx.complete(token, result)

    def _idle(self, ctx: Ctx, key: str) -> None:
        """No write waits on ``key`` any more: resume its TTL (remove it if it expired)."""
        if self.store.resume_expiry(key):
            self._expire(ctx, key)

    # -- L1 fills and releases ------------------------------------------------------------------

    def fill(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        self._begin(ctx)
        sid, key, lease_ms = limits.args(args, 3, "cache.fill")
        sid = self.sessions.require(sid)
        key = limits.name(key, "key")
        lease_ms = lease(lease_ms)
        current = self.store.read(key) or {"value": None, "version": None, "expires_ms": None}
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
        keys, regs = release_items(items)
        dropped = self.l1.release(sid, keys, regs)
        self._finish(ctx)
        return dropped

    def renew(self, ctx: Ctx, args: list[Any]) -> list[list[Any]]:
        """Extend the leases of L1 registrations their holder still serves from (a client
        renews the keys it keeps reading, in one entry, before their leases run out, instead
        of re-filling each). A registration that expired, was replaced, or was told of a
        waiting write is left alone; the answer names the keys extended and their new lease."""
        self._begin(ctx)
        sid, items, lease_ms = limits.args(args, 3, "cache.renew")
        sid = self.sessions.require(sid)
        keys, regs = release_items(items)
        lease_ms = lease(lease_ms)
        renewed: list[list[Any]] = []
        if None in regs:
            reject(BAD_COMMAND, "cache.renew takes [key, registration] pairs")
        for key, reg in zip(keys, regs, strict=True):
            if self.queue.busy(key):
                continue
            until = ctx.now_ms + lease_ms
            current = self.store.read(key)
            if current is not None and current["expires_ms"] is not None:
                until = min(until, current["expires_ms"])  # never outlives the key
            if until > ctx.now_ms and self.l1.renew(sid, key, reg, until, ctx.now_ms):
                renewed.append([key, until - ctx.now_ms])
        self._finish(ctx)
        return renewed

    # -- time and sessions ----------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        deadlines = [self.store.next_expiry(self.queue.by_key), self.l1.next_deadline()]
        due = [d for d in deadlines if d is not None]
        return min(due) if due else None

    def tick(self, ctx: Ctx) -> None:
        self._begin(ctx)
        self.l1.expire(ctx.now_ms)  # leases first: an L1 copy never outlives its key's expiry
        self._settle(ctx)
        for key in self.store.due(ctx.now_ms, self.queue.by_key):
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

    # -- the Redis mirror's feed (``cache_store`` describes it) ---------------------------------

    def latest_change(self) -> int:
        return self.store.latest_change()

    def changes_since(self, seq: int) -> list[Change] | None:
        return self.store.changes_since(seq)

    def current_values(self) -> list[Change]:
        return self.store.current_values()

    # -- queries --------------------------------------------------------------------------------

    def get(self, args: list[Any]) -> dict[str, Any] | None:
        (key,) = limits.args(args, 1, "cache.get")
        return self.store.read(limits.name(key, "key"))

    def get_many(self, args: list[Any]) -> list[dict[str, Any] | None]:
        (keys,) = limits.args(args, 1, "cache.get_many")
        return [self.store.read(key) for key in key_list(keys)]

    def keys(self, args: list[Any]) -> list[dict[str, Any]]:
        prefix, limit = limits.prefix_and_limit(args, "cache.keys")
        return self.store.keys(prefix, limit)

    def stats(self, args: list[Any]) -> dict[str, Any]:
        limits.args(args, 0, "cache.stats")
        store = self.store
        return {
            "keys": len(store.data),
            "bytes": store.bytes,
            "max_bytes": store.max_bytes,
            "evicted": len(store.evicted),
            "evictions_total": store.evictions,
            "expirations_total": store.expirations,
            "fills_total": self.fills,
            "fill_hits_total": self.fill_hits,
            "fill_evicted_total": self.fill_evicted,
            "l1_holders": self.l1.count(),
            "pending_writes": len(self.queue),
            "tombstones": len(store.tombstones),
            "latest_change": store.seq,
        }

    # -- snapshots (the format is a compatibility contract: tests/primitives/data/) -------------

    def to_state(self) -> Any:
        store = self.store
        return {
            **store.to_state(),  # data, evicted, tombstones, counters
            "totals": [
                store.evictions,
                store.expirations,
                self.fills,
                self.fill_hits,
                self.fill_evicted,
            ],
            "l1": self.l1.to_state(),
            "queue": self.queue.to_state(),
        }

    def from_state(self, state: Any) -> None:
        store = self.store
        store.from_state(state)
        totals = [*state["totals"], 0, 0, 0]  # snapshots before fill counters had two
        store.evictions, store.expirations, self.fills, self.fill_hits, self.fill_evicted = totals[
            :5
        ]
        self.l1.from_state(state["l1"])
        self.queue.from_state(state["queue"])
