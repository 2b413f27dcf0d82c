"""Handshake and TcpTransport over real loopback sockets (free ports, no sleeps as assertions)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from raft_node.core.messages import Entry, Message, MessageType, Snapshot, SnapshotMeta
from raft_node.transport.auth import (
    ROLE_PEER,
    AuthError,
    client_handshake,
    client_handshake_sync,
    server_mac,
)
from raft_node.transport.codec import decode_payload, encode_message, encode_payload
from raft_node.transport.tcp import TcpTransport
from raft_node.transport.wire import (
    FrameKind,
    encode_frame,
    frame_header,
    read_frame,
    read_frame_sync,
    send_frame_sync,
)

pytestmark = pytest.mark.timeout(30)

SECRET = b"cluster-secret-0123456789abcdef"
LOOPBACK = ("127.0.0.1", 0)


def run(coro: Awaitable[Any], timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def app(i: int, frm: str = "a", to: str = "b") -> Message:
    return Message(
        MessageType.APP, to, frm, term=1, index=i, entries=(Entry(1, i + 1, b"x" * (i % 50)),)
    )


class Node:
    """A TcpTransport plus everything it reported."""

    def __init__(self, node_id: str, **kw: Any) -> None:
        self.got: list[Message] = []
        self.unreachable: list[str] = []
        self.snap_status: list[tuple[str, bool]] = []
        self.closed: list[str] = []
        kw.setdefault("listen", LOOPBACK)
        self.t = TcpTransport(
            node_id,
            kw.pop("peers", {}),
            kw.pop("secret", SECRET),
            self.got.append,
            on_unreachable=self.unreachable.append,
            on_snapshot_status=lambda p, ok: self.snap_status.append((p, ok)),
            on_peer_closed=self.closed.append,
            **kw,
        )

    @property
    def addr(self) -> tuple[str, int]:
        assert self.t.address is not None
        return self.t.address


async def linked(**kw: Any) -> tuple[Node, Node]:
    a, b = Node("a", **kw), Node("b", **kw)
    await a.t.start()
    await b.t.start()
    a.t.add_peer("b", b.addr)
    b.t.add_peer("a", a.addr)
    return a, b


async def open_client(
    t: TcpTransport, secret: bytes = SECRET, role: str = "client", my_id: str = "c1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert t.address is not None
    reader, writer = await asyncio.open_connection(*t.address)
    await client_handshake(reader, writer, secret, my_id=my_id, role=role)
    return reader, writer


async def assert_closed(reader: asyncio.StreamReader, timeout: float = 3.0) -> None:
    """The server closes the connection (possibly after sending a few frames)."""
    async with asyncio.timeout(timeout):
        while await reader.read(65536):
            pass


async def echo(body: bytes, respond: Callable[[bytes], None]) -> None:
    respond(body.upper())


# -- Transport between nodes -----------------------------------------------------------------------


def test_two_transports_exchange_many_messages() -> None:
    async def main() -> None:
        a, b = await linked()
        n = 3000
        for start in range(0, n, 100):
            a.t.send(app(i, "a", "b") for i in range(start, start + 100))
            b.t.send(app(i, "b", "a") for i in range(start, start + 100))
            await asyncio.sleep(0)
        await until(lambda: len(a.got) == n and len(b.got) == n)
        assert b.got == [app(i, "a", "b") for i in range(n)]
        assert a.got == [app(i, "b", "a") for i in range(n)]
        sa, sb = a.t.stats(), b.t.stats()
        assert sa["frames_out"] == n and sb["frames_in"] == n
        assert sa["bytes_out"] == sb["bytes_in"] > 0
        assert sa["drops"] == sa["auth_failures"] == sa["protocol_errors"] == 0
        assert sa["peers"]["b"]["connected"]
        await a.t.stop()
        await b.t.stop()

    run(main())


def test_peer_restart_reconnects_and_delivery_resumes() -> None:
    async def main() -> None:
        a, b = await linked(backoff_max=0.2)
        a.t.send([app(0)])
        await until(lambda: len(b.got) == 1)
        port = b.addr[1]
        await b.t.stop()
        await until(lambda: not a.t.stats()["peers"]["b"]["connected"])
        a.t.send([app(1), app(2)])  # queued while b is down
        await until(lambda: a.t.stats()["connect_failures"] >= 1 and "b" in a.unreachable)
        b2 = Node("b", listen=("127.0.0.1", port), peers={"a": a.addr})
        await b2.t.start()
        a.t.send([app(3)])
        await until(lambda: len(b2.got) == 3)
        assert b2.got == [app(1), app(2), app(3)]
        assert a.t.stats()["reconnects"] == 1
        await a.t.stop()
        await b2.t.stop()

    run(main())


def test_a_peer_that_closes_its_connection_is_reported_and_our_own_close_is_not() -> None:
    """The node elects a new leader early on this report (``Raft.suspect_leader``), so it must
    come when the peer's process closes its side, and not when we close ours."""

    async def main() -> None:
        a, b = await linked()
        a.t.send([app(0)])
        b.t.send([app(0, frm="b", to="a")])
        await until(lambda: len(b.got) == 1 and len(a.got) == 1)
        await a.t.stop()  # as a crash or a restart closes a's sockets
        await until(lambda: b.closed == ["a"])
        await b.t.stop()
        assert a.closed == []  # a stopped first: b's close was not a's to report

    run(main())


