"""The handshake of a watch or push stream's own socket: a cluster that refuses our secret ends
the stream with the typed ``AuthenticationFailed`` (the watch delivers it, a push stream reports
it to ``on_error``), not an untyped ``AuthError`` that killed the push thread unhandled (seen
when a port was reused by another project's cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import SimpleNamespace

import pytest

from coordination.client.watch import stream_handshake
from raft_node.client import AuthenticationFailed, RaftError
from raft_node.transport.auth import AuthError, server_handshake


def _refusing_server(secret: bytes) -> tuple[tuple[str, int], threading.Event]:
    ready, stop = threading.Event(), threading.Event()
    address: list[tuple[str, int]] = []

    async def serve() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(AuthError, ConnectionError, TimeoutError):
                await server_handshake(reader, writer, secret, server_id="n1", peers=())
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        address.append(server.sockets[0].getsockname()[:2])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    threading.Thread(target=asyncio.run, args=(serve(),), daemon=True).start()
    ready.wait(5)
    return address[0], stop


def test_a_refused_secret_ends_a_stream_with_the_typed_error() -> None:
    addr, stop = _refusing_server(b"the cluster's secret")
    coord = SimpleNamespace(ssl=None, secret=b"another secret", name="coord-1")
    try:
        sock = socket.create_connection(addr, timeout=2.0)
        with pytest.raises(AuthenticationFailed) as info:
            stream_handshake(sock, coord, addr, "push")
        assert isinstance(info.value, RaftError) and sock.fileno() == -1  # closed
    finally:
        stop.set()
