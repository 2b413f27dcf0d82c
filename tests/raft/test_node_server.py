"""NodeServer + clients in one process: the client protocol end to end over real sockets.

Three ``NodeServer``s share one event loop (fast and deterministic enough for behaviour tests);
the real-process suite covers crashes and partitions.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import msgpack
import pytest

from raft_node import kvstore
from raft_node.client import (
    AsyncRaftClient,
    AuthenticationFailed,
    ClusterUnavailable,
    RaftClient,
    Rejected,
    Timeout,
)
from raft_node.host.config import NodeConfig, parse_cluster
from raft_node.kvstore import KVStore
from raft_node.server import NodeServer
from raft_node.storage.durable import DurableStorage
from raft_node.storage.memory import MemoryStorage
from raft_node.testing.launcher import free_port

SECRET = b"node-test-secret"


def _cluster(n: int = 3) -> dict:
    return {f"n{i}": ("127.0.0.1", free_port()) for i in range(1, n + 1)}


async def _start(cluster: dict, tmp: Path | None = None, **kw) -> list[NodeServer]:
    servers = []
    for node in cluster:
        storage = DurableStorage(tmp / node) if tmp else MemoryStorage()
        config = NodeConfig(node, cluster, tmp or Path("."), SECRET, **kw)
        server = NodeServer(config, KVStore(), storage)
        await server.start()
        servers.append(server)
    return servers


async def _stop(servers: list[NodeServer]) -> None:
    for s in servers:
        s.stop()
        await s._shutdown()


async def _leader(servers: list[NodeServer]) -> NodeServer:
    for _ in range(500):
        leaders = [s for s in servers if s.host.is_leader]
        if leaders:
            return leaders[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no leader")


def test_propose_read_status_and_typed_errors():
    async def main():
        cluster = _cluster()
        servers = await _start(cluster)
        try:
            leader = await _leader(servers)
            follower = next(s for s in servers if s is not leader)
            # A client that only knows a follower: its writes are forwarded to the leader.
            async with AsyncRaftClient([cluster[follower.id]], SECRET) as client:
                assert await client.propose(kvstore.incr("n")) == 1
                assert await client.read(kvstore.get("n")) == b"1"
                with pytest.raises(Rejected) as info:
                    await client.propose(msgpack.packb(("bogus",)))
                assert info.value.code == "bad_command"
                status = await client.status()
                assert status["leader"] == leader.id
            # Many concurrent writers through one pipelined client.
            async with AsyncRaftClient(list(cluster.values()), SECRET) as client:
                await asyncio.gather(*(client.propose(kvstore.incr("c")) for _ in range(200)))
                assert await client.read(kvstore.get("c")) == b"200"
            async with AsyncRaftClient([cluster[leader.id]], SECRET) as on_leader:
                # The leader applied every write it acknowledged: a local read sees them all.
                assert await on_leader.read(kvstore.get("c"), stale=True) == b"200"
        finally:
            await _stop(servers)

    asyncio.run(main())


def test_wrong_secret_and_no_cluster_are_distinct_errors():
    async def main():
        cluster = _cluster(1)
        servers = await _start(cluster)
        try:
            await _leader(servers)
            with pytest.raises(AuthenticationFailed):
                await asyncio.to_thread(
                    RaftClient(list(cluster.values()), b"wrong", timeout=1).status
                )
        finally:
            await _stop(servers)
        with pytest.raises(ClusterUnavailable):
            RaftClient([("127.0.0.1", free_port())], SECRET, timeout=0.3).status()

    asyncio.run(main())


def test_a_long_call_without_a_leader_ends_after_the_client_timeout():
    """A deadline far past the client's timeout is time for a leader to work on the call, not
    for looking for one: one node of three (no quorum, no leader) answers within ~timeout."""

    async def main():
        cluster = _cluster()  # only n1 runs
        server = NodeServer(
            NodeConfig("n1", cluster, Path("."), SECRET), KVStore(), MemoryStorage()
        )
        await server.start()
        try:
            for client in (
                RaftClient([cluster["n1"]], SECRET, timeout=0.5),
                AsyncRaftClient([cluster["n1"]], SECRET, timeout=0.5),
            ):
                started = time.monotonic()
                with pytest.raises((Timeout, ClusterUnavailable), match="no leader"):
                    if isinstance(client, RaftClient):
                        await asyncio.to_thread(client.propose, kvstore.incr("x"), timeout=60)
                    else:
                        await client.propose(kvstore.incr("x"), timeout=60)
                assert time.monotonic() - started < 5
        finally:
            await _stop([server])

    asyncio.run(main())


def test_leadership_transfer_via_client():
    async def main():
        cluster = _cluster()
        servers = await _start(cluster)
        try:
            leader = await _leader(servers)
            target = next(s.id for s in servers if s is not leader)
            async with AsyncRaftClient(list(cluster.values()), SECRET) as client:
                assert await client.transfer_leadership(target) == target
                new = await _leader(servers)
                assert new.id == target
                assert await client.propose(kvstore.put("after", b"1")) > 0
        finally:
            await _stop(servers)

    asyncio.run(main())


@pytest.mark.parametrize("fsync", [True, False])
def test_metrics_endpoint_serves_raft_gauges(fsync: bool):
    async def main():
        cluster = _cluster(1)
        port = free_port()
        servers = await _start(cluster, metrics_port=port, fsync=fsync)
        try:
            await _leader(servers)
            async with AsyncRaftClient(list(cluster.values()), SECRET) as client:
                await client.propose(kvstore.put("k", b"v"))
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            )
        finally:
            await _stop(servers)
        for name in (
            "raft_term",
            "raft_is_leader 1.0",
            "raft_commit_index",
            "raft_fsync_seconds",
            "raft_proposals_total 1.0",
            "raft_commit_seconds",
            f"raft_fsync_enabled {float(fsync)}",  # 0.0 under UNSAFE_NO_FSYNC: alert on it
        ):
            assert name in body, name

    asyncio.run(main())


def test_durable_restart_keeps_state(tmp_path: Path):
    async def main():
        cluster = _cluster()
        servers = await _start(cluster, tmp_path)
        async with AsyncRaftClient(list(cluster.values()), SECRET) as client:
            for i in range(50):
                await client.propose(kvstore.incr(f"k{i}"))
        await _stop(servers)
        servers = await _start(cluster, tmp_path)
        try:
            await _leader(servers)
            async with AsyncRaftClient(list(cluster.values()), SECRET) as client:
                assert await client.read(kvstore.get("k49")) == b"1"
                assert await client.propose(kvstore.incr("k49")) == 2
        finally:
            await _stop(servers)

    asyncio.run(main())


def test_node_config_validation():
    with pytest.raises(ValueError, match="not in the cluster"):
        NodeConfig("n9", parse_cluster("n1=h:1"), Path("."), SECRET)
    with pytest.raises(ValueError, match="secret"):
        NodeConfig("n1", parse_cluster("n1=h:1"), Path("."), b"")
    for bad in ("", "n1", "n1=h", "n1=h:x", "n1=h:1,n1=h:2"):
        with pytest.raises(ValueError):
            parse_cluster(bad)


class Announcer:
    """A state machine whose every write is announced on a topic (exercises WATCH)."""

    def __init__(self) -> None:
        self.events: list = []

    def apply(self, index, command, now_ms):
        self.events.append(("news", command.decode()))
        return index

    def drain_events(self):
        out, self.events = self.events, []
        return out

    def query(self, q):
        return None

    def snapshot(self):
        return b""

    def restore(self, data):
        pass


def test_watch_streams_events_in_log_order_with_resync():
    from raft_node.client import Watcher

    async def main():
        cluster = _cluster()
        servers = []
        for node in cluster:
            config = NodeConfig(node, cluster, Path("."), SECRET)
            server = NodeServer(config, Announcer(), MemoryStorage())
            await server.start()
            servers.append(server)
        try:
            await _leader(servers)
            seen, resyncs = [], []
            follower = next(s for s in servers if not s.host.is_leader)
            watcher = Watcher(
                [cluster[follower.id]],
                SECRET,
                "news",
                lambda i, payload: seen.append((i, payload)),
                lambda: resyncs.append(True),
            )
            watcher.start()
            assert await asyncio.to_thread(watcher.subscribed.wait, 5)
            async with AsyncRaftClient(list(cluster.values()), SECRET) as client:
                for i in range(20):
                    await client.propose(f"m{i}".encode())
            for _ in range(200):
                if len(seen) == 20:
                    break
                await asyncio.sleep(0.01)
            watcher.stop()
            assert [payload for _, payload in seen] == [f"m{i}" for i in range(20)]
            assert [i for i, _ in seen] == sorted(i for i, _ in seen)
            assert resyncs == [True]
        finally:
            await _stop(servers)

    asyncio.run(main())