def test_a_peer_that_only_redials_us_is_not_reported_closed() -> None:
    """A TLS reload makes a node close and re-dial its connections to its peers; it is alive,
    and the connection it accepted from each peer stays open, so no peer reports it closed
    (its followers would otherwise elect a new leader on every certificate rotation)."""

    async def main() -> None:
        a, b = await linked()
        a.t.send([app(0)])
        b.t.send([app(0, frm="b", to="a")])
        await until(lambda: len(b.got) == 1 and len(a.got) == 1)
        a.t.set_tls(None, None)  # a closes its connection to b, to re-dial it
        await asyncio.sleep(0.3)  # b reads the EOF (and would report it within this)
        a.t.send([app(1)])  # the re-dial (connections open when something is queued)
        await until(lambda: len(b.got) == 2)
        assert b.closed == [] and a.closed == []
        await a.t.stop()
        await until(lambda: b.closed == ["a"])  # a real close still is
        await b.t.stop()

    run(main())


def test_send_queue_bound_drops_oldest() -> None:
    async def main() -> None:
        with socket.socket() as s:  # a port with nothing listening on it
            s.bind(LOOPBACK)
            port = s.getsockname()[1]
        a = Node("a", peers={"b": ("127.0.0.1", port)}, max_queue=10, backoff_max=0.1)
        await a.t.start()
        snap = Message(MessageType.SNAP, "b", "a", snapshot=Snapshot(SnapshotMeta(1, 1), b"s"))
        a.t.send([snap, *(app(i) for i in range(24))])
        st = a.t.stats()
        assert st["drops"] == 15 and st["peers"]["b"]["queued"] == 10
        await until(lambda: ("b", False) in a.snap_status and "b" in a.unreachable)
        b = Node("b", listen=("127.0.0.1", port), peers={"a": a.addr})
        await b.t.start()
        await until(lambda: len(b.got) == 10)
        assert b.got == [app(i) for i in range(14, 24)]
        await a.t.stop()
        await b.t.stop()

    run(main())


