"""``coord.watch`` against a real 3-node cluster: 5,000 writes while the leader is killed -9,
followed by a leader-served blocking watch and a follower-served asyncio watch, each of which
must see every version exactly once, in order; and a follower cut off from every leader ends
its stream (the staleness bound) and resumes without a gap once it hears from one again."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from coordination.client import Coordinator
from coordination.client.aio import AsyncCoordinator
from coordination.client.watch import WatchEvent
from coordination.primitives import commands
from raft_node.client import RaftError
from raft_node.testing.launcher import LocalCluster

pytestmark = pytest.mark.realprocess

WRITES = 5_000
WRITERS = 4


def _revision(coord: Coordinator) -> int:
    return coord.query(commands.history_status())["revision"]


class AsyncFollowerWatch(threading.Thread):
    """A follower-served ``AsyncCoordinator.watch`` on its own loop, collecting events until
    it has seen ``until`` (set later) or is stopped."""

    def __init__(self, cluster: LocalCluster, since: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.since = cluster, since
        self.events: list[WatchEvent] = []
        self.until: int | None = None
        self.stop = threading.Event()
        self.reconnects = 0

    def run(self) -> None:
        asyncio.run(self._collect())

    async def _collect(self) -> None:
        addresses = list(self.cluster.addresses.values())
        coord = AsyncCoordinator(addresses, self.cluster.secret)
        watch = coord.watch("", since_version=self.since, follower_ok=True, max_lag=1.0)
        try:
            while not self.stop.is_set():
                event = await watch.get(0.2)
                if event is not None:
                    self.events.append(event)
                if self.until is not None and self.events and self.events[-1].version >= self.until:
                    break
        finally:
            self.reconnects = watch.reconnects
            await watch.aclose()
            await coord.close()


def _collect_until(watch: Any, events: list[WatchEvent], version: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (not events or events[-1].version < version) and time.monotonic() < deadline:
        event = watch.get(0.2)
        if event is not None:
            events.append(event)


def test_watchers_see_every_version_once_in_order_across_a_leader_kill(coordination_cluster):
    cluster = coordination_cluster
    coord = Coordinator(list(cluster.addresses.values()), cluster.secret, timeout=15.0)
    start = _revision(coord)
    leader_watch = coord.watch("", since_version=start)
    follower_watch = AsyncFollowerWatch(cluster, start)
    follower_watch.start()
    seen: list[WatchEvent] = []
    acked: set[str] = set()
    unknown: set[str] = set()

    def write(first: int) -> None:
        for i in range(first, WRITES, WRITERS):
            key = f"w:{i}"
            try:
                coord.propose(commands.cache_set(key, str(i).encode(), None))
                acked.add(key)
            except RaftError:
                unknown.add(key)  # may or may not have happened

    writers = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(WRITERS)]
    for thread in writers:
        thread.start()
    while len(acked) < WRITES * 2 // 5:  # kill the leader 40% of the way in
        seen.extend(e for e in [leader_watch.get(0.01)] if e is not None)
    killed = cluster.leader()
    assert killed is not None
    cluster.kill(killed)
    for thread in writers:
        while thread.is_alive():
            seen.extend(e for e in [leader_watch.get(0.01)] if e is not None)
    final = _revision(coord)
    _collect_until(leader_watch, seen, final, 60)
    leader_watch.close()
    follower_watch.until = final
    follower_watch.join(60)
    follower_watch.stop.set()
    cluster.start_node(killed)  # the module's next tests want three nodes again
    try:
        print(
            f"writes acked={len(acked)} unknown={len(unknown)} versions={final - start} "
            f"leader-watch events={len(seen)} reconnects={leader_watch.reconnects} "
            f"follower-watch events={len(follower_watch.events)} "
            f"reconnects={follower_watch.reconnects}"
        )
        expected = list(range(start + 1, final + 1))
        for events in (seen, follower_watch.events):
            assert [e.version for e in events] == expected  # each once, in order, no gap
            puts = [e.key for e in events if e.type == "put"]
            assert len(puts) == len(set(puts))
            assert acked <= set(puts) <= acked | unknown
        assert final - start >= len(acked) >= WRITES - len(unknown)
        assert [e.key for e in seen] == [e.key for e in follower_watch.events]
    finally:
        cluster.wait_for_leader(timeout=30)


def test_a_follower_out_of_touch_ends_its_stream_then_resumes_without_a_gap(
    coordination_cluster,
):
    cluster = coordination_cluster
    cluster.wait_converged(timeout=30)
    leader = cluster.leader()
    follower = next(n for n in cluster.ids if n != leader)
    others = [n for n in cluster.ids if n != follower]
    coord = Coordinator(list(cluster.addresses.values()), cluster.secret, timeout=15.0)
    only_follower = Coordinator([cluster.addresses[follower]], cluster.secret)
    watch = only_follower.watch("stale:", follower_ok=True, max_lag=0.5)
    try:
        coord.propose(commands.cache_set("stale:before", b"1", None))
        first = watch.get(10)
        assert first is not None and first.key == "stale:before"
        assert watch.reconnects == 0
        for node in others:
            cluster.pause(node)
        time.sleep(2.5)
        ended = watch.reconnects
        for node in others:
            cluster.resume(node)
        assert ended >= 1, "the follower kept streaming with no leader in touch"
        coord.propose(commands.cache_set("stale:after", b"2", None))
        after = watch.get(20)
        assert after is not None and after.key == "stale:after"
        assert after.version > first.version
    finally:
        for node in others:
            cluster.resume(node)
        watch.close()
