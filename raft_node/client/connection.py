"""``AsyncConnection``: one authenticated connection to a node, with pipelined requests.

Used by ``AsyncRaftClient`` and by a node forwarding proposals to its leader; many requests may
be in flight at once, each answered by ``req_id`` in whatever order the node answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import ssl as ssl_module
from collections.abc import Sequence
from typing import Any

from raft_node.client.errors import AuthenticationFailed, tls_refusal
from raft_node.client.policy import Address
from raft_node.transport import client_protocol as p
from raft_node.transport.auth import AuthError, client_handshake
from raft_node.transport.codec import decode_payload, encode_payload
from raft_node.transport.frame_channel import FrameChannel
from raft_node.transport.wire import MAX_FRAME_BYTES, FrameKind, encode_frame


class NotSent(ConnectionError):
    """The connection was closed before the request was queued: it never left this process
    (so a write surely was not applied by this attempt)."""


class AsyncConnection:
    """One authenticated connection with pipelined requests matched by ``req_id``."""

    def __init__(
        self,
        addr: Address,
        secret: bytes,
        name: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.addr, self._secret, self._name = addr, secret, name
        self._ssl, self._max = ssl, max_frame_bytes
        self._ids = itertools.count(1)
        self._inflight: dict[int, asyncio.Future[p.Response]] = {}
        self._deadlines: dict[int, float] = {}  # req_id -> loop time its answer is due by
        self._sweep: asyncio.TimerHandle | None = None  # at the earliest of them
        self._writer: asyncio.StreamWriter | None = None
        self._out: list[bytes] = []
        self.closed = False

    async def open(self, timeout: float) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*self.addr, ssl=self._ssl), timeout
            )
        except ssl_module.SSLError as exc:  # the node's certificate refused, or no TLS there
            refused = tls_refusal(exc, self.addr)
            if refused is not None:
                raise refused from exc
            raise
        try:
            await client_handshake(reader, writer, self._secret, my_id=self._name, timeout=timeout)
        except AuthError as exc:
            writer.close()
            raise AuthenticationFailed(str(exc)) from exc
        except BaseException as exc:
            writer.close()
            refused = tls_refusal(exc, self.addr)  # ours refused: an alert on the first read
            if refused is not None:
                raise refused from exc
            raise
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = writer
        # Responses are answered from the transport's read callback (``FrameChannel``): one
        # socket read yields every response that arrived (a node answers a batch of pipelined
        # requests in one write), and each waiting request wakes directly, with no reader task
        # woken in between.
        channel = FrameChannel.attach(reader, writer, self._on_frame, max_frame_bytes=self._max)
        channel.done.add_done_callback(self._channel_ended)

    def _on_frame(self, kind: int, body: bytes) -> None:
        if kind != FrameKind.CLIENT_RESPONSE:
            raise ConnectionError(f"unexpected frame kind {kind}")
        resp = p.parse_response(decode_payload(body))
        fut = self._inflight.pop(resp.req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(resp)

    def _channel_ended(self, done: asyncio.Future[None]) -> None:
        exc = None if done.cancelled() else done.exception()
        self._fail_all(exc if exc is not None else EOFError("connection closed"))

    def _fail_all(self, exc: BaseException) -> None:
        self.closed = True
        error = ConnectionError(f"connection to {self.addr} lost: {exc!r}")
        for fut in self._inflight.values():
            if not fut.done():
                fut.set_exception(error)
        self._inflight.clear()

    async def request(self, kind: int, fields: Sequence[Any], timeout: float) -> p.Response:
        if self.closed or self._writer is None:
            raise NotSent("connection closed")
        req_id = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[p.Response] = loop.create_future()
        self._inflight[req_id] = fut
        body = encode_payload([kind, req_id, *fields])
        # Requests issued in one loop iteration leave in one write; drain only under pressure.
        self._out.append(encode_frame(FrameKind.CLIENT_REQUEST, body, self._max))
        if len(self._out) == 1:
            loop.call_soon(self._flush)
        # One timer per connection, at the earliest deadline in flight, rather than one per
        # request: with 64 requests in flight, pushing, comparing (in Python) and popping a
        # timer each in the loop's heap was about a tenth of the client's CPU per write. (And
        # asyncio.timeout() before that: a context manager and a task cancellation each.)
        deadline = loop.time() + timeout
        self._deadlines[req_id] = deadline
        sweep = self._sweep
        if sweep is None or deadline < sweep.when():
            if sweep is not None:
                sweep.cancel()
            self._sweep = loop.call_at(deadline, self._expire_due)
        try:
            if self._writer.transport.get_write_buffer_size() > 1 << 18:
                await self._writer.drain()
            return await fut
        finally:
            self._inflight.pop(req_id, None)
            self._deadlines.pop(req_id, None)

    def _expire_due(self) -> None:
        """Fail the requests whose deadline has come; wait again for the earliest left."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = None
        for req_id, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[req_id]
                fut = self._inflight.get(req_id)
                if fut is not None:
                    _expire(fut)
            elif left is None or deadline < left:
                left = deadline
        if left is not None:
            self._sweep = loop.call_at(left, self._expire_due)

    def _flush(self) -> None:
        writer = self._writer
        # A closing transport: asyncio drops the write, uvloop raises; the read loop fails the
        # requests either way (they were perhaps not sent: their callers retry).
        if writer is not None and not self.closed and not writer.transport.is_closing():
            writer.write(b"".join(self._out))
        self._out.clear()

    async def close(self) -> None:
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()


def _expire(fut: asyncio.Future[p.Response]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("no answer in time"))
