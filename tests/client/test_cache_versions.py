"""The cache client's versioned reads (``Cache.get_versioned``, ``ops.cache_get_versioned``) and a
CAS round trip with them, and ``l1_size=0``, against a ``CoordinationMachine`` in this process
(no node, no network: ``Cache`` without registrations needs only ``propose`` and ``query``). The
same against real nodes, with the linearizable L1: tests/realprocess/test_cache_client.py and
test_client_contract.py."""

from __future__ import annotations

from typing import Any

import pytest

from coordination import errors
from coordination.client import operations as ops
from coordination.client.cache import BOUNDED, LINEARIZABLE, Cache
from coordination.exceptions import Evicted
from coordination.primitives.machine import CoordinationMachine
from raft_node.core.fsm import CommandRejected


class MachineCoordinator:
    """What ``Cache`` calls on a ``Coordinator`` when it registers nothing, applied to one
    in-process state machine (each proposal is the next log entry)."""

    timeout = 5.0

    def __init__(self, max_bytes: int | None = None) -> None:
        self.m = CoordinationMachine()
        if max_bytes is not None:
            self.m.part("cache").max_bytes = max_bytes  # type: ignore[attr-defined]
        self.index = 0
        self.proposed = 0

    def propose(self, body: bytes, timeout: float | None = None) -> Any:
        self.index += 1
        self.proposed += 1
        try:
            return self.m.apply(self.index, body, 1_000_000 + self.index)
        except CommandRejected as exc:
            raise errors.build(exc.code, exc.message, exc.details) from None

    def query(self, body: bytes) -> Any:
        return self.m.query(body)

    def run(self, op: ops.Operation[Any]) -> Any:
        return op.decode(self.propose(op.body) if op.write else self.query(op.body))


@pytest.mark.parametrize(("l1_size", "mode"), [(0, LINEARIZABLE), (0, BOUNDED), (10, BOUNDED)])
def test_a_cas_round_trip_with_the_version_get_returns(l1_size: int, mode: str) -> None:
    coord = MachineCoordinator()
    cache = Cache(coord, l1_size=l1_size, mode=mode)  # type: ignore[arg-type]
    try:
        assert cache.get_versioned("hits") is None
        first = cache.cas("hits", None, b"1")  # None: create, only if absent
        assert isinstance(first, int) and cache.cas("hits", None, b"again") is False
        assert cache.get_versioned("hits") == (b"1", first)
        value, version = cache.get_versioned("hits") or (b"", 0)
        second = cache.cas("hits", version, str(int(value) + 1).encode())
        assert isinstance(second, int) and second > first
        assert cache.cas("hits", first, b"stale") is False  # the old version no longer matches
        assert cache.get_versioned("hits") == (b"2", second)
        assert cache.get("hits") == b"2"
        third = cache.set("hits", b"3")
        assert cache.get_versioned("hits") == (b"3", third)  # a plain write moves it too
    finally:
        cache.close()


def test_an_l1_hit_answers_the_version_it_was_filled_with() -> None:
    coord = MachineCoordinator()
    cache = Cache(coord, l1_size=10, mode=BOUNDED, staleness=60.0)  # type: ignore[arg-type]
    try:
        version = cache.set("k", b"v")
        assert cache.get_versioned("k") == (b"v", version)  # a miss: read, kept in the L1
        assert cache.get_versioned("k") == (b"v", version)
        assert cache.stats()["hits"] == 1
    finally:
        cache.close()


def test_without_an_l1_every_read_goes_to_the_cluster_and_nothing_is_registered() -> None:
    """``l1_size=0``: no slot and no LRU victim (it used to raise StopIteration)."""
    coord = MachineCoordinator()
    cache = Cache(coord, l1_size=0)  # type: ignore[arg-type]
    try:
        assert cache.session is None and cache.get("k", b"default") == b"default"
        cache.set("k", b"v1")
        for _ in range(3):
            assert cache.get("k") == b"v1"
        assert cache.get_many(["k", "absent"]) == {"k": b"v1"}
        stats = cache.stats()
        assert stats["l1_keys"] == 0 and stats["hits"] == 0 and stats["misses"] == 6
        assert coord.proposed == 1  # the set: reads were queries, no fills
        assert coord.m.part("cache").l1.count() == 0  # type: ignore[attr-defined]
    finally:
        cache.close()


def test_an_evicted_value_is_not_taken_for_an_absent_key() -> None:
    """``get`` answers its default for a value that lives only in Redis (none here);
    ``get_versioned`` raises ``Evicted`` with the version, so a CAS loop cannot take the key
    for absent and retry a create forever."""
    coord = MachineCoordinator(max_bytes=3_000)
    cache = Cache(coord, l1_size=0)  # type: ignore[arg-type]
    try:
        old = cache.set("old", b"x" * 2_000)
        cache.set("new", b"y" * 2_000)  # over the budget: "old" is evicted
        assert cache.get("old") is None
        with pytest.raises(Evicted) as info:
            cache.get_versioned("old")
        assert info.value.details == {"key": "old", "version": old}
        with pytest.raises(Evicted):
            coord.run(ops.cache_get_versioned("old"))  # the coordinators' read, alike
        assert cache.cas("old", old, b"z") is not False  # the version is enough to write
        assert cache.get_versioned("old") == (b"z", coord.index)
    finally:
        cache.close()


def test_the_operations_read_and_cas_by_version() -> None:
    coord = MachineCoordinator()
    assert coord.run(ops.cache_get_versioned("k")) is None
    version = coord.run(ops.cache_cas("k", None, b"v", ttl=60))
    assert coord.run(ops.cache_get_versioned("k")) == (b"v", version)
    assert coord.run(ops.cache_cas("k", version + 1, b"w")) is False
    assert coord.run(ops.cache_cas("k", version, b"w")) > version
