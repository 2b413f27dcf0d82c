"""The cache client: a per-process L1 in front of the replicated cache (and its Redis mirror).

Reads go L1 -> cluster -> Redis. Two modes:

- ``linearizable`` (default, Chubby's scheme): an L1 miss is filled with ``cache.fill``, a
  write to the log that registers this session as a holder of the key for a lease. The cluster
  holds back any write to the key until every holder has dropped it (or its lease ran out), and
  pushes an invalidation to each holder through a WATCH stream; this client drops the key and
  acknowledges with ``cache.release``. So no reader anywhere sees an old value once a write has
  returned. The local lease is shorter than the cluster's by a safety margin, so clock drift
  cannot make this process serve a value the cluster already considers unheld. After a stream
  reconnection (events may have been missed) the whole L1 is dropped.
- ``bounded``: L1 entries are plain cluster reads kept for ``staleness`` seconds, with no
  registration and no invalidation: faster writes, reads at most ``staleness`` old.

``l1_size=0`` means no L1: every read goes to the cluster (a plain read, no registration), every
write is a plain write, and no invalidation stream or session is opened.

A value the cluster evicted from memory is read from Redis (``redis_url``) and used only if
Redis holds exactly the version the cluster reports.

The L1 evicts the least requested of its least recently used entries and admits with TinyLFU
(``admission``): a missed key takes a slot only if it has been asked for more often (recently)
than the entry it would evict, so one-off reads do not flush popular keys. A key that would not
be admitted is read from the cluster without registering (no fill, no lease). Evicting a
registered entry releases it from one worker thread (``releaser``); the Redis read-back of
evicted keys is ``redis_fallback``.

A key this process still wants does not expire from its L1 every lease: a background thread
(``renewer``) extends, in one ``cache.renew`` entry per batch, the registered copies in the last
half of their local lease whose key the admission counts still call popular (requested within
the last two aging periods). The cluster extends only registrations that are live and not told
of a waiting write, so the value kept is still the current one; the new local deadline counts
from when the renewal was sent. Without it, every popular key cost a miss and a fill per lease.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from coordination.client import operations as ops
from coordination.client.admission import EVICTION_SAMPLE, FrequencySketch
from coordination.client.redis_fallback import RedisFallback
from coordination.client.releaser import ReleaseWorker
from coordination.client.renewer import LeaseRenewer
from coordination.primitives import commands as c
from raft_node.client import Watcher

if TYPE_CHECKING:
    from coordination.client.coordinator import Coordinator, Session

LINEARIZABLE, BOUNDED = "linearizable", "bounded"
LEASE_SAFETY = 0.8  # use 80% of the granted lease locally
RENEW_BELOW = 0.5  # renew a copy once less than this share of its local lease is left

# Every open cache client of this process, for ``process_stats`` (weak: never keeps one alive).
_open_caches: weakref.WeakSet[Cache] = weakref.WeakSet()
_open_lock = threading.Lock()


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, round(seconds * 1000))


class Cache:
    def __init__(
        self,
        coord: Coordinator,
        *,
        l1_size: int = 1000,
        lease: float = 5.0,
        mode: str = LINEARIZABLE,
        staleness: float = 1.0,
        redis_url: str | None = None,
        session: Session | None = None,
    ) -> None:
        if mode not in (LINEARIZABLE, BOUNDED):
            raise ValueError(f"mode must be {LINEARIZABLE!r} or {BOUNDED!r}")
        if isinstance(l1_size, bool) or not isinstance(l1_size, int) or l1_size < 0:
            raise ValueError(f"l1_size must be an integer >= 0 (0: no L1), got {l1_size!r}")
        self.coord = coord
        self.mode = mode
        self.l1_size = l1_size
        self.lease = lease
        self.staleness = staleness
        self.hits = self.misses = self.redis_hits = 0
        # key -> (value, version, local deadline, registration id or None)
        self._l1: OrderedDict[str, tuple[Any, int, float, int | None]] = OrderedDict()
        self._admission = FrequencySketch(l1_size)
        self._lock = threading.Lock()
        self._redis = RedisFallback(redis_url) if redis_url else None
        self.session = session
        self._watcher: Watcher | None = None
        # Registrations (and so the invalidation stream) only exist to keep L1 copies coherent.
        registers = mode == LINEARIZABLE and l1_size > 0
        self._releaser = coord.new_client() if registers else None
        # Releases of evicted registrations, sent off the reader's thread.
        self._evictions = ReleaseWorker(self._release) if registers else None
        # Lease renewals of the copies still wanted, batched on their own thread.
        self._renew_below = lease * LEASE_SAFETY * RENEW_BELOW
        self._renewer = (
            LeaseRenewer(self._due_renewals, self._renew, self._renew_below / 2)
            if registers
            else None
        )
        self.renewed = 0
        if registers:
            self.session = session or coord.default_session
            self._watcher = Watcher(
                coord.addresses,
                coord.secret,
                f"session:{self.session.id}",
                self._on_event,
                self._on_resync,
                ssl=coord.ssl,
            )
            self._watcher.start()
            self._watcher.subscribed.wait(5.0)
        with _open_lock:
            _open_caches.add(self)

    # -- L1 coherence ---------------------------------------------------------------------------

    def _on_event(self, index: int, payload: Any) -> None:
        if not payload or payload[0] != "invalidate":
            return
        key = payload[1]
        with self._lock:
            entry = self._l1.pop(key, None)
        if entry is not None and entry[3] is not None:
            self._release([(key, entry[3])])

    def _on_resync(self) -> None:
        with self._lock:
            held = [(k, e[3]) for k, e in self._l1.items() if e[3] is not None]
            self._l1.clear()
        if held:
            self._release(held)

    def _release(self, keys: list[tuple[str, int]]) -> None:
        """Tell the cluster we dropped ``keys`` so waiting writes can complete now."""
        if self._releaser is None or self.session is None:
            return
        # On failure the lease runs out anyway; a write then waits until it does.
        with contextlib.suppress(Exception):
            self._releaser.propose(c.cache_release(self.session.id, keys))

    def _remember(
        self, key: str, value: Any, version: int, seconds: float, reg: int | None = None
    ) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self._l1[key] = (value, version, time.monotonic() + seconds, reg)
            self._l1.move_to_end(key)
            evicted: list[tuple[str, int]] = []
            while len(self._l1) > self.l1_size:
                # Not the entry just remembered (the most recent), unless it is alone: it was
                # admitted against the others.
                old = self._victim(islice(self._l1, max(len(self._l1) - 1, 1)))
                entry = self._l1.pop(old)
                if entry[3] is not None:
                    evicted.append((old, entry[3]))
        if evicted and self._evictions is not None:
            self._evictions.submit(evicted)
        if reg is not None and self._renewer is not None:
            self._renewer.start()

    def _local(self, key: str) -> tuple[Any, int] | None:
        """``(value, version)`` from the L1, or None (absent or past its local lease)."""
        with self._lock:
            entry = self._l1.get(key)
            if entry is None:
                return None
            if entry[2] <= time.monotonic():
                del self._l1[key]
                return None
            self._l1.move_to_end(key)
            return entry[0], entry[1]

    def _due_renewals(self) -> list[tuple[str, int]]:
        """Registered copies in the last half of their local lease whose key is still
        popular by the admission counts (a key nobody asked for lately is let go)."""
        soon = time.monotonic() + self._renew_below
        frequency = self._admission.frequency
        with self._lock:
            return [
                (key, entry[3])
                for key, entry in self._l1.items()
                if entry[3] is not None and entry[2] < soon and frequency(key) > 0
            ]

    def _renew(self, pairs: list[tuple[str, int]]) -> None:
        """Extend ``pairs``' leases in one entry; keep the local copies that are still the
        ones renewed (an invalidation or a re-fill since leaves them alone). Never raises: a
        renewal that fails lets the lease run out, which costs one miss."""
        if self._releaser is None or self.session is None:
            return
        started = time.monotonic()
        try:
            renewed = self._releaser.propose(
                c.cache_renew(self.session.id, pairs, _ms(self.lease) or 1)
            )
        except Exception:
            return
        wanted = dict(pairs)
        with self._lock:
            for key, granted_ms in renewed:
                entry = self._l1.get(key)
                if entry is None or entry[3] != wanted.get(key):
                    continue
                deadline = started + granted_ms / 1000 * LEASE_SAFETY
                if deadline > entry[2]:
                    self._l1[key] = (entry[0], entry[1], deadline, entry[3])
                    self.renewed += 1

    def _forget(self, key: str) -> None:
        """Before we write ``key``: drop our own copy and registration, so the write does not
        wait on ourselves."""
        with self._lock:
            held = self._l1.pop(key, None)
        if held is not None and held[3] is not None:
            self._release([(key, held[3])])

    # -- reads ----------------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        if self.l1_size <= 0:
            return  # no L1: nothing to admit
        self._admission.record(key)

    def _admissible(self, key: str) -> bool:
        """Whether ``key`` may take an L1 slot (TinyLFU: more popular than the victim).
        Never without an L1 (``l1_size`` 0): there is no slot, and no victim to compare."""
        if self.l1_size <= 0:
            return False
        with self._lock:
            if len(self._l1) < self.l1_size:
                return True
            victim = self._victim(iter(self._l1))
            if self._l1[victim][2] <= time.monotonic():
                return True  # its copy ran out: the slot is as good as free
        return self._admission.admits(key, victim)

    def _victim(self, lru_order: Iterator[str]) -> str:
        """(Under the lock.) The entry to evict, from keys in least recently used order: among
        the first ``EVICTION_SAMPLE``, one whose local lease ran out (worth nothing: reading it
        is a miss), else the least requested (``admission``)."""
        sample = list(islice(lru_order, EVICTION_SAMPLE))
        now = time.monotonic()
        for key in sample:
            if self._l1[key][2] <= now:
                return key
        return self._admission.victim(sample)

    def get(self, key: str, default: Any = None) -> Any:
        found = self._read(key, strict=False)
        return default if found is None else found[0]

    def get_versioned(self, key: str) -> tuple[Any, int] | None:
        """``(value, version)``, or None if ``key`` is absent: ``get`` with the version that
        ``cas`` compares, so a read-modify-write needs no raw commands::

            found = cache.get_versioned("hits")
            value, version = found or (b"0", None)   # None: cas creates it only if absent
            if cache.cas("hits", version, str(int(value) + 1).encode()) is False:
                ...  # another write came first: read again and retry

        Served like ``get`` (from the L1 when it holds the key: the L1 keeps the version it
        was filled with). A value the cluster evicted is read from Redis at exactly that
        version; without Redis (or if Redis lost it) this raises ``Evicted``, where ``get``
        answers its default: a CAS loop must not take "evicted" for "absent"."""
        return self._read(key, strict=True)

    def _read(self, key: str, strict: bool) -> tuple[Any, int] | None:
        self._count(key)
        local = self._local(key)
        if local is not None:
            self.hits += 1
            return local
        self.misses += 1
        if not self._admissible(key):
            result = self.coord.query(c.cache_get(key))
            value = self._value(key, result)
        elif self.mode == LINEARIZABLE:
            assert self.session is not None
            started = time.monotonic()
            lease_ms = _ms(self.lease)
            result = self.coord.propose(c.cache_fill(self.session.id, key, lease_ms))
            granted = result.get("lease_ms", 0)  # 0: not registered, do not cache
            value = self._value(key, result)
            remaining = started + granted / 1000 * LEASE_SAFETY - time.monotonic()
            if value is not None and granted and remaining > 0:
                self._remember(key, value, result["version"], remaining, result["registration"])
            elif result.get("registration") is not None:
                self._release([(key, result["registration"])])  # held but not cached: let go
        else:
            result = self.coord.query(c.cache_get(key))
            value = self._value(key, result)
            if value is not None:
                self._remember(key, value, result["version"], self.staleness)
        if value is not None:
            return value, result["version"]
        if strict and result and result.get("evicted"):
            raise ops.evicted(key, result["version"])
        return None

    def _value(self, key: str, result: dict[str, Any] | None) -> Any:
        if not result:
            return None
        if result.get("evicted"):
            return self._from_redis(key, result["version"])
        return result.get("value")

    def _from_redis(self, key: str, version: int) -> Any:
        if self._redis is None:
            return None
        value = self._redis.read(key, version)
        if value is not None:
            self.redis_hits += 1
        return value

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out = {}
        missing = []
        for key in keys:
            local = self._local(key)
            if local is not None:
                self.hits += 1
                out[key] = local[0]
            else:
                missing.append(key)
        if missing:
            if self.mode == LINEARIZABLE and self.l1_size > 0:
                for key in missing:  # each fill registers: one log entry per key
                    value = self.get(key)
                    if value is not None:
                        out[key] = value
            else:
                self.misses += len(missing)
                for key, result in zip(
                    missing, self.coord.query(c.cache_get_many(missing)), strict=True
                ):
                    value = self._value(key, result)
                    if value is not None:
                        out[key] = value
        return out

    # -- writes ---------------------------------------------------------------------------------

    def set(self, key: str, value: bytes, ttl: float | None = None) -> int:
        """Write ``key``; in linearizable mode a popular key stays in this process's L1 with
        the value just written (``cache.set_hold``), instead of being dropped."""
        self._forget(key)
        if self.mode != LINEARIZABLE or self.session is None or not self._admissible(key):
            return self.coord.propose(
                c.cache_set(key, value, _ms(ttl)), timeout=self._write_timeout
            )
        started = time.monotonic()
        result = self.coord.propose(
            c.cache_set_hold(self.session.id, key, value, _ms(ttl), _ms(self.lease)),
            timeout=self._write_timeout,
        )
        if result["registration"] is not None:
            remaining = started + result["lease_ms"] / 1000 * LEASE_SAFETY - time.monotonic()
            if remaining > 0:
                self._remember(key, value, result["version"], remaining, result["registration"])
            else:
                self._release([(key, result["registration"])])
        return result["version"]

    def add(self, key: str, value: bytes, ttl: float | None = None) -> int | None:
        self._forget(key)
        return self.coord.propose(c.cache_add(key, value, _ms(ttl)), timeout=self._write_timeout)

    def delete(self, key: str) -> bool:
        self._forget(key)
        return self.coord.propose(c.cache_delete(key), timeout=self._write_timeout)

    def incr(self, key: str, delta: int = 1) -> int:
        self._forget(key)
        return self.coord.propose(c.cache_incr(key, delta), timeout=self._write_timeout)

    def cas(
        self, key: str, expected_version: int | None, value: bytes, ttl: float | None = None
    ) -> int | bool:
        """Write ``key`` if its version is still ``expected_version`` (None: only if absent,
        see ``get_versioned``): the new version, or False if another write came first."""
        self._forget(key)
        return self.coord.propose(
            c.cache_cas(key, expected_version, value, _ms(ttl)), timeout=self._write_timeout
        )

    def touch(self, key: str, ttl: float | None) -> bool:
        self._forget(key)
        return self.coord.propose(c.cache_touch(key, _ms(ttl)), timeout=self._write_timeout)

    def set_many(self, items: dict[str, bytes], ttl: float | None = None) -> list[int]:
        for key in items:
            self._forget(key)
        return self.coord.propose(
            c.cache_set_many(items.items(), _ms(ttl)), timeout=self._write_timeout
        )

    def delete_many(self, keys: list[str]) -> int:
        for key in keys:
            self._forget(key)
        return self.coord.propose(c.cache_delete_many(keys), timeout=self._write_timeout)

    def clear(self) -> int:
        self._on_resync()
        return self.coord.propose(c.cache_clear(), timeout=self._write_timeout)

    @property
    def _write_timeout(self) -> float:
        # A write may wait for other processes' L1 leases to run out.
        return self.coord.timeout + self.lease + 5.0

    # -- introspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        total = self.hits + self.misses
        return {
            "mode": self.mode,
            "l1_keys": len(self._l1),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
            "redis_hits": self.redis_hits,
            "renewed": self.renewed,
        }

    def cluster_stats(self) -> dict[str, Any]:
        return self.coord.query(c.cache_stats())

    def close(self) -> None:
        with _open_lock:
            _open_caches.discard(self)
        if self._watcher is not None:
            self._watcher.stop()
        if self._evictions is not None:
            self._evictions.close(timeout=1.0)  # before the client it sends with
        if self._renewer is not None:
            self._renewer.close(timeout=1.0)  # before the client it sends with
        if self._releaser is not None:
            self._releaser.close()
        if self._redis is not None:
            self._redis.close()


def process_stats() -> dict[str, Any]:
    """L1 counters summed over this process's open cache clients (Django's cache handler makes
    one per thread, so a web process usually has several): what a process's readers were served
    from memory, without a cluster round trip."""
    with _open_lock:
        caches = list(_open_caches)
    hits = sum(cache.hits for cache in caches)
    misses = sum(cache.misses for cache in caches)
    return {
        "clients": len(caches),
        "l1_keys": sum(len(cache._l1) for cache in caches),
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else None,
        "redis_hits": sum(cache.redis_hits for cache in caches),
    }