def test_snapshot_status_and_oversized_message_dropped() -> None:
    """A snapshot bigger than a frame is streamed (and other messages to that peer go out between
    its chunks); an ordinary message bigger than a frame is dropped and counted."""

    async def main() -> None:
        a, b = await linked(max_frame_bytes=4096)
        small = Message(MessageType.SNAP, "b", "a", snapshot=Snapshot(SnapshotMeta(1, 1), b"s"))
        big = Message(
            MessageType.SNAP, "b", "a", snapshot=Snapshot(SnapshotMeta(2, 1), b"s" * 5000)
        )
        huge_app = Message(MessageType.APP, "b", "a", entries=(Entry(1, 1, b"e" * 5000),))
        a.t.send([small, big, huge_app, app(7)])
        await until(lambda: len(b.got) == 3 and len(a.snap_status) == 2)
        assert b.got == [small, app(7), big]
        assert a.snap_status == [("b", True), ("b", True)]
        assert a.t.stats()["oversize_drops"] == 1
        assert a.t.stats()["snapshots_out"] == b.t.stats()["snapshots_in"] == 2
        await a.t.stop()
        await b.t.stop()

    run(main())


def test_peers_may_send_frames_larger_than_clients() -> None:
    """A snapshot bigger than the client frame limit still reaches a peer."""

    async def main() -> None:
        a, b = await linked(
            max_frame_bytes=4096, max_peer_frame_bytes=1 << 20, on_client_frame=echo
        )
        big = Message(
            MessageType.SNAP, "b", "a", snapshot=Snapshot(SnapshotMeta(2, 1), b"s" * 200_000)
        )
        a.t.send([big])
        await until(lambda: len(b.got) == 1 and len(a.snap_status) == 1)
        assert b.got == [big] and a.snap_status == [("b", True)]
        reader, writer = await open_client(b.t)  # clients keep the small limit
        writer.write(frame_header(FrameKind.CLIENT_REQUEST, 5000) + b"x" * 5000)
        await assert_closed(reader)
        await a.t.stop()
        await b.t.stop()

    run(main())


def test_on_message_exception_does_not_break_connection(caplog: Any) -> None:
    async def main() -> None:
        a, b = await linked()
        got = []

        def flaky(m: Message) -> None:
            if m.index == 1:
                raise RuntimeError("node bug")
            got.append(m.index)

        b.t._on_message = flaky
        a.t.send([app(0), app(1), app(2)])
        await until(lambda: got == [0, 2])
        assert b.t.stats()["callback_errors"] == 1
        await a.t.stop()
        await b.t.stop()

    with caplog.at_level(logging.ERROR, "raft_node.transport.tcp"):
        run(main())


def test_spoofed_sender_closes_that_connection() -> None:
    async def main() -> None:
        a, b = await linked()
        b.t.add_peer("c", ("127.0.0.1", 1))
        reader, writer = await open_client(b.t, role=ROLE_PEER, my_id="c")
        writer.write(encode_frame(FrameKind.RAFT, encode_message(app(0, frm="a", to="b"))))
        await assert_closed(reader)
        assert b.got == [] and b.t.stats()["protocol_errors"] == 1
        a.t.send([app(1)])  # the real peer is unaffected
        await until(lambda: b.got == [app(1)])
        writer.close()
        await a.t.stop()
        await b.t.stop()

    run(main())


# -- handshake -------------------------------------------------------------------------------------


def test_client_auth_and_requests_sync_and_async() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def handler(body: bytes, respond: Callable[[bytes], None]) -> None:
            req = decode_payload(body)
            if req["op"] == "wait":
                await release.wait()
            respond(encode_payload({"id": req["id"], "ok": True}))

        s = Node("n1", on_client_frame=handler)
        await s.t.start()

        def sync_client() -> list[int]:
            with socket.create_connection(s.addr, timeout=5) as sock:
                assert client_handshake_sync(sock, SECRET, my_id="sync") == "n1"
                send_frame_sync(
                    sock, FrameKind.CLIENT_REQUEST, encode_payload({"op": "wait", "id": 1})
                )
                send_frame_sync(
                    sock, FrameKind.CLIENT_REQUEST, encode_payload({"op": "get", "id": 2})
                )
                first = decode_payload(read_frame_sync(sock)[1])["id"]
                release_from_thread()
                second = decode_payload(read_frame_sync(sock)[1])["id"]
                return [first, second]

        loop = asyncio.get_running_loop()

        def release_from_thread() -> None:
            loop.call_soon_threadsafe(release.set)

        # A blocked request does not hold up the next one on the same connection.
        assert await asyncio.to_thread(sync_client) == [2, 1]
        reader, writer = await open_client(s.t)
        writer.write(encode_frame(FrameKind.CLIENT_REQUEST, encode_payload({"op": "x", "id": 3})))
        kind, body = await read_frame(reader)
        assert kind == FrameKind.CLIENT_RESPONSE and decode_payload(body) == {"id": 3, "ok": True}
        assert s.t.stats()["client_requests"] == 3
        writer.close()
        await s.t.stop()

    run(main())


