"""TCP connections of the node transport: accepting, the handshake, reading frames, limits,
serving peers and clients, and dialling a peer (used by ``raft_node.transport.tcp``).

This module owns sockets and frames, not routing: what an authenticated peer sends goes to
``on_message``, what a client sends to ``on_client_frame``; which peer gets which message, and
what happens when one is down, is ``raft_node.transport.peers``. ``TcpTransport``'s docstring
describes the behaviour of both together.

Every line these modules log goes to the logger ``raft_node.transport.tcp`` (``event=NAME
k=v ...``, the fields also in ``extra``), one name for the whole TCP transport, which operators
filter on. Counters go to the ``stats`` dict the transport shares between its parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from raft_node.core.messages import Message, NodeId
from raft_node.transport.auth import (
    ROLE_PEER,
    AuthError,
    Identity,
    client_handshake,
    server_handshake,
)
from raft_node.transport.codec import CodecError, decode_message
from raft_node.transport.frame_channel import FrameChannel, FrameHandler
from raft_node.transport.protocol import ClientHandler, call_client_handler
from raft_node.transport.snapstream import (
    CHUNK_OVERHEAD,
    IncomingSnapshot,
    SnapshotStreamError,
    ack_frame,
)
from raft_node.transport.wire import FrameError, FrameKind, encode_frame

__all__ = ["Address", "InboundServer", "ProtocolViolation", "dial", "tls_version"]

log = logging.getLogger("raft_node.transport.tcp")

Address = tuple[str, int]

READ_CHUNK = 256 * 1024
FRAME_OVERHEAD = 6  # bytes of frame header (length, version, kind) counted in bytes_in/out
_RAFT = int(FrameKind.RAFT)
_CLIENT_REQUEST = int(FrameKind.CLIENT_REQUEST)
_SNAP_BEGIN = int(FrameKind.SNAP_BEGIN)
_SNAP_CHUNK = int(FrameKind.SNAP_CHUNK)
_SNAP_END = int(FrameKind.SNAP_END)


class ProtocolViolation(Exception):
    """An authenticated connection sent something it must not (closes that connection)."""


def event(level: int, name: str, **fields: Any) -> None:
    """One structured log line: ``event=NAME k=v ...``, fields also passed as ``extra``."""
    if log.isEnabledFor(level):
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        log.log(level, "event=%s %s", name, text, extra={"event": name, **fields})


def reason(e: BaseException) -> str:
    return repr(f"{type(e).__name__}: {e}")


def fmt_addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def tls_version(writer: asyncio.StreamWriter) -> str:
    """The connection's TLS version (``TLSv1.3``), or ``none`` for plain TCP: logged with each
    peer connection, so an operator can see that peer traffic is encrypted."""
    ssl_object = writer.get_extra_info("ssl_object")
    return (ssl_object.version() or "unknown") if ssl_object is not None else "none"


def _role(who: Identity | None) -> str:
    return "unauthenticated" if who is None else f"{who.role}:{who.id}"


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


async def dial(
    addr: Address,
    secret: bytes,
    *,
    my_id: NodeId,
    peer_id: NodeId,
    ssl_client: ssl.SSLContext | None,
    connect_timeout: float,
    handshake_timeout: float,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open an authenticated peer connection to ``peer_id`` at ``addr`` (TCP, TLS if
    ``ssl_client``, then the HMAC handshake); raises on any failure, leaving nothing open."""
    host, port = addr
    async with asyncio.timeout(connect_timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_client, limit=READ_CHUNK)
    try:
        _tune_socket(writer)
        await client_handshake(
            reader,
            writer,
            secret,
            my_id=my_id,
            role=ROLE_PEER,
            expect_server_id=peer_id,
            timeout=handshake_timeout,
        )
    except BaseException:
        writer.close()
        raise
    return reader, writer


