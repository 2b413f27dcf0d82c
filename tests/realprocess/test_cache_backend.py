"""The Django cache backend against real node processes: Django's cache contract."""

from __future__ import annotations

import asyncio
import time
import warnings

import pytest
from django.core.cache import CacheKeyWarning, InvalidCacheKey

from coordination.cache_backend import RaftCache, cluster_key, decode_value, encode_value
from coordination.primitives.limits import CACHE_TTL_MS
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]


def _backend(cluster: LocalCluster, **options) -> RaftCache:
    location = ",".join(f"{h}:{p}" for h, p in cluster.addresses.values())
    return RaftCache(
        location,
        {"TIMEOUT": 60, "KEY_PREFIX": "t", "OPTIONS": {"SECRET": cluster.secret, **options}},
    )


def _close(backend: RaftCache) -> None:
    backend.client.close()
    backend.client.coord.close()


@pytest.fixture
def cache(coordination_cluster: LocalCluster):
    backend = _backend(coordination_cluster)
    backend.clear()
    yield backend
    _close(backend)


def test_basic_contract(cache):
    assert cache.get("missing") is None and cache.get("missing", "d") == "d"
    cache.set("k", {"a": [1, 2]})
    assert cache.get("k") == {"a": [1, 2]}
    assert cache.add("k", "other") is False and cache.add("new", 0) is True
    assert cache.get("new") == 0
    assert cache.has_key("k") and not cache.has_key("nope")
    assert cache.delete("k") is True and cache.delete("k") is False
    assert cache.get_or_set("gs", lambda: "computed") == "computed"
    assert cache.get_or_set("gs", "ignored") == "computed"


def test_incr_decr_are_atomic_on_the_cluster(cache):
    cache.set("n", 10)
    assert cache.incr("n") == 11 and cache.incr("n", 5) == 16 and cache.decr("n", 6) == 10
    with pytest.raises(ValueError):
        cache.incr("absent")


def test_many_versions_and_awkward_keys(cache):
    with pytest.warns(CacheKeyWarning):  # a space: memcached would refuse it, we hash it
        cache.set_many({"a": 1, "b": "two", "with space/ü": [3]})
        assert cache.get_many(["a", "b", "with space/ü", "z"]) == {
            "a": 1,
            "b": "two",
            "with space/ü": [3],
        }
    cache.delete_many(["a", "b"])
    assert cache.get_many(["a", "b"]) == {}
    cache.set("v", "one", version=1)
    cache.set("v", "two", version=2)
    assert cache.get("v", version=1) == "one" and cache.get("v", version=2) == "two"
    long_key = "x" * 500
    with pytest.warns(CacheKeyWarning):  # memcached's limit is 250: portable code is warned
        cache.set(long_key, "long")
        assert cache.get(long_key) == "long"


def test_timeouts_none_zero_and_touch(cache):
    cache.set("forever", 1, timeout=None)
    cache.set("gone", 1, timeout=0)
    assert cache.get("forever") == 1 and cache.get("gone") is None
    cache.set("short", "s", timeout=1)
    assert cache.touch("short", timeout=None) is True
    assert cache.touch("missing") is False
    set_at = time.monotonic()
    cache.set("expiring", "e", timeout=1)
    assert cache.get("expiring") == "e"
    # Expiry is by the leader's clock; reads see it as absent at once, within a tick of 1 s.
    while cache.get("expiring") is not None:
        assert time.monotonic() - set_at < 5, "never expired"
        time.sleep(0.02)
    assert time.monotonic() - set_at >= 0.9
    assert cache.get("short") == "s"


def test_clear_and_async_variants(cache):
    async def main():
        await cache.aset("ak", "av")
        assert await cache.aget("ak") == "av"
        assert await cache.ahas_key("ak")
        assert await cache.aadd("ak", "x") is False

    asyncio.run(main())
    cache.clear()
    assert cache.get("ak") is None


def test_value_and_key_encoding():
    for value in (0, -5, 2**62, "text", b"bytes", 1.5, None, True, [1, "x"], {"k": (1, 2)}):
        assert decode_value(encode_value(value)) == value
        assert type(decode_value(encode_value(value))) is type(value)
    assert cluster_key("prefix:1:simple") == "prefix:1:simple"
    assert cluster_key("has space") != cluster_key("has_space")


def test_a_timeout_beyond_the_clusters_longest_ttl_is_stored_with_it(cache):
    """Django accepts any positive timeout (a year is common); the cluster keeps a key at most
    CACHE_TTL_MS (30 days), so a longer one is stored with that TTL instead of refused."""
    year = 60 * 60 * 24 * 365
    cache.set("year", "y", timeout=year)
    assert cache.add("year-add", "a", timeout=year) is True
    cache.set_many({"year-many": "m"}, timeout=10**12)
    cache.set("touched", "t", timeout=60)
    assert cache.touch("touched", timeout=float("inf")) is True
    assert cache.get_many(["year", "year-add", "year-many", "touched"]) == {
        "year": "y",
        "year-add": "a",
        "year-many": "m",
        "touched": "t",
    }
    keys = {k["key"]: k for k in cache.client.coord.cache_keys("t:1:", 10)}
    now_ms = time.time() * 1000
    for key in ("t:1:year", "t:1:year-add", "t:1:year-many", "t:1:touched"):
        assert keys[key]["expires_ms"] - now_ms == pytest.approx(CACHE_TTL_MS[1], abs=60_000)


@pytest.mark.parametrize("mode", ["linearizable", "bounded"])
def test_l1_size_zero_reads_through_the_django_backend(coordination_cluster, mode):
    backend = _backend(coordination_cluster, L1_SIZE=0, MODE=mode)
    key = f"nol1-{mode}"
    try:
        assert backend.get(key) is None and backend.has_key(key) is False
        backend.set(key, [1])
        assert backend.get(key) == [1] and backend.has_key(key) is True
        assert backend.get_or_set(key + "-gs", "v") == "v"
    finally:
        _close(backend)


def test_keys_memcached_refuses_warn_as_with_djangos_backends(cache):
    """CacheKeyWarning (the key still works: it is hashed); a key no digest can be made of
    is refused with InvalidCacheKey before anything is sent."""
    for key in ("with space", "x" * 251, "tab\there"):
        with pytest.warns(CacheKeyWarning):
            cache.set(key, key)
        with pytest.warns(CacheKeyWarning):
            assert cache.get(key) == key
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheKeyWarning)
        cache.set("portable:key", 1)  # no warning for a portable key
    with pytest.raises(InvalidCacheKey, match="UTF-8"):
        cache.set("lone-\ud800-surrogate", 1)
    cache.key_func = lambda key, prefix, version: key  # a custom KEY_FUNCTION gone wrong
    with pytest.raises(InvalidCacheKey, match="must be a string"):
        cache.get(b"bytes")
