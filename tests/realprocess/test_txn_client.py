"""``coord.fenced(lock)`` and ``coord.txn`` on both clients against three real node processes:
accepted with the current token, ``StaleToken`` after release, txn branches and results, a txn
release updating the lock handle, typed errors for bad input, and acquire with a lease in doubt."""

from __future__ import annotations

import asyncio

import pytest

from coordination.client import Coordinator
from coordination.client.aio import AsyncCoordinator
from coordination.client.txn import delete, lock_current, put, release, value, version
from coordination.exceptions import BadRequest, LimitExceeded, NotHolder, StaleToken
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]


def _args(c: LocalCluster) -> tuple[list, str]:
    return list(c.addresses.values()), c.secret


def test_fenced_writes_and_txns_on_the_blocking_client(coordination_cluster) -> None:
    with Coordinator(*_args(coordination_cluster)) as coord:
        lock = coord.lock("txn-sync")
        assert lock.acquire()
        fenced = coord.fenced(lock)
        v1 = fenced.set("txn-sync:a", b"1")
        assert coord.cache_get_versioned("txn-sync:a") == (b"1", v1)
        assert fenced.delete("txn-sync:missing") is False
        assert fenced.apply([put("txn-sync:b", b"2", ttl=60), delete("txn-sync:a")])[1] is True

        result = coord.txn(
            compare=[version("txn-sync:b") > 0, value("txn-sync:a") == None, lock_current(lock)],  # noqa: E711
            success=[put("txn-sync:c", b"3"), release(lock)],
            failure=[put("txn-sync:failed", b"x")],
        )
        assert result.succeeded and result.results[1] == {"released": True, "count": 0}
        assert lock.token is None and lock.count == 0  # the txn's release updated the handle
        with pytest.raises(StaleToken):
            coord.fenced("txn-sync", result.results[0]).set("txn-sync:a", b"late")
        with pytest.raises(StaleToken):
            coord.fenced(lock)  # the handle holds nothing any more

        lost = coord.txn([version("txn-sync:c") == 1], [delete("txn-sync:c")], [])
        assert not lost.succeeded and lost.results == []
        with pytest.raises(LimitExceeded):
            coord.txn([], [put(f"txn-sync:k{i}", b"v") for i in range(65)])
        with pytest.raises(BadRequest):
            coord.txn([], [put("txn-sync:k", b"1"), put("txn-sync:k", b"2")])
        with pytest.raises(NotHolder):
            other = coord.lock("txn-sync-other")
            assert other.acquire()
            other.release()
            other.token = 1  # a handle that believes it still holds
            coord.txn([], [release(other)])
        with pytest.raises(TypeError):
            value("k") < 3  # noqa: B015


def test_acquire_with_a_lease_in_doubt_checks_the_token_on_a_real_cluster(
    coordination_cluster,
) -> None:
    with Coordinator(*_args(coordination_cluster)) as coord, coord.session(ttl=5) as session:
        session.confirmed_at -= 60  # as if the acquire's answer came long after the last renewal
        lock = coord.lock("txn-lease", session=session)
        assert lock.acquire() and not lock.lapsed  # the session is alive: the check says so
        assert coord.check_token("txn-lease", lock.token)
        lock.release()


def test_fenced_writes_and_txns_on_the_asyncio_client(coordination_cluster) -> None:
    async def main() -> None:
        async with AsyncCoordinator(*_args(coordination_cluster)) as coord:
            lock = coord.lock("txn-async")
            assert await lock.acquire()
            version_a = await coord.fenced(lock).set("txn-async:a", b"1")
            result = await coord.txn(
                [version("txn-async:a") == version_a, lock_current(lock)],
                [delete("txn-async:a"), release(lock)],
            )
            assert result.succeeded and result.results[0] is True and lock.token is None
            with pytest.raises(StaleToken):
                await coord.fenced("txn-async", version_a + 0).delete("txn-async:a")

    asyncio.run(main())
