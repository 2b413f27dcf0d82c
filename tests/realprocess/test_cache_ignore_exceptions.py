"""RaftCache's ``IGNORE_EXCEPTIONS`` against real sockets and real node processes: with the
cluster unreachable (nothing listening, or every node killed) reads are misses and writes
no-ops, each logged as one WARNING line; without the option the same calls raise. Input errors
(a bad key, a value over the limit) raise either way."""

from __future__ import annotations

import logging
import time

import pytest
from django.core.cache import InvalidCacheKey

from coordination.cache_backend import RaftCache
from coordination.exceptions import ClusterUnavailable, LimitExceeded, Timeout
from coordination.primitives.limits import VALUE_MAX_BYTES
from raft_node.testing.launcher import LocalCluster, free_port

pytestmark = [pytest.mark.realprocess]

LOGGER = "coordination.cache_backend"
DOWN = (ClusterUnavailable, Timeout)


def _backend(location: str, secret: str, **options) -> RaftCache:
    return RaftCache(
        location,
        {
            "KEY_PREFIX": "ignore",
            "OPTIONS": {"SECRET": secret, "SOCKET_TIMEOUT": 0.2, **options},
        },
    )


def _close(backend: RaftCache) -> None:
    if backend._client is not None:
        backend.client.close()
        backend.client.coord.close()


def _nowhere() -> str:
    """Three addresses nothing listens on (stopped nodes)."""
    return ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))


def _ignored(caplog: pytest.LogCaptureFixture, op: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER
        and r.levelno == logging.WARNING
        and f"RaftCache {op} ignored" in r.getMessage()
    ]


def test_unreachable_cluster_reads_miss_and_writes_are_no_ops(caplog) -> None:
    cache = _backend(_nowhere(), "s" * 32, IGNORE_EXCEPTIONS=True)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    started = time.monotonic()
    assert cache.get("k", "default") == "default"
    assert cache.get_many(["a", "b"]) == {}
    assert cache.set("k", "v") is None  # no exception
    assert cache.add("k", "v") is False
    assert cache.has_key("k") is False
    assert cache.touch("k", 10) is False
    assert cache.delete("k") is False
    assert cache.incr("n") is None
    assert cache.set_many({"a": 1, "b": 2}) == ["a", "b"]  # the keys not stored
    cache.delete_many(["a"])
    cache.clear()
    assert cache.get_or_set("k", "computed") == "computed"
    elapsed = time.monotonic() - started
    (line,) = _ignored(caplog, "get")[:1]
    assert "ClusterUnavailable" in line and "no node reachable" in line, line
    assert _ignored(caplog, "set") and _ignored(caplog, "set_many") and _ignored(caplog, "incr")
    assert elapsed < 30, f"SOCKET_TIMEOUT bounds each call: {elapsed:.1f} s"
    # Input errors are not outages: they raise with the option on.
    with pytest.raises(InvalidCacheKey):
        cache.get("\udcff")
    with pytest.raises(LimitExceeded, match="over the 1048576-byte limit"):
        cache.set("big", b"x" * (VALUE_MAX_BYTES + 1))


def test_without_the_option_the_same_calls_raise(caplog) -> None:
    cache = _backend(_nowhere(), "s" * 32)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with pytest.raises(ClusterUnavailable):
        cache.get("k", "default")
    with pytest.raises(ClusterUnavailable):
        cache.set("k", "v")
    with pytest.raises(ClusterUnavailable):
        cache.get_many(["a"])
    assert not _ignored(caplog, "get") and not _ignored(caplog, "set")


def test_a_cluster_that_stops_turns_into_misses(coordination_cluster: LocalCluster, caplog) -> None:
    """A cache in the default (linearizable, L1) mode that worked, then every node is killed:
    new reads are misses, writes no-ops; a second alias without the option raises. (Last in
    this module: it kills the module's cluster.)"""
    location = ",".join(f"{h}:{p}" for h, p in coordination_cluster.addresses.values())
    secret = coordination_cluster.secret
    ignoring = _backend(location, secret, IGNORE_EXCEPTIONS=True)
    strict = _backend(location, secret)
    try:
        ignoring.set("before", "up")
        assert ignoring.get("before") == "up" and strict.get("before") == "up"
        for node in coordination_cluster.ids:
            coordination_cluster.kill(node)
        caplog.set_level(logging.WARNING, logger=LOGGER)
        assert ignoring.get("never-read", "default") == "default"
        assert ignoring.set("after", "down") is None
        assert ignoring.add("after", "down") is False
        assert _ignored(caplog, "get") and _ignored(caplog, "set") and _ignored(caplog, "add")
        with pytest.raises(DOWN):
            strict.get("never-read")
        with pytest.raises(DOWN):
            strict.set("after", "down")
    finally:
        _close(ignoring)
        _close(strict)