class InboundServer:
    """The listening socket and every connection accepted on it.

    Each connection first passes the mutual HMAC handshake (at most ``max_pending_handshakes``
    at once; more are closed at once). A peer (its id in ``peer_ids``, a live view the transport
    keeps current) may then send only ``RAFT`` frames whose message is from that peer and to this
    node, and snapshot streams (``raft_node.transport.snapstream``; assembled in temporary files
    in ``snapshot_dir``, answered with ``SNAP_ACK``), each frame up to ``max_peer_frame_bytes``.
    A client (accepted only with an ``on_client_frame``) sends ``CLIENT_REQUEST`` frames up to
    ``max_frame_bytes``. Anything else closes that connection with one log line."""

    def __init__(
        self,
        node_id: NodeId,
        secret: bytes,
        stats: dict[str, int],
        on_message: Callable[[Message], None],
        on_client_frame: ClientHandler | None,
        peer_ids: Collection[NodeId],
        *,
        ssl_server: ssl.SSLContext | None,
        max_frame_bytes: int,
        max_peer_frame_bytes: int,
        snapshot_dir: Path | None,
        handshake_timeout: float,
        frame_timeout: float,
        idle_timeout: float | None,
        max_client_inflight: int,
        max_client_out_bytes: int,
        max_pending_handshakes: int,
        on_peer_batch: Callable[[], None] | None = None,
        on_peer_closed: Callable[[NodeId], None] | None = None,
    ) -> None:
        self.node_id = node_id
        # Called after the messages of one socket read from a peer were delivered (see
        # ``TcpTransport``'s ``on_peer_batch``).
        self.on_peer_batch = on_peer_batch
        # Called when an authenticated peer's process closed its connection: EOF or reset,
        # not a close of ours (``TcpTransport``'s ``on_peer_closed``).
        self.on_peer_closed = on_peer_closed
        self.on_message = on_message
        self._secret = secret
        self._stats = stats
        self._on_client_frame = on_client_frame
        self._peer_ids = peer_ids
        self.ssl_server = ssl_server  # read per connection: ``TcpTransport.set_tls`` swaps it
        self.max_frame_bytes = max_frame_bytes
        self.max_peer_frame_bytes = max_peer_frame_bytes
        self.snapshot_dir = snapshot_dir
        self.handshake_timeout = handshake_timeout
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.max_client_inflight = max_client_inflight
        self.max_client_out_bytes = max_client_out_bytes
        self.max_pending_handshakes = max_pending_handshakes
        self.handshaking = 0
        # Connections holding responses not yet written (``flush_responses``).
        self._unflushed: dict[Callable[[], None], None] = {}
        self._flush_scheduled = False
        self._server: asyncio.Server | None = None
        self._conn_tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> Address:
        """Listen on ``host:port`` (port 0 picks a free one); answers the bound address."""
        # TLS is started per connection in ``_authenticate``, not by the server: so a failed
        # TLS handshake is ours to log (asyncio drops it silently outside debug mode), it counts
        # against ``max_pending_handshakes``, and each connection uses the context current when
        # it arrives (certificates reloaded on SIGHUP apply without a restart).
        self._server = await asyncio.start_server(
            self._handle_conn, host, port, limit=READ_CHUNK, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        return (sockname[0], sockname[1])

    def flush_responses(self) -> None:
        """Write every connection's waiting responses now, one write per connection. The node
        calls it right after it handled a ``Ready``, so the answers of a batch it just applied
        leave in the same loop iteration; responses made elsewhere (a read, a waiter's timeout)
        are flushed by the callback scheduled with the first of them."""
        self._flush_scheduled = False
        if self._unflushed:
            flushes, self._unflushed = self._unflushed, {}
            for flush in flushes:
                flush()

    def close(self) -> list[asyncio.Task[Any]]:
        """Stop accepting and cancel every connection's task; answers those tasks (to await)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._conn_tasks)
        for t in tasks:
            t.cancel()
        return tasks

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- one connection ---------------------------------------------------------------------------

    async def _handle_conn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        remote = fmt_addr(writer.get_extra_info("peername"))
        who: Identity | None = None
        try:
            _tune_socket(writer)
            who = await self._authenticate(reader, writer, remote)
            if who is None:
                return
            if who.is_peer:
                await self._serve_peer(who, reader, writer)
                self._peer_closed(who.id)
            else:
                await self._serve_client(reader, writer)
            level = logging.INFO if who.is_peer else logging.DEBUG
            event(level, "conn_closed", remote=remote, role=_role(who), reason="'eof'")
        except asyncio.CancelledError:
            pass  # stop(): nothing to log
        except Exception as e:
            if isinstance(e, ConnectionError) and who is not None and who.is_peer:
                self._peer_closed(who.id)  # reset by the peer's side
            if isinstance(
                e, (FrameError, CodecError, ProtocolViolation, SnapshotStreamError, TimeoutError)
            ):
                self._stats["protocol_errors"] += 1
            event(logging.WARNING, "conn_closed", remote=remote, role=_role(who), reason=reason(e))
        finally:
            writer.close()
            if task is not None:
                self._conn_tasks.discard(task)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str
    ) -> Identity | None:
        """The handshake; ``None`` (logged, counted) if it fails or too many are pending."""
        if self.handshaking >= self.max_pending_handshakes:
            self._stats["handshake_failures"] += 1
            event(logging.WARNING, "handshake_refused", remote=remote, reason="'too many'")
            return None
        self.handshaking += 1
        try:
            # ``start_tls`` must be the first await of the connection's task: the client's TLS
            # hello may not reach the plain stream's buffer (asyncio feeds a new connection's
            # data only after that task's first step, and ``start_tls`` pauses reading at once).
            context = self.ssl_server
            if context is not None:
                try:
                    await writer.start_tls(context, ssl_handshake_timeout=self.handshake_timeout)
                except ssl.SSLError as e:
                    self._stats["tls_failures"] += 1
                    event(logging.WARNING, "tls_failed", remote=remote, reason=reason(e))
                    return None
            return await server_handshake(
                reader,
                writer,
                self._secret,
                server_id=self.node_id,
                peers=self._peer_ids,
                allow_clients=self._on_client_frame is not None,
                timeout=self.handshake_timeout,
            )
        except AuthError as e:
            self._stats["auth_failures"] += 1
            event(logging.WARNING, "auth_failed", remote=remote, reason=reason(e))
        except (TimeoutError, OSError, EOFError) as e:
            self._stats["handshake_failures"] += 1
            event(logging.WARNING, "handshake_failed", remote=remote, reason=reason(e))
        finally:
            self.handshaking -= 1
        return None

    def _channel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_frame: FrameHandler,
        limit: int,
        on_batch: Callable[[], None] | None = None,
    ) -> FrameChannel:
        """Read the authenticated connection's frames by callback from now on."""
        return FrameChannel.attach(
            reader,
            writer,
            on_frame,
            max_frame_bytes=limit,
            frame_timeout=self.frame_timeout,
            idle_timeout=self.idle_timeout,
            on_batch=on_batch,
        )

    async def _serve_peer(
        self, who: Identity, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Deliver the peer's messages as they are read (``on_peer_batch`` after each read);
        assemble its snapshot streams, the last chunk's read of the whole image off the loop."""
        me, peer = self.node_id, who.id
        stats = self._stats
        incoming: IncomingSnapshot | None = None

        async def deliver_snapshot(done: IncomingSnapshot) -> None:
            nonlocal incoming
            # One read of the whole image, off the event loop: the node restores its state
            # machine from bytes, so it needs them in memory anyway.
            m = await asyncio.to_thread(done.take)
            incoming = None
            stats["snapshots_in"] += 1
            self._deliver(m, peer)
            if not writer.transport.is_closing():
                writer.write(ack_frame(done.stream_id, True))

        def on_frame(kind: int, body: bytes) -> Awaitable[None] | None:
            nonlocal incoming
            stats["frames_in"] += 1
            stats["bytes_in"] += len(body) + FRAME_OVERHEAD
            if kind == _RAFT:
                m = decode_message(body)
                if m.frm != peer or m.to != me:
                    raise ProtocolViolation(f"message {m.frm!r}->{m.to!r} from {peer!r}")
                self._deliver(m, peer)
            elif kind == _SNAP_CHUNK and incoming is not None:
                incoming.add_chunk(body)
            elif kind == _SNAP_BEGIN and incoming is None:
                incoming = IncomingSnapshot(
                    body,
                    me=me,
                    peer=peer,
                    directory=self.snapshot_dir,
                    max_chunk_bytes=self.max_peer_frame_bytes - CHUNK_OVERHEAD,
                )
                event(
                    logging.INFO,
                    "snapshot_receive",
                    peer=peer,
                    stream=incoming.stream_id,
                    bytes=incoming.total,
                    index=incoming.index,
                )
            elif kind == _SNAP_END and incoming is not None:
                incoming.finish(body)
                return deliver_snapshot(incoming)
            else:
                raise ProtocolViolation(f"frame kind {kind} on a peer connection")
            return None

        channel = self._channel(
            reader, writer, on_frame, self.max_peer_frame_bytes, self.on_peer_batch
        )
        try:
            await channel.done
        except SnapshotStreamError as e:
            stats["snapshot_failures"] += 1
            if e.stream_id is not None and not writer.transport.is_closing():
                writer.write(ack_frame(e.stream_id, False, str(e)))
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await writer.drain()  # let the verdict out before the close
            raise
        finally:
            if incoming is not None:
                incoming.abandon()

    def _peer_closed(self, peer: NodeId) -> None:
        if self.on_peer_closed is None:
            return
        try:
            self.on_peer_closed(peer)
        except Exception:
            self._stats["callback_errors"] += 1
            log.exception("event=callback_error callback=on_peer_closed peer=%s", peer)

    def _deliver(self, m: Message, peer: NodeId) -> None:
        try:
            self.on_message(m)
        except Exception:
            self._stats["callback_errors"] += 1
            log.exception("event=callback_error callback=on_message peer=%s", peer)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Requests in, responses out. All responses produced in one loop iteration leave in one
        write; awaitable handlers run as tasks (at most ``max_client_inflight``; reading pauses
        beyond that), cancelled when the connection closes. A client that does not read its
        responses (more than ``max_client_out_bytes`` buffered) is disconnected."""
        handler = self._on_client_frame
        assert handler is not None  # the handshake refuses clients otherwise
        stats = self._stats
        transport = writer.transport
        closed = False
        slow: list[bool] = []
        max_frame = self.max_frame_bytes
        max_out = self.max_client_out_bytes

        out: list[bytes] = []
        loop = asyncio.get_running_loop()

        def flush() -> None:
            # All responses produced in one loop iteration leave in one write (one syscall).
            if closed or transport.is_closing():
                out.clear()
                return
            data = b"".join(out)
            out.clear()
            writer.write(data)
            if transport.get_write_buffer_size() > max_out:
                slow.append(True)
                transport.abort()

        def respond(body: bytes) -> None:
            if closed or transport.is_closing():
                return
            try:
                frame = encode_frame(FrameKind.CLIENT_RESPONSE, body, max_frame)
            except FrameError as e:
                event(logging.ERROR, "response_too_large", size=len(body), reason=reason(e))
                return
            out.append(frame)
            if len(out) == 1:
                self._unflushed[flush] = None
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    loop.call_soon(self.flush_responses)
            stats["client_responses"] += 1
            stats["frames_out"] += 1
            stats["bytes_out"] += len(frame)

        max_inflight = self.max_client_inflight
        tasks: set[asyncio.Task[None]] = set()
        slot_freed: list[asyncio.Future[None]] = []  # the reader, waiting for a free slot

        def finished(t: asyncio.Task[None]) -> None:
            tasks.discard(t)
            if slot_freed and not slot_freed[0].done():
                slot_freed[0].set_result(None)

        async def run(pending: Awaitable[None]) -> None:
            try:
                await pending
            except asyncio.CancelledError:
                raise
            except Exception:
                stats["callback_errors"] += 1
                log.exception("event=callback_error callback=on_client_frame")

        def start(pending: Awaitable[None]) -> None:
            t = loop.create_task(run(pending))
            tasks.add(t)
            t.add_done_callback(finished)

        async def start_when_free(pending: Awaitable[None]) -> None:
            while len(tasks) >= max_inflight:
                slot_freed[:] = [loop.create_future()]
                await slot_freed[0]
            slot_freed.clear()
            if closed:  # the connection ended while it waited: never run, never answered
                close = getattr(pending, "close", None)
                if close is not None:
                    close()
                return
            start(pending)

        def on_frame(kind: int, body: bytes) -> Awaitable[None] | None:
            stats["frames_in"] += 1
            stats["bytes_in"] += len(body) + FRAME_OVERHEAD
            if kind != _CLIENT_REQUEST:
                raise ProtocolViolation(f"frame kind {kind} on a client connection")
            pending = call_client_handler(handler, body, respond, stats, log)
            if pending is None:
                return None  # answered now, or will be via respond() later (or it raised)
            if len(tasks) < max_inflight:
                start(pending)
                return None
            return start_when_free(pending)  # reading pauses until a handler finishes

        try:
            await self._channel(reader, writer, on_frame, max_frame).done
        finally:
            closed = True
            for t in list(tasks):
                t.cancel()
        if slow:
            raise ProtocolViolation(f"client does not read its responses (> {max_out} bytes)")
