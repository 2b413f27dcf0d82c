"""The cache client's L1 against real node processes: hits, invalidation, modes, Redis read-back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from coordination.client import Coordinator
from coordination.client.cache import BOUNDED, Cache
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(coordination_cluster: LocalCluster) -> LocalCluster:
    return coordination_cluster


def _cache(c: LocalCluster, **kw) -> tuple[Coordinator, Cache]:
    coord = Coordinator(list(c.addresses.values()), c.secret)
    return coord, Cache(coord, **kw)


def test_l1_hits_and_cross_process_invalidation(cluster):
    coord_a, a = _cache(cluster, lease=5.0)
    coord_b, b = _cache(cluster, lease=5.0)
    try:
        b.set("shared", b"v1")
        assert a.get("shared") == b"v1"  # miss: filled and registered
        for _ in range(20):
            assert a.get("shared") == b"v1"  # L1 hits, no round trip
        assert a.stats()["hits"] == 20
        started = time.monotonic()
        b.set("shared", b"v2")  # completes only after a dropped its copy
        assert time.monotonic() - started < 3.0  # the invalidation round trip, not the lease
        assert a.get("shared") == b"v2"  # never the old value once the write returned
        assert b.get("shared") == b"v2"
    finally:
        a.close()
        b.close()
        coord_a.close()
        coord_b.close()


def test_no_reader_sees_an_old_value_after_a_write_returned(cluster):
    """A writer bumps a counter; readers loop on their L1. Once a write of n returned, no read
    that starts afterwards may return less than n."""
    coord_w, writer = _cache(cluster)
    readers = [_cache(cluster, lease=2.0) for _ in range(2)]
    writer.set("seq", b"0")
    acked = [0]
    violations: list[str] = []
    stop = threading.Event()

    def read_loop(cache: Cache) -> None:
        while not stop.is_set():
            floor = acked[0]
            value = int(cache.get("seq") or b"0")
            if value < floor:
                violations.append(f"read {value} after write {floor} returned")

    threads = [threading.Thread(target=read_loop, args=(r,), daemon=True) for _, r in readers]
    for t in threads:
        t.start()
    try:
        for n in range(1, 30):
            writer.set("seq", str(n).encode())
            acked[0] = n
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for coord, cache in [(coord_w, writer), *readers]:
            cache.close()
            coord.close()
    assert not violations, violations[:5]
    assert sum(r.stats()["hits"] for _, r in readers) > 0


def test_a_key_kept_in_use_is_renewed_instead_of_refilled_and_still_invalidated(cluster):
    """Read for three leases, a key stays in the L1: hits late in its lease renew it in the
    background (one ``cache.renew`` per batch), so it is never missed again after its fill. A
    renewed copy is still invalidated: once a write returned, the old value is gone."""
    coord, cache = _cache(cluster, lease=0.5)
    coord_w, writer = _cache(cluster, mode=BOUNDED)
    try:
        writer.set("rn:k", b"1")
        assert cache.get("rn:k") == b"1"  # the one miss: filled and registered
        deadline = time.monotonic() + 1.5  # three leases of 0.5 s
        while time.monotonic() < deadline:
            assert cache.get("rn:k") == b"1"
            time.sleep(0.01)
        stats = cache.stats()
        assert stats["misses"] == 1, stats
        assert stats["renewed"] >= 3, stats
        writer.set("rn:k", b"2")
        assert cache.get("rn:k") == b"2"
    finally:
        for closing in (cache, writer, coord, coord_w):
            closing.close()


def test_the_l1_evicts_the_least_requested_of_its_oldest_entries_and_expired_ones_first(cluster):
    """Not the least recently used alone: ``ev2:b``, the oldest, was asked for most, so a new
    key takes the slot of ``ev2:c``, the least requested. A copy whose local lease ran out goes
    first, however popular it was."""
    coord, cache = _cache(cluster, l1_size=3, mode=BOUNDED, staleness=30.0)
    coord_w, writer = _cache(cluster, mode=BOUNDED)
    try:
        for key in ("ev2:a", "ev2:b", "ev2:c", "ev2:d", "ev2:e"):
            writer.set(key, b"1")
        for key, reads in (("ev2:a", 1), ("ev2:b", 1), ("ev2:c", 1), ("ev2:b", 5), ("ev2:a", 4)):
            for _ in range(reads):
                assert cache.get(key) == b"1"
        assert cache.get("ev2:c") == b"1"  # LRU order now b (6 requests), a (5), c (2)
        assert list(cache._l1) == ["ev2:b", "ev2:a", "ev2:c"]
        for _ in range(2):
            cache.get("ev2:d")  # 1, then 2 requests: not more than c's 2
        assert "ev2:d" not in cache._l1
        cache.get("ev2:d")  # 3 > 2: admitted in c's slot, not in b's
        assert list(cache._l1) == ["ev2:b", "ev2:a", "ev2:d"]
        with cache._lock:  # b's copy runs out (as its local lease would)
            value, version, _, reg = cache._l1["ev2:b"]
            cache._l1["ev2:b"] = (value, version, time.monotonic() - 1, reg)
        cache.get("ev2:e")  # a first request: admitted against the expired copy, which goes
        assert list(cache._l1) == ["ev2:a", "ev2:d", "ev2:e"]
    finally:
        for closing in (cache, writer, coord, coord_w):
            closing.close()


def test_an_evicted_registration_is_released_so_writes_do_not_wait_for_its_lease(cluster):
    coord, cache = _cache(cluster, l1_size=2, lease=30.0)
    coord_w, writer = _cache(cluster, mode=BOUNDED)
    try:
        for key in ("ev:a", "ev:b", "ev:c"):
            writer.set(key, b"1")
        assert cache.get("ev:a") == b"1" and cache.get("ev:b") == b"1"  # filled: registered
        assert cache.get("ev:c") == b"1"  # no more popular than ev:a yet: a plain read
        assert cache.get("ev:c") == b"1"  # now it is: admitted, ev:a evicted and released
        assert list(cache._l1) == ["ev:b", "ev:c"]
        started = time.monotonic()
        writer.set("ev:a", b"2")  # waits for ev:a's holder: its release, not its 30 s lease
        assert time.monotonic() - started < 10.0
        assert cache.get("ev:a") == b"2"
    finally:
        for closing in (cache, writer, coord, coord_w):
            closing.close()


def test_bounded_mode_reads_without_registration(cluster):
    coord, cache = _cache(cluster, mode=BOUNDED, staleness=0.5)
    try:
        cache.set("b", b"1")
        assert cache.get("b") == b"1" and cache.get("b") == b"1"
        assert cache.stats()["hits"] == 1
        assert cache.cluster_stats()["l1_holders"] == 0
    finally:
        cache.close()
        coord.close()


def test_cache_operations_and_typed_errors(cluster):
    from coordination.exceptions import NotInteger, UnknownKey

    coord, cache = _cache(cluster)
    try:
        version = cache.set("ops", b"10", ttl=30)
        assert cache.add("ops", b"x") is None
        assert cache.incr("ops", 5) == 15
        assert cache.cas("ops", version, b"stale") is False
        assert cache.get_many(["ops", "missing"]) == {"ops": b"15"}
        assert cache.delete("ops") is True and cache.get("ops") is None
        with pytest.raises(UnknownKey):
            cache.incr("missing")
        cache.set("text", b"abc")
        with pytest.raises(NotInteger):
            cache.incr("text")
        assert cache.set_many({"m1": b"1", "m2": b"2"})
        assert cache.delete_many(["m1", "m2", "m3"]) == 2
    finally:
        cache.close()
        coord.close()


@pytest.mark.parametrize("l1_size", [1000, 0])
def test_concurrent_cas_increments_with_get_versioned_lose_nothing(cluster, l1_size):
    """Two processes' caches (with their linearizable L1s, or none) increment one counter by
    read-version-then-cas, retrying on conflict: every increment lands once."""
    key = f"cas-counter-{l1_size}"
    caches = [_cache(cluster, l1_size=l1_size, lease=2.0) for _ in range(2)]
    caches[0][1].set(key, b"0")
    conflicts = [0, 0]

    def bump(i: int) -> None:
        cache = caches[i][1]
        for _ in range(15):
            while True:
                value, version = cache.get_versioned(key)
                if cache.cas(key, version, str(int(value) + 1).encode()) is not False:
                    break
                conflicts[i] += 1

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads)
        value, version = caches[1][1].get_versioned(key)
        assert value == b"30", conflicts
        assert caches[0][1].get_versioned(key) == (b"30", version)
    finally:
        for coord, cache in caches:
            cache.close()
            coord.close()


@pytest.mark.parametrize("mode", ["linearizable", BOUNDED])
def test_an_l1_size_of_zero_means_no_l1(cluster, mode):
    """0 turns the L1 off (every read from the cluster, nothing held or registered); it
    used to make every read raise StopIteration (no LRU victim to compare with)."""
    coord, cache = _cache(cluster, l1_size=0, mode=mode)
    _, other = _cache(cluster)
    key = f"nol1-{mode}"
    try:
        assert cache.session is None  # no registrations, so no session or stream to keep
        assert cache.get(key) is None
        cache.set(key, b"v1")
        assert cache.get(key) == b"v1" and cache.get(key) == b"v1"
        assert cache.get_many([key, "absent"]) == {key: b"v1"}
        other.set(key, b"v2")  # another process's write: seen at once, nothing was held
        assert cache.get(key) == b"v2"
        stats = cache.stats()
        assert stats["l1_keys"] == 0 and stats["hits"] == 0
        with pytest.raises(ValueError, match="l1_size"):
            Cache(coord, l1_size=-1, mode=mode)
    finally:
        cache.close()
        other.close()
        coord.close()
        other.coord.close()
