"""The cache's key/value store: values, versions, TTLs by log time, the memory budget, and the
change sequence the Redis mirror follows (used by ``coordination.primitives.cache``).

This module knows nothing of L1 holders or queued writes: ``Cache`` decides *whether and when* a
write takes effect, the store only records its effect. Where the store's bookkeeping depends on
them (a key with queued writes is not removed by its TTL, nor forgotten once evicted; a key an L1
holds is not forgotten either), the caller passes them in.

**Keys.** ``data[key] = (value, version, expires_ms, seq)``, kept in ``seq`` order (a change
moves the key to the end). A record is a tuple, replaced whole on every change, never mutated:
CPython stops tracking a tuple of bytes, ints and None at its first garbage collection, so a
million keys add nothing to the work of a full collection (as lists they made each one walk
1.1M objects, 0.4 to 0.8 s, longer than an election timeout; ``bench/gc_state.py``). The
*version* is the index of the entry of the write that produced the value: unique per write, and
increasing per key. An expired key reads as absent at once (reads
use ``now_ms``, the log time of the last applied entry) and is removed by the next tick that
reaches its deadline, which reclaims its memory. A key with queued writes is only marked expired
(it reads absent); it is removed when its queue drains (``resume_expiry``), unless a queued write
re-created it, so that per-key versions, deletes included, keep increasing.

**Memory budget.** ``bytes`` = sum of ``len(key) + len(value) + ENTRY_OVERHEAD``. When a write
takes the total over ``max_bytes`` the least recently changed keys are evicted from the front of
``data``. The Redis mirror still has them: an evicted key is remembered as ``evicted[key] =
version`` (bounded; forgetting one is recorded as a delete; keys that are held or have queued
writes are not forgotten, so the bound may be exceeded by that many) and reads of it answer
``{"evicted": True, "version": v}`` so the reader fetches Redis and checks the version.
``max_bytes`` must be the same on every replica.

**Redis mirror.** Effects of different keys do not happen in version order (writes wait for L1
holders), so changes are numbered by a replicated *change sequence* ``seq`` (one per write,
delete, expiry, forgotten eviction or clear that takes effect). ``data`` and ``tombstones`` (a
bounded record of deletes) are kept in ``seq`` order. The node asks ``changes_since(seq)``: the
current value (or delete) of every key changed after ``seq``, oldest change first, as ``(key,
value | None, version, expires_ms)``, or ``None`` when deletes it would need were already
forgotten (or a ``clear`` happened after ``seq``): then it resyncs from ``current_values()``.
``latest_change()`` is the watermark to store once everything up to it is pushed. Redis itself
guards each key by the per-key *version*. Evicting a key before the mirror copied it makes it a
miss, never a stale read, because readers check the version.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Container
from typing import Any

from coordination.primitives.base import Deadlines, Record, ignore_change

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
ENTRY_OVERHEAD = 64  # bytes accounted per key on top of key and value
EVICTED_MAX = 100_000  # evicted keys remembered (oldest forgotten, recorded as a delete)
TOMBSTONES_MAX = 100_000  # deletes remembered for changes_since

Change = tuple[str, bytes | None, int, int | None]  # (key, value or None, version, expires_ms)


def entry_size(key: str, value: bytes) -> int:
    """What a key costs against ``max_bytes``."""
    return len(key) + len(value) + ENTRY_OVERHEAD


class CacheStore:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, record: Record | None = None) -> None:
        self.max_bytes = max_bytes
        self.record = record or ignore_change  # every change, for ``coord.watch``
        self.data: dict[str, tuple[Any, ...]] = {}  # key -> (value, version, expires, seq); by seq
        self.evicted: dict[str, int] = {}  # key -> version; eviction order
        self.evicted_expires: dict[str, int] = {}  # key -> expires_ms, evicted keys with a TTL
        self.tombstones: dict[str, list[int]] = {}  # key -> [delete version, seq]; by seq
        self.floor = 0  # changes_since(s) needs s >= floor (older deletes forgotten, or clear)
        self.seq = 0  # change sequence: number of the last change that took effect
        self.bytes = 0
        self.now_ms = 0
        self.evictions = 0  # totals, for stats
        self.expirations = 0
        self._ttl = Deadlines()
        self._pushes = 0

    # -- reading --------------------------------------------------------------------------------

    def observe(self, now_ms: int) -> None:
        """Log time moved (it never goes back): reads answer as of the latest entry."""
        self.now_ms = max(self.now_ms, now_ms)

    def alive(self, expires: int | None) -> bool:
        return expires is None or self.now_ms < expires

    def version(self, key: str) -> int | None:
        """Version of the key's current value (in memory or evicted), None if absent."""
        rec = self.data.get(key)
        if rec is not None:
            return rec[1] if self.alive(rec[2]) else None
        version = self.evicted.get(key)
        if version is not None and self.alive(self.evicted_expires.get(key)):
            return version
        return None

    def read(self, key: str) -> dict[str, Any] | None:
        """The ``cache.get`` answer for ``key``."""
        rec = self.data.get(key)
        if rec is not None:
            if not self.alive(rec[2]):
                return None
            return {"value": rec[0], "version": rec[1], "expires_ms": rec[2]}
        if self.version(key) is None:
            return None
        return {"evicted": True, "version": self.evicted[key], "expires_ms": self.expiry(key)}

    def expiry(self, key: str) -> int | None:
        rec = self.data.get(key)
        return rec[2] if rec is not None else self.evicted_expires.get(key)

    def live_keys(self) -> list[str]:
        """Every key that reads as present (in memory or evicted), in store order."""
        return [key for key in [*self.data, *self.evicted] if self.version(key) is not None]

    def keys(self, prefix: str, limit: int) -> list[dict[str, Any]]:
        """The ``cache.keys`` answer: live keys in memory starting with ``prefix``, by key."""
        found = (
            key for key, rec in self.data.items() if key.startswith(prefix) and self.alive(rec[2])
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

    # -- changing (every change goes through put, remove or clear) ------------------------------

    def put(self, key: str, value: bytes, expires: int | None, version: int) -> None:
        old = self.data.pop(key, None)
        if old is not None:
            self.bytes -= entry_size(key, old[0])
        elif self.evicted.pop(key, None) is not None:
            self.evicted_expires.pop(key, None)
        self.tombstones.pop(key, None)
        self.seq += 1
        self.data[key] = (value, version, expires, self.seq)
        self.bytes += entry_size(key, value)
        if expires is not None:
            self._push(expires, key)
        self.record("cache", "put", key, value, {"key_version": version, "expires_ms": expires})

    def remove(self, key: str, version: int, cause: str = "delete") -> None:
        """Delete ``key`` (in memory or evicted) at ``version``; ``cause`` names the change
        for watchers (``delete`` or ``expire``)."""
        old = self.data.pop(key, None)
        if old is not None:
            self.bytes -= entry_size(key, old[0])
        else:
            del self.evicted[key]
            self.evicted_expires.pop(key, None)
        self.seq += 1
        self.tombstones.pop(key, None)
        self.tombstones[key] = [version, self.seq]
        while len(self.tombstones) > TOMBSTONES_MAX:
            oldest = next(iter(self.tombstones))
            self.floor = max(self.floor, self.tombstones.pop(oldest)[1])
        self.record("cache", cause, key, None, {"key_version": version})

    def clear(self) -> None:
        """Forget every key at once: one change, after which the mirror resyncs fully."""
        self.data, self.evicted, self.evicted_expires, self.tombstones = {}, {}, {}, {}
        self.bytes = 0
        self.seq += 1
        self.floor = self.seq
        self._rebuild_ttl()
        self.record("cache", "clear", "", None, None)

    def expire(self, key: str, version: int) -> None:
        """Remove a key whose TTL ran out (counted as an expiry, not a delete)."""
        self.remove(key, version, "expire")
        self.expirations += 1

    def evict(self, version: int, queued: Container[str], held: Callable[[str], bool]) -> list[str]:
        """Bring ``bytes`` back under ``max_bytes`` and the evicted record under its bound.
        Keys found expired at the front are expired rather than evicted (unless writes are
        queued on them); they are returned, for the caller to tell their L1 holders."""
        expired: list[str] = []
        while self.bytes > self.max_bytes and self.data:
            key = next(iter(self.data))
            value, key_version, expires, _ = self.data[key]
            if not self.alive(expires) and key not in queued:
                self.expire(key, version)  # due anyway: an expiry, not an eviction
                expired.append(key)
                continue
            del self.data[key]
            self.bytes -= entry_size(key, value)
            self.evicted[key] = key_version
            if expires is not None:
                self.evicted_expires[key] = expires
            self.evictions += 1
        while len(self.evicted) > EVICTED_MAX:
            # Forget the oldest, except keys an L1 holds or writes wait on (bounded by those).
            victim = next((k for k in self.evicted if k not in queued and not held(k)), None)
            if victim is None:
                break
            self.remove(victim, version)
        return expired

    # -- TTLs (a key with queued writes keeps its deadline but is not acted on) -----------------

    def next_expiry(self, queued: Container[str]) -> int | None:
        return self._ttl.next(self._ttl_current(queued))

    def due(self, now_ms: int, queued: Container[str]) -> list[str]:
        """Keys whose TTL ran out by ``now_ms`` and that no queued write holds back."""
        return [
            key
            for key in self._ttl.due(now_ms, self._ttl_current(queued))
            if (key in self.data or key in self.evicted) and not self.alive(self.expiry(key))
        ]

    def resume_expiry(self, key: str) -> bool:
        """No write waits on ``key`` any more: re-arm its TTL. True if it is already due (the
        caller expires it)."""
        if key not in self.data and key not in self.evicted:
            return False
        expires = self.expiry(key)
        if expires is None:
            return False
        if expires <= self.now_ms:
            return True
        self._push(expires, key)
        return False

    def _ttl_current(self, queued: Container[str]) -> Callable[[str], int | None]:
        """The deadline the TTL heap should act on: none while writes are queued on the key
        (it is removed, if still expired, when they are done: see ``resume_expiry``)."""
        return lambda key: None if key in queued else self.expiry(key)

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

    # -- the Redis mirror's feed (called between applies) ---------------------------------------

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

    # -- snapshots (the cache writes these fields first, in this order) -------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "data": [(key, *rec) for key, rec in self.data.items()],  # msgpack arrays, as lists
            "evicted": [[k, v, self.evicted_expires.get(k)] for k, v in self.evicted.items()],
            "tombstones": [[key, *rec] for key, rec in self.tombstones.items()],
            "counters": [self.floor, self.seq, self.bytes, self.now_ms],
        }

    def from_state(self, state: Any) -> None:
        self.data = {row[0]: tuple(row[1:]) for row in state["data"]}
        self.evicted = {key: version for key, version, _ in state["evicted"]}
        self.evicted_expires = {key: exp for key, _, exp in state["evicted"] if exp is not None}
        self.tombstones = {row[0]: list(row[1:]) for row in state["tombstones"]}
        self.floor, self.seq, self.bytes, self.now_ms = state["counters"]
        self._rebuild_ttl()
