"""What only the in-memory transport has: delay, random loss and restarts on a ``MemoryNetwork``,
and clients without sockets; plus a Raft cluster of real ``NodeServer``s running over it (the
twin is usable where the host uses ``TcpTransport``). The contract both transports keep is
``test_transport_contract.py``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raft_node.core.messages import Entry, Message, MessageType
from raft_node.host.config import NodeConfig
from raft_node.kvstore import KVStore
from raft_node.server import NodeServer
from raft_node.storage.memory import MemoryStorage
from raft_node.transport.memory import MemoryNetwork, MemoryTransport

pytestmark = pytest.mark.timeout(60)


def app(i: int, frm: str = "a", to: str = "b") -> Message:
    return Message(MessageType.APP, to, frm, term=1, index=i, entries=(Entry(1, i, b"x"),))


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def pair(network: MemoryNetwork) -> tuple[MemoryTransport, MemoryTransport, list[Message]]:
    got: list[Message] = []
    a = MemoryTransport(network, "a", ["a", "b"], lambda m: None)
    b = MemoryTransport(network, "b", ["a", "b"], got.append)
    await a.start()
    await b.start()
    return a, b, got


def test_a_delay_holds_messages_back_and_keeps_their_order() -> None:
    async def main() -> None:
        # Delays long enough that a loaded machine's scheduling cannot deliver one early.
        network = MemoryNetwork(delay=1.0)
        a, b, got = await pair(network)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        for i in range(5):
            a.send([app(i)])
            network.set_delay("a", "b", 1.0 - 0.2 * i)  # later messages would overtake
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        assert got == []
        await until(lambda: len(got) == 5)
        assert loop.time() - sent >= 1.0
        assert [m.index for m in got] == [0, 1, 2, 3, 4]
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_drop_rate_loses_messages_and_counts_them() -> None:
    async def main() -> None:
        network = MemoryNetwork(drop_rate=0.5, rng=random.Random(7))
        a, b, got = await pair(network)
        a.send(app(i) for i in range(200))
        await until(lambda: len(got) + network.lost == 200)
        assert 50 < len(got) < 150
        indexes = [m.index for m in got]
        assert indexes == sorted(indexes)
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_messages_in_flight_to_a_node_that_restarts_are_lost() -> None:
    async def main() -> None:
        network = MemoryNetwork(delay=0.5)  # surely still on the wire when b stops
        a, b, got = await pair(network)
        a.send([app(1)])
        await asyncio.sleep(0.02)  # on the wire now
        await b.stop()
        b2 = MemoryTransport(network, "b", ["a", "b"], got.append)
        await b2.start()
        await until(lambda: network.lost == 1)  # counted when it would have arrived
        assert got == []
        a.send([app(2)])
        await until(lambda: [m.index for m in got] == [2])
        assert a.stats()["reconnects"] == 1
        await a.stop()
        await b2.stop()

    asyncio.run(main())


def test_stopping_closes_client_connections_and_cancels_their_requests() -> None:
    cancelled = asyncio.Event()

    async def slow(body: bytes, respond: Callable[[bytes], None]) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> None:
        network = MemoryNetwork()
        t = MemoryTransport(network, "a", ["a"], lambda m: None, on_client_frame=slow)
        await t.start()
        conn = network.connect_client("a")
        conn.send(b"req")
        await until(lambda: t.stats()["client_requests"] == 1)
        await t.stop()
        assert cancelled.is_set()
        with pytest.raises(ConnectionError):
            await conn.recv()
        with pytest.raises(ConnectionRefusedError):
            network.connect_client("a")

    asyncio.run(main())


# -- NodeServer over the twin ---------------------------------------------------------------------


def _servers(network: MemoryNetwork, monkeypatch: pytest.MonkeyPatch) -> list[NodeServer]:
    """Three nodes whose transport is a ``MemoryTransport`` built from the arguments the node
    gives ``TcpTransport`` (the addresses are never dialled)."""

    def memory_transport(
        node_id: str, peers: dict[str, Any], secret: bytes, on_message: Any, **kw: Any
    ) -> MemoryTransport:
        return MemoryTransport(
            network,
            node_id,
            peers,
            on_message,
            on_unreachable=kw["on_unreachable"],
            on_snapshot_status=kw["on_snapshot_status"],
            on_client_frame=kw["on_client_frame"],
        )

    monkeypatch.setattr("raft_node.server.TcpTransport", memory_transport)
    cluster = {f"n{i}": ("127.0.0.1", 1) for i in range(1, 4)}
    return [
        NodeServer(NodeConfig(n, cluster, Path("."), b"memory-secret"), KVStore(), MemoryStorage())
        for n in cluster
    ]


def test_a_node_cluster_elects_over_the_twin_and_re_elects_around_a_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        network = MemoryNetwork(rng=random.Random(1))
        servers = _servers(network, monkeypatch)
        for s in servers:
            await s.start()

        def leaders() -> list[NodeServer]:
            return [s for s in servers if s.host.is_leader]

        await until(lambda: len(leaders()) == 1)
        old = leaders()[0]
        assert all(isinstance(s.transport, MemoryTransport) for s in servers)
        others = [s for s in servers if s is not old]
        network.isolate(old.host.id, [s.host.id for s in servers])
        await until(lambda: any(s.host.is_leader for s in others))
        assert (
            old.transport.stats()["connect_failures"] + old.transport.stats()["write_failures"] > 0
        )
        network.heal()
        await until(lambda: len(leaders()) == 1 and not old.host.is_leader)
        for s in servers:
            s.stop()
            await s._shutdown()

    asyncio.run(main())