def test_wrong_secret_rejected_by_server() -> None:
    async def main() -> None:
        s = Node("n1", on_client_frame=echo)
        await s.t.start()
        with pytest.raises(AuthError, match="server refused"):
            await open_client(s.t, secret=b"wrong")
        with (
            socket.create_connection(s.addr, timeout=5) as sock,
            pytest.raises(AuthError, match="server refused"),
        ):
            await asyncio.to_thread(client_handshake_sync, sock, b"wrong", my_id="x")
        with pytest.raises(AuthError, match="not in the cluster"):
            await open_client(s.t, role=ROLE_PEER, my_id="intruder")
        assert s.t.stats()["auth_failures"] == 3
        await s.t.stop()

    run(main())


def test_wrong_secret_on_server_detected_by_client() -> None:
    """A server that does not know the secret cannot fake AUTH_OK (its MAC does not verify)."""

    async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonce = b"n" * 32
        writer.write(encode_frame(FrameKind.HELLO, nonce))
        _, body = await read_frame(reader)
        client_nonce = decode_payload(body)[2]
        mac = server_mac(b"not-the-secret", client_nonce, nonce, "b")
        writer.write(encode_frame(FrameKind.AUTH_OK, encode_payload(["b", mac])))
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(rogue, *LOOPBACK)
        addr = server.sockets[0].getsockname()[:2]
        reader, writer = await asyncio.open_connection(*addr)
        with pytest.raises(AuthError, match="failed to prove"):
            await client_handshake(reader, writer, SECRET, my_id="c1")
        writer.close()
        a = Node("a", peers={"b": addr})
        await a.t.start()
        a.t.send([app(0)])
        await until(lambda: a.t.stats()["auth_failures"] >= 1 and "b" in a.unreachable)
        await a.t.stop()
        server.close()
        await server.wait_closed()

    run(main())


def test_empty_secret_refused() -> None:
    with pytest.raises(AuthError, match="empty"):
        TcpTransport("a", {}, b"", lambda m: None, listen=LOOPBACK)
    a, b = socket.socketpair()
    with a, b, pytest.raises(AuthError, match="empty"):
        client_handshake_sync(a, b"", my_id="c")


def test_garbage_instead_of_handshake(caplog: Any) -> None:
    async def main() -> None:
        s = Node("n1", on_client_frame=echo)
        await s.t.start()
        reader, writer = await asyncio.open_connection(*s.addr)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await assert_closed(reader)
        writer.close()
        assert s.t.stats()["auth_failures"] == 1
        r2, w2 = await open_client(s.t)  # still serving
        w2.write(encode_frame(FrameKind.CLIENT_REQUEST, b"ok"))
        assert await read_frame(r2) == (FrameKind.CLIENT_RESPONSE, b"OK")
        w2.close()
        await s.t.stop()

    with caplog.at_level(logging.INFO, "raft_node.transport.tcp"):
        run(main())
    lines = [r for r in caplog.records if getattr(r, "event", None) == "auth_failed"]
    assert len(lines) == 1 and "not a handshake" in lines[0].getMessage()


def test_handshake_timeout_silent_client() -> None:
    async def main() -> None:
        s = Node("n1", on_client_frame=echo, handshake_timeout=0.3)
        await s.t.start()
        reader, writer = await asyncio.open_connection(*s.addr)
        kind, _ = await read_frame(reader)
        assert kind == FrameKind.HELLO
        t0 = asyncio.get_running_loop().time()
        await assert_closed(reader)  # we say nothing
        assert asyncio.get_running_loop().time() - t0 < 2.0
        assert s.t.stats()["handshake_failures"] == 1
        writer.close()
        await s.t.stop()

    run(main())


