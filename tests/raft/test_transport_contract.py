"""The ``Transport`` contract (``raft_node.transport.protocol``), one suite run against both
implementations: ``TcpTransport`` over loopback sockets (partitions through ``FaultProxy``) and
``MemoryTransport`` on a ``MemoryNetwork``. What the host may rely on must hold for both, so a
test of the host over the in-memory twin says something about the real one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

from raft_node.core.messages import Entry, Message, MessageType, Snapshot, SnapshotMeta
from raft_node.testing.faultproxy import FaultProxy
from raft_node.transport.auth import AuthError, client_handshake
from raft_node.transport.codec import decode_payload, encode_payload
from raft_node.transport.memory import MemoryNetwork, MemoryTransport
from raft_node.transport.protocol import STAT_KEYS, ClientHandler, Transport
from raft_node.transport.tcp import TcpTransport
from raft_node.transport.wire import FrameKind, encode_frame, read_frame

pytestmark = pytest.mark.timeout(60)

SECRET = b"contract-secret-0123456789abcdef"
FAST = {"backoff_first": 0.02, "backoff_max": 0.2}


def app(i: int, frm: str = "a", to: str = "b") -> Message:
    return Message(MessageType.APP, to, frm, term=1, index=i, entries=(Entry(1, i, b"x"),))


def snap(frm: str = "a", to: str = "b", index: int = 1) -> Message:
    return Message(MessageType.SNAP, to, frm, snapshot=Snapshot(SnapshotMeta(index, 1), b"s"))


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


class Node:
    """A transport plus everything it reported to its host."""

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.got: list[Message] = []
        self.unreachable: list[str] = []
        self.snap_status: list[tuple[str, bool]] = []
        self.fail_on: set[int] = set()  # on_message raises for these indexes
        self.t: Any = None

    def on_message(self, m: Message) -> None:
        if m.index in self.fail_on:
            raise RuntimeError("host bug")
        self.got.append(m)

    def on_snapshot_status(self, peer: str, ok: bool) -> None:
        self.snap_status.append((peer, ok))

    def from_peer(self, frm: str) -> list[int]:
        return [m.index for m in self.got if m.frm == frm]


class Client:
    """One client connection: ``send`` a request body, ``recv`` a response body."""

    def __init__(
        self, send: Callable[[bytes], None], recv: Callable[[], Awaitable[bytes]], close: Any
    ) -> None:
        self.send, self.recv, self.close = send, recv, close


class Net:
    """A few nodes on one implementation, with the faults the contract talks about."""

    nodes: dict[str, Node]

    async def restart(self, node: str) -> None:
        raise NotImplementedError

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    async def client(self, node: str) -> Client:
        raise NotImplementedError

    async def close(self) -> None:
        for n in self.nodes.values():
            await n.t.stop()


class TcpNet(Net):
    def __init__(self, ids: list[str], handler: ClientHandler | None, **kw: Any) -> None:
        self.proxy = FaultProxy()
        self.addrs = {i: ("127.0.0.1", _free_port()) for i in ids}
        self.nodes = {i: Node(i) for i in ids}
        self.handler, self.kw = handler, kw
        self.links = {
            (src, dst): self.proxy.add_link(src, dst, self.addrs[dst])
            for src in ids
            for dst in ids
            if src != dst
        }
        for i in ids:
            self._make(i)

    def _make(self, i: str) -> None:
        n = self.nodes[i]
        peers = {dst: addr for (src, dst), addr in self.links.items() if src == i}
        n.t = TcpTransport(
            i,
            peers,
            SECRET,
            n.on_message,
            listen=self.addrs[i],
            on_unreachable=n.unreachable.append,
            on_snapshot_status=n.on_snapshot_status,
            on_client_frame=self.handler,
            connect_timeout=0.5,
            handshake_timeout=0.5,
            **FAST,
            **self.kw,
        )

    async def restart(self, node: str) -> None:
        self._make(node)  # a new process on the same address
        await self.nodes[node].t.start()

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        self.proxy.partition(side_a, side_b)

    def heal(self) -> None:
        self.proxy.heal()

    async def client(self, node: str) -> Client:
        reader, writer = await asyncio.open_connection(*self.addrs[node])
        try:
            await client_handshake(reader, writer, SECRET, my_id="c1", role="client")
        except AuthError as exc:  # what MemoryNetwork.connect_client raises at once
            writer.close()
            raise ConnectionRefusedError(str(exc)) from exc

        async def recv() -> bytes:
            kind, body = await read_frame(reader)
            assert kind == FrameKind.CLIENT_RESPONSE
            return body

        def send(body: bytes) -> None:
            writer.write(encode_frame(FrameKind.CLIENT_REQUEST, body))

        return Client(send, recv, writer.close)

    async def close(self) -> None:
        await super().close()
        self.proxy.close()


class MemoryNet(Net):
    def __init__(self, ids: list[str], handler: ClientHandler | None, **kw: Any) -> None:
        self.network = MemoryNetwork()
        self.ids = ids
        self.nodes = {i: Node(i) for i in ids}
        self.handler, self.kw = handler, kw
        for i in ids:
            self._make(i)

    def _make(self, i: str) -> None:
        n = self.nodes[i]
        n.t = MemoryTransport(
            self.network,
            i,
            self.ids,
            n.on_message,
            on_unreachable=n.unreachable.append,
            on_snapshot_status=n.on_snapshot_status,
            on_client_frame=self.handler,
            **FAST,
            **self.kw,
        )

    async def restart(self, node: str) -> None:
        self._make(node)
        await self.nodes[node].t.start()

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        self.network.partition(side_a, side_b)

    def heal(self) -> None:
        self.network.heal()

    async def client(self, node: str) -> Client:
        conn = self.network.connect_client(node)
        return Client(conn.send, conn.recv, conn.close)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["tcp", "memory"])
def make_net(request: pytest.FixtureRequest) -> Callable[..., Awaitable[Net]]:
    """``await make_net(ids, handler=None, start=True, **transport_kw)``."""
    cls = TcpNet if request.param == "tcp" else MemoryNet

    async def make(
        ids: list[str], handler: ClientHandler | None = None, start: bool = True, **kw: Any
    ) -> Net:
        net = cls(ids, handler, **kw)
        if start:
            for n in net.nodes.values():
                await n.t.start()
        return net

    return make


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 50))


# -- the contract ---------------------------------------------------------------------------------


def test_both_keep_the_protocol_and_report_the_same_counters(make_net: Any) -> None:
    async def main() -> None:
        net = await make_net(["a", "b"])
        t = net.nodes["a"].t
        assert isinstance(t, Transport)
        stats = t.stats()
        assert set(stats) == {*STAT_KEYS, "peers"}
        assert set(stats["peers"]["b"]) == {
            "connected",
            "queued",
            "drops",
            "frames_out",
            "reconnects",
            "failures",
        }
        await net.close()

    run(main())


def test_messages_arrive_in_order_from_their_sender_and_never_inside_send(make_net: Any) -> None:
    async def main() -> None:
        net = await make_net(["a", "b", "c"])
        a, b, c = (net.nodes[i] for i in "abc")
        for start in range(0, 300, 50):
            a.t.send(m for i in range(start, start + 50) for m in (app(i, to="b"), app(i, to="c")))
            c.t.send(app(i, frm="c", to="b") for i in range(start, start + 50))
            if start == 0:
                assert b.got == []  # send only queues: nothing is delivered inside it
            await asyncio.sleep(0)
        await until(lambda: len(b.got) == 600 and len(c.got) == 300)
        assert b.from_peer("a") == list(range(300)) and b.from_peer("c") == list(range(300))
        assert c.got == [app(i, to="c") for i in range(300)]
        assert a.t.stats()["frames_out"] == 600 and b.t.stats()["frames_in"] == 600
        assert a.t.stats()["peers"]["b"]["connected"] and a.unreachable == []
        await net.close()

    run(main())


def test_a_peer_that_is_down_is_reported_and_gets_what_was_queued_when_back(
    make_net: Any,
) -> None:
    async def main() -> None:
        net = await make_net(["a", "b"])
        a = net.nodes["a"]
        a.t.send([app(0)])
        await until(lambda: net.nodes["b"].from_peer("a") == [0])
        await net.nodes["b"].t.stop()
        await until(lambda: not a.t.stats()["peers"]["b"]["connected"] and "b" in a.unreachable)
        a.t.send([app(1), app(2)])  # b is known to be down: these wait for it
        await until(lambda: a.t.stats()["peers"]["b"]["failures"] >= 1)
        assert a.t.stats()["peers"]["b"]["queued"] == 2  # kept while it is down
        await net.restart("b")
        a.t.send([app(3)])
        await until(lambda: net.nodes["b"].from_peer("a") == [0, 1, 2, 3])
        assert a.t.stats()["reconnects"] == 1 and a.t.stats()["peers"]["b"]["connected"]
        await net.close()

    run(main())


def test_the_queue_to_a_down_peer_is_bounded_and_a_dropped_snapshot_is_reported(
    make_net: Any,
) -> None:
    async def main() -> None:
        net = await make_net(["a", "b"], max_queue=4, start=False)
        a = net.nodes["a"]
        await a.t.start()  # b never started
        a.t.send([snap(), *(app(i) for i in range(10))])
        stats = a.t.stats()
        assert stats["drops"] == 7 and stats["peers"]["b"]["queued"] == 4
        await until(lambda: ("b", False) in a.snap_status and "b" in a.unreachable)
        await net.nodes["b"].t.start()
        await until(lambda: net.nodes["b"].from_peer("a") == [6, 7, 8, 9])
        await net.close()

    run(main())


def test_a_snapshot_handed_to_the_network_is_reported(make_net: Any) -> None:
    async def main() -> None:
        net = await make_net(["a", "b"])
        a, b = net.nodes["a"], net.nodes["b"]
        a.t.send([snap(), app(5)])
        await until(lambda: len(b.got) == 2 and a.snap_status == [("b", True)])
        assert b.got == [snap(), app(5)]
        await net.close()

    run(main())


def test_a_partition_cuts_both_ways_and_heal_restores_delivery(make_net: Any) -> None:
    async def main() -> None:
        net = await make_net(["a", "b", "c"])
        a, b, c = (net.nodes[i] for i in "abc")
        a.t.send([app(0, to="b")])
        b.t.send([app(0, frm="b", to="a")])
        await until(lambda: b.from_peer("a") == [0] and a.from_peer("b") == [0])
        net.partition(["a"], ["b", "c"])
        for i in range(1, 4):
            a.t.send([app(i, to="b")])
            b.t.send([app(i, frm="b", to="a")])
            c.t.send([app(i, frm="c", to="b")])  # the majority side still talks
            await asyncio.sleep(0.05)
        await until(lambda: "b" in a.unreachable and "a" in b.unreachable)
        await until(lambda: b.from_peer("c") == [1, 2, 3])
        assert a.from_peer("b") == [0]
        net.heal()
        a.t.send([app(10, to="b")])
        b.t.send([app(10, frm="b", to="a")])
        await until(lambda: 10 in b.from_peer("a") and 10 in a.from_peer("b"))
        for got in (b.from_peer("a"), a.from_peer("b")):
            assert got == sorted(got)  # lost or not, never reordered on one link
        await net.close()

    run(main())


def test_a_failing_host_callback_is_counted_not_raised(make_net: Any) -> None:
    async def main() -> None:
        net = await make_net(["a", "b"])
        a, b = net.nodes["a"], net.nodes["b"]
        b.fail_on = {1}
        a.t.send([app(0), app(1), app(2)])
        await until(lambda: b.from_peer("a") == [0, 2])
        assert b.t.stats()["callback_errors"] == 1
        await net.close()

    run(main())


def test_unknown_destinations_and_spoofed_senders_are_refused(make_net: Any) -> None:
    async def main() -> None:
        net = await make_net(["a", "b", "c"])
        a, b = net.nodes["a"], net.nodes["b"]
        a.t.send([app(0, to="nobody")])
        assert a.t.stats()["unknown_destination"] == 1
        a.t.send([app(0)])
        await until(lambda: b.from_peer("a") == [0])
        a.t.send([app(1, frm="c", to="b")])  # a claims to be c: b closes that connection
        await until(lambda: b.t.stats()["protocol_errors"] == 1)
        await until(lambda: not a.t.stats()["peers"]["b"]["connected"] and "b" in a.unreachable)
        a.t.send([app(2)])  # on a new connection
        await until(lambda: b.from_peer("a") == [0, 2])
        assert b.from_peer("c") == [] and a.t.stats()["reconnects"] == 1
        await net.close()

    run(main())


def test_client_requests_are_answered_and_a_waiting_one_holds_up_no_other(make_net: Any) -> None:
    release = asyncio.Event()

    def handler(body: bytes, respond: Callable[[bytes], None]) -> Awaitable[None] | None:
        req = decode_payload(body)
        if req["op"] != "wait":
            respond(encode_payload({"id": req["id"]}))
            return None

        async def later() -> None:
            await release.wait()
            respond(encode_payload({"id": req["id"]}))

        return later()

    async def main() -> None:
        net = await make_net(["a"], handler=handler)
        client = await net.client("a")
        client.send(encode_payload({"op": "wait", "id": 1}))
        client.send(encode_payload({"op": "get", "id": 2}))
        assert decode_payload(await client.recv()) == {"id": 2}
        release.set()
        assert decode_payload(await client.recv()) == {"id": 1}
        stats = net.nodes["a"].t.stats()
        assert stats["client_requests"] == 2 and stats["client_responses"] == 2
        client.close()
        await net.close()

    run(main())


def test_a_node_without_a_client_handler_refuses_clients(make_net: Any) -> None:
    async def main() -> None:
        net = await make_net(["a"])
        with pytest.raises(ConnectionRefusedError):
            await net.client("a")
        await net.close()

    run(main())