def test_oversized_frame_closes_connection_and_server_keeps_serving(caplog: Any) -> None:
    async def main() -> None:
        s = Node("n1", on_client_frame=echo, max_frame_bytes=64 * 1024)
        await s.t.start()
        reader, writer = await open_client(s.t)
        writer.write(struct.pack(">IBB", 64 * 1024 + 1, 1, FrameKind.CLIENT_REQUEST))
        await assert_closed(reader)
        writer.close()
        assert s.t.stats()["protocol_errors"] == 1
        r2, w2 = await open_client(s.t)
        w2.write(encode_frame(FrameKind.CLIENT_REQUEST, b"x" * 60_000))
        assert await read_frame(r2) == (FrameKind.CLIENT_RESPONSE, b"X" * 60_000)
        w2.close()
        await s.t.stop()

    with caplog.at_level(logging.WARNING, "raft_node.transport.tcp"):
        run(main())
    lines = [r for r in caplog.records if getattr(r, "event", None) == "conn_closed"]
    assert len(lines) == 1 and "exceeds" in lines[0].getMessage()


def test_wrong_frame_kind_and_bad_codec_close_connection() -> None:
    async def main() -> None:
        a, b = await linked()
        for frame in (
            encode_frame(FrameKind.CLIENT_REQUEST, b"x"),
            encode_frame(FrameKind.RAFT, b"\xc1garbage"),
        ):
            reader, writer = await open_client(b.t, role=ROLE_PEER, my_id="a")
            writer.write(frame)
            await assert_closed(reader)
            writer.close()
        assert b.t.stats()["protocol_errors"] == 2
        await a.t.stop()
        await b.t.stop()

    run(main())


# -- TLS -------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=raftsync", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        a, b = await linked(ssl_server=server_ctx, ssl_client=client_ctx)
        a.t.send(app(i) for i in range(50))
        await until(lambda: len(b.got) == 50)
        assert b.got == [app(i) for i in range(50)]
        await a.t.stop()
        await b.t.stop()

    run(main())


def test_pending_handshakes_are_capped() -> None:
    async def main() -> None:
        s = Node("n1", on_client_frame=echo, max_pending_handshakes=2, handshake_timeout=5.0)
        await s.t.start()
        silent = [await asyncio.open_connection(*s.addr) for _ in range(2)]
        for r, _ in silent:
            assert (await read_frame(r))[0] == FrameKind.HELLO
        r3, w3 = await asyncio.open_connection(*s.addr)
        await assert_closed(r3, timeout=1.0)  # refused at once, not after 5 s
        for _, w in [*silent, (r3, w3)]:
            w.close()
        await until(lambda: s.t._handshaking == 0)
        _, w4 = await open_client(s.t)  # slots free again
        w4.close()
        await s.t.stop()

    run(main())


def test_stalled_frame_and_idle_connection_time_out() -> None:
    async def main() -> None:
        s = Node("n1", on_client_frame=echo, frame_timeout=0.2, idle_timeout=0.4)
        await s.t.start()
        loop = asyncio.get_running_loop()
        reader, writer = await open_client(s.t)
        writer.write(encode_frame(FrameKind.CLIENT_REQUEST, b"x" * 1000)[:500])  # then stall
        t0 = loop.time()
        await assert_closed(reader)
        stalled = loop.time() - t0
        reader, writer2 = await open_client(s.t)
        t0 = loop.time()
        await assert_closed(reader)  # says nothing at all after the handshake
        idle = loop.time() - t0
        assert 0.15 < stalled < 2.0 and 0.35 < idle < 2.0
        assert s.t.stats()["protocol_errors"] == 2
        writer.close()
        writer2.close()
        await s.t.stop()

    run(main())
