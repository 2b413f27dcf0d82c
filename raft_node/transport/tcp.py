"""Moving ``Message``s between node processes: the ``Transport`` contract and its asyncio TCP
implementation (the simulator in ``raft_node.sim`` has its own in-memory network).

Contract (``Transport``)
------------------------
``send(msgs)`` queues messages and returns at once: it never awaits the network, never raises
because a peer is down, and may lose messages (Raft tolerates loss, duplication and reordering
across connections; within one connection TCP keeps order). ``start()``/``stop()`` bracket the
transport's life. Received messages are handed to the ``on_message`` callback given at
construction, on the event loop thread, one at a time. ``send`` must be called on that loop's
thread.

``TcpTransport``
----------------
Outbound: one connection per peer, opened on demand (when something is queued for it) and kept
open. Each peer has a bounded queue (``max_queue`` messages; when full the *oldest* is dropped and
counted: stale Raft messages are the least useful) and one writer task that takes everything
queued, encodes it, and writes all frames with a single ``writer.write`` + ``drain()``; while a
drain waits, new messages accumulate and go out as the next batch, so batching grows with load.
A failed connect/handshake/write closes the connection, calls ``on_unreachable(peer)`` (the node
calls ``RawNode.report_unreachable``) and retries with exponential backoff plus jitter (first
retry ~50 ms, cap ~1 s). A ``SNAP`` message that is dropped, too large or lost in a failed write
is reported via ``on_snapshot_status(peer, False)``, and one written out via
``on_snapshot_status(peer, True)`` (the node calls ``RawNode.report_snapshot``).

Inbound: ``asyncio.start_server``; every connection first passes the mutual HMAC handshake of
``raft_node.transport.auth``. A peer (``role="peer"``, id in ``peers``) may then send only
``RAFT`` frames whose message is from that peer and to this node; they go to ``on_message``. A
client (``role="client"``, accepted only if ``on_client_frame`` is set) sends ``CLIENT_REQUEST``
frames; each body is passed to the handler together with a ``respond`` function::

    def on_client_frame(body: bytes, respond: Callable[[bytes], None]) -> Awaitable[None] | None

``respond(b)`` queues one ``CLIENT_RESPONSE`` frame with body ``b`` on that connection (no await;
calls after the connection closed are ignored); a handler may call it any number of times, also
later from callbacks or other tasks. All responses queued in one loop iteration go out in one
write. A handler that answers now, or arranges to answer from a callback, returns None: no task
is created (the fast path for proposals and reads). One that needs to wait (a forwarded request,
a lock wait) returns an awaitable (e.g. it is an ``async def``), which runs in its own task so it
does not hold up the connection; at most ``max_client_inflight`` such tasks run at once per
connection (reading pauses beyond that). Correlating requests and responses is the client
protocol's job.
When the connection closes, its still-running handler tasks are cancelled. A client that does not
read its responses (more than ``max_client_out_bytes`` buffered) is disconnected.

Any unauthenticated, malformed, oversized, unexpected or timed-out frame closes *that*
connection with one log line on logger ``raft_node.transport.tcp`` (``event=... key=value``, the
same fields also in ``extra``) and is counted in ``stats()``; nothing raises into the node.
Timeouts: ``handshake_timeout`` for the handshake (connections beyond ``max_pending_handshakes``
unauthenticated ones are closed immediately), ``frame_timeout`` for a frame that has started to
arrive, optional ``idle_timeout`` between frames (SO_KEEPALIVE is also set), ``write_timeout`` for
a drain, ``connect_timeout`` for TCP (and TLS) connection setup.

TLS: pass ``ssl_server`` (used by the listener) and ``ssl_client`` (used to dial peers), e.g.::

    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain("node.pem", "node.key")
    server.verify_mode = ssl.CERT_REQUIRED            # optional: mutual TLS
    server.load_verify_locations("cluster-ca.pem")
    client = ssl.create_default_context(cafile="cluster-ca.pem")   # checks the peer's name
    client.load_cert_chain("node.pem", "node.key")     # if the server requires it

Peers are dialled by the host in ``peers``, which must match the certificate's names (or set
``client.check_hostname = False`` to trust any cert signed by the cluster CA). The HMAC handshake
still runs inside TLS. Without TLS, frames after the handshake are neither encrypted nor
integrity-protected: use it only on a trusted network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from raft_node.core.messages import Message, MessageType, NodeId
from raft_node.transport.auth import (
    HANDSHAKE_TIMEOUT,
    ROLE_PEER,
    AuthError,
    Identity,
    check_secret,
    client_handshake,
    server_handshake,
)
from raft_node.transport.codec import CodecError, decode_message, encode_message
from raft_node.transport.wire import (
    MAX_FRAME_BYTES,
    FrameError,
    FrameKind,
    encode_frame,
    frame_batches,
    frame_header,
)

__all__ = [
    "ClientHandler",
    "TcpTransport",
    "Transport",
]

log = logging.getLogger("raft_node.transport.tcp")

ClientHandler = Callable[[bytes, Callable[[bytes], None]], Awaitable[None] | None]
Address = tuple[str, int]

READ_CHUNK = 256 * 1024
MAX_BATCH_BYTES = 256 * 1024
"""A writer coalesces queued messages up to about this many bytes per write + drain (bigger
writes only make asyncio's send buffer shuffle more memory)."""
_RAFT = int(FrameKind.RAFT)
_CLIENT_REQUEST = int(FrameKind.CLIENT_REQUEST)
_SNAP = MessageType.SNAP
_STAT_KEYS = (  # noqa: SIM905
    "frames_in bytes_in frames_out bytes_out drops oversize_drops encode_errors "
    "unknown_destination connects reconnects connect_failures write_failures auth_failures "
    "handshake_failures protocol_errors callback_errors client_requests client_responses"
).split()


class Transport(Protocol):
    def send(self, msgs: Iterable[Message]) -> None:
        """Queue messages for their ``to`` nodes; never blocks, never raises for a down peer."""

    async def start(self) -> None:
        """Begin accepting and delivering."""

    async def stop(self) -> None:
        """Close every connection and task; queued messages are discarded."""


class ProtocolViolation(Exception):
    """An authenticated connection sent something it must not (closes that connection)."""


def _event(level: int, event: str, **fields: Any) -> None:
    """One structured log line: ``event=NAME k=v ...``, fields also passed as ``extra``."""
    if log.isEnabledFor(level):
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        log.log(level, "event=%s %s", event, text, extra={"event": event, **fields})


def _reason(e: BaseException) -> str:
    return repr(f"{type(e).__name__}: {e}")


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


@dataclass(eq=False, slots=True)
class _Peer:
    id: NodeId
    addr: Address
    queue: deque[Message] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    connected: bool = False
    ever_connected: bool = False
    drops: int = 0
    failures: int = 0
    frames_out: int = 0
    reconnects: int = 0
    writer: asyncio.StreamWriter | None = None  # set while connected (see _pump)
    busy: bool = False  # the pump is writing/draining


class TcpTransport:
    """asyncio TCP (optionally TLS) transport; see the module docstring for the behaviour."""

    def __init__(
        self,
        node_id: NodeId,
        peers: dict[NodeId, Address],
        secret: bytes,
        on_message: Callable[[Message], None],
        *,
        listen: Address | None = None,
        on_unreachable: Callable[[NodeId], None] | None = None,
        on_snapshot_status: Callable[[NodeId, bool], None] | None = None,
        on_client_frame: ClientHandler | None = None,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_peer_frame_bytes: int | None = None,
        max_queue: int = 4096,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        connect_timeout: float = 2.0,
        write_timeout: float = 10.0,
        frame_timeout: float = 30.0,
        idle_timeout: float | None = None,
        backoff_first: float = 0.05,
        backoff_max: float = 1.0,
        max_client_inflight: int = 64,
        max_client_out_bytes: int = 16 * 1024 * 1024,
        max_pending_handshakes: int = 256,
        rng: random.Random | None = None,
        on_fatal: Callable[[BaseException, str], None] | None = None,
    ) -> None:
        """``peers`` maps node ids to ``(host, port)``; it may include ``node_id`` itself, whose
        address is then the listen address unless ``listen`` is given (port 0 picks a free port;
        see ``address`` after ``start()``). ``on_fatal(exc, task_name)`` is called if a peer's
        writer task dies of an unexpected exception (a bug: every expected failure is retried);
        the node stops then, rather than live on unable to reach that peer."""
        self.node_id = node_id
        self._secret = check_secret(secret)
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._on_client_frame = on_client_frame
        self._on_fatal = on_fatal
        self._listen = listen if listen is not None else peers.get(node_id)
        if self._listen is None:
            raise ValueError(f"no listen address: give listen= or include {node_id!r} in peers")
        self._ssl_server = ssl_server
        self._ssl_client = ssl_client
        self.max_frame_bytes = max_frame_bytes
        # Authenticated peers may send bigger frames: a snapshot travels as one message.
        self.max_peer_frame_bytes = max(max_peer_frame_bytes or max_frame_bytes, max_frame_bytes)
        self.max_queue = max_queue
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.max_client_inflight = max_client_inflight
        self.max_client_out_bytes = max_client_out_bytes
        self.max_pending_handshakes = max_pending_handshakes
        self._handshaking = 0
        self._rng = rng or random.Random()
        self._peers: dict[NodeId, _Peer] = {}
        for pid, addr in peers.items():
            if pid != node_id:
                self._peers[pid] = _Peer(pid, addr)
        self._server: asyncio.Server | None = None
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self.address: Address | None = None
        self._stats = dict.fromkeys(_STAT_KEYS, 0)

    # -- membership ------------------------------------------------------------------------------

    def add_peer(self, node_id: NodeId, addr: Address) -> None:
        """Add a peer or change its address (takes effect at the next connection attempt)."""
        if node_id == self.node_id:
            return
        p = self._peers.get(node_id)
        if p is not None:
            p.addr = addr
            return
        p = self._peers[node_id] = _Peer(node_id, addr)
        if self._running:
            self._start_peer(p)

    def remove_peer(self, node_id: NodeId) -> None:
        """Forget a peer: its queue is dropped and it may no longer connect inbound."""
        p = self._peers.pop(node_id, None)
        if p is not None and p.task is not None:
            p.task.cancel()

    # -- Transport -------------------------------------------------------------------------------

    def send(self, msgs: Iterable[Message]) -> None:
        peers = self._peers
        stats = self._stats
        max_queue = self.max_queue
        touched: set[_Peer] = set()
        for m in msgs:
            p = peers.get(m.to)
            if p is None:
                stats["unknown_destination"] += 1
                continue
            q = p.queue
            if len(q) >= max_queue:
                old = q.popleft()
                p.drops += 1
                stats["drops"] += 1
                if old.type == _SNAP:
                    self._snapshot_status(p.id, False)
            q.append(m)
            touched.add(p)
        for p in touched:
            self._write_now(p)

    async def start(self) -> None:
        if self._running:
            return
        host, port = self._listen  # type: ignore[misc]
        self._server = await asyncio.start_server(
            self._handle_conn,
            host,
            port,
            ssl=self._ssl_server,
            ssl_handshake_timeout=self.handshake_timeout if self._ssl_server else None,
            limit=READ_CHUNK,
            reuse_address=True,
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        self._running = True
        for p in self._peers.values():
            p.wake = asyncio.Event()  # bound to this loop (a transport may be restarted)
            self._start_peer(p)
        _event(logging.INFO, "listening", node=self.node_id, addr=f"{host}:{self.address[1]}")

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._server is not None:
            self._server.close()
        tasks = [p.task for p in self._peers.values() if p.task is not None]
        tasks += list(self._conn_tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in self._peers.values():
            p.task = None
            p.queue.clear()
            p.connected = False
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def stats(self) -> dict[str, Any]:
        """Counters since construction (``frames_*``/``bytes_*`` cover peer and client
        connections; ``drops`` are queue overflows), plus per-peer state under ``"peers"``."""
        out: dict[str, Any] = dict(self._stats)
        out["peers"] = {
            p.id: {
                "connected": p.connected,
                "queued": len(p.queue),
                "drops": p.drops,
                "frames_out": p.frames_out,
                "reconnects": p.reconnects,
                "failures": p.failures,
            }
            for p in self._peers.values()
        }
        return out

    # -- callbacks (never raise into the transport, never run inside send()) --------------------

    def _call_soon(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        with contextlib.suppress(RuntimeError):  # send() outside a loop: run nothing
            asyncio.get_running_loop().call_soon(self._safe_call, fn, *args)

    def _safe_call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._stats["callback_errors"] += 1
            log.exception("event=callback_error callback=%r", fn)

    def _snapshot_status(self, peer: NodeId, ok: bool) -> None:
        self._call_soon(self._on_snapshot_status, peer, ok)

    # -- outbound --------------------------------------------------------------------------------

    def _start_peer(self, p: _Peer) -> None:
        name = f"peer-{self.node_id}-{p.id}"
        p.task = asyncio.get_running_loop().create_task(self._run_peer(p), name=name)
        p.task.add_done_callback(self._peer_task_done)

    def _peer_task_done(self, task: asyncio.Task[Any]) -> None:
        """A writer task only ends by cancellation; anything else is a bug that would leave
        the peer unreachable forever: report it (``event=fatal``) to whoever runs us."""
        if task.cancelled():
            return
        exc = task.exception() or RuntimeError(f"{task.get_name()} ended unexpectedly")
        if self._on_fatal is not None:
            self._on_fatal(exc, task.get_name())
        else:
            log.critical("event=fatal task=%s error=%r", task.get_name(), exc, exc_info=exc)

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max, self.backoff_first * (2**attempt))
        return base * (0.5 + 0.5 * self._rng.random())

    async def _run_peer(self, p: _Peer) -> None:
        attempt = 0
        while True:
            if not p.queue:
                p.wake.clear()
                await p.wake.wait()
                continue
            try:
                reader, writer = await self._connect(p)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._stats["connect_failures"] += 1
                p.failures += 1
                if isinstance(e, AuthError):
                    self._stats["auth_failures"] += 1
                level = logging.WARNING if attempt == 0 else logging.DEBUG
                _event(level, "connect_failed", peer=p.id, addr=_fmt(p.addr), reason=_reason(e))
                self._call_soon(self._on_unreachable, p.id)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            self._stats["connects"] += 1
            if p.ever_connected:
                p.reconnects += 1
                self._stats["reconnects"] += 1
            p.ever_connected = True
            p.connected = True
            started = time.monotonic()
            _event(logging.INFO, "peer_connected", peer=p.id, addr=_fmt(p.addr))
            try:
                await self._pump(p, reader, writer)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._stats["write_failures"] += 1
                _event(logging.WARNING, "peer_disconnected", peer=p.id, reason=_reason(e))
                self._call_soon(self._on_unreachable, p.id)
            finally:
                p.connected = False
                writer.close()
            # A connection that dies young (the peer accepts then drops us) must not make us
            # spin: keep backing off unless it lived a while.
            attempt = 0 if time.monotonic() - started > self.backoff_max else attempt + 1
            await asyncio.sleep(self._backoff(attempt))

    async def _connect(self, p: _Peer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = p.addr
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self._ssl_client, limit=READ_CHUNK
            )
        try:
            _tune_socket(writer)
            await client_handshake(
                reader,
                writer,
                self._secret,
                my_id=self.node_id,
                role=ROLE_PEER,
                expect_server_id=p.id,
                timeout=self.handshake_timeout,
            )
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _pump(
        self, p: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Write batches until the connection fails. The server never sends on a peer
        connection after the handshake, so any read result (EOF or data) means it is dead."""
        dead: list[BaseException] = []

        async def watch() -> None:
            try:
                data = await reader.read(1)
                dead.append(ConnectionError("closed by peer" if not data else "unexpected data"))
            except Exception as e:
                dead.append(e)
            p.wake.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        p.writer = writer
        try:
            while True:
                if dead:
                    raise dead[0]
                if not p.queue:
                    p.wake.clear()
                    await p.wake.wait()
                    continue
                p.busy = True
                try:
                    snaps = self._write_batch(p, writer)
                    try:
                        async with asyncio.timeout(self.write_timeout):
                            await writer.drain()
                    except BaseException:
                        for _ in range(snaps):
                            self._snapshot_status(p.id, False)
                        raise
                    for _ in range(snaps):
                        self._snapshot_status(p.id, True)
                finally:
                    p.busy = False
        finally:
            p.writer = None
            watcher.cancel()

    def _write_now(self, p: _Peer) -> None:
        """``send`` fast path: an idle, connected peer gets its frames written at once (asyncio
        tries the socket immediately), saving a task switch on every Raft hop. Back-pressure
        stays with the pump: with data already buffered, we leave it to the pump's drain."""
        writer = p.writer
        if writer is None or p.busy or writer.transport.get_write_buffer_size() > MAX_BATCH_BYTES:
            p.wake.set()
            return
        snaps = self._write_batch(p, writer)
        for _ in range(snaps):
            self._snapshot_status(p.id, True)
        if p.queue:
            p.wake.set()

    def _write_batch(self, p: _Peer, writer: asyncio.StreamWriter) -> int:
        """Encode queued messages (up to ``MAX_BATCH_BYTES``) into one write; returns how many
        snapshots it carried."""
        stats = self._stats
        max_body = self.max_peer_frame_bytes - 2
        header = frame_header
        parts: list[bytes] = []
        size = snaps = 0
        queue = p.queue
        while queue and size < MAX_BATCH_BYTES:
            m = queue.popleft()
            try:
                body = encode_message(m)
            except CodecError as e:
                stats["encode_errors"] += 1
                _event(logging.ERROR, "encode_failed", peer=p.id, reason=_reason(e))
                continue
            if len(body) > max_body:
                stats["oversize_drops"] += 1
                _event(
                    logging.ERROR,
                    "message_too_large",
                    peer=p.id,
                    type=m.type.name,
                    size=len(body),
                    max_frame_bytes=self.max_peer_frame_bytes,
                )
                if m.type == _SNAP:
                    self._snapshot_status(p.id, False)
                continue
            if m.type == _SNAP:
                snaps += 1
            parts.append(header(_RAFT, len(body)))
            parts.append(body)
            size += len(body) + 6
        if parts:
            data = b"".join(parts)
            writer.write(data)
            n = len(parts) // 2
            p.frames_out += n
            stats["frames_out"] += n
            stats["bytes_out"] += len(data)
        return snaps

    # -- inbound ---------------------------------------------------------------------------------

    async def _handle_conn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        remote = _fmt(writer.get_extra_info("peername"))
        who: Identity | None = None
        try:
            _tune_socket(writer)
            who = await self._authenticate(reader, writer, remote)
            if who is None:
                return
            if who.is_peer:
                await self._serve_peer(who, reader)
            else:
                await self._serve_client(reader, writer)
            level = logging.INFO if who.is_peer else logging.DEBUG
            _event(level, "conn_closed", remote=remote, role=_role(who), reason="'eof'")
        except asyncio.CancelledError:
            pass  # stop(): nothing to log
        except Exception as e:
            if isinstance(e, (FrameError, CodecError, ProtocolViolation, TimeoutError)):
                self._stats["protocol_errors"] += 1
            _event(
                logging.WARNING, "conn_closed", remote=remote, role=_role(who), reason=_reason(e)
            )
        finally:
            writer.close()
            if task is not None:
                self._conn_tasks.discard(task)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str
    ) -> Identity | None:
        """The handshake; ``None`` (logged, counted) if it fails or too many are pending."""
        if self._handshaking >= self.max_pending_handshakes:
            self._stats["handshake_failures"] += 1
            _event(logging.WARNING, "handshake_refused", remote=remote, reason="'too many'")
            return None
        self._handshaking += 1
        try:
            return await server_handshake(
                reader,
                writer,
                self._secret,
                server_id=self.node_id,
                peers=self._peers.keys(),
                allow_clients=self._on_client_frame is not None,
                timeout=self.handshake_timeout,
            )
        except AuthError as e:
            self._stats["auth_failures"] += 1
            _event(logging.WARNING, "auth_failed", remote=remote, reason=_reason(e))
        except (TimeoutError, OSError, EOFError) as e:
            self._stats["handshake_failures"] += 1
            _event(logging.WARNING, "handshake_failed", remote=remote, reason=_reason(e))
        finally:
            self._handshaking -= 1
        return None

    def _batches(self, reader: asyncio.StreamReader, limit: int | None = None) -> Any:
        return contextlib.aclosing(
            frame_batches(
                reader,
                limit or self.max_frame_bytes,
                frame_timeout=self.frame_timeout,
                idle_timeout=self.idle_timeout,
                chunk_size=READ_CHUNK,
            )
        )

    async def _serve_peer(self, who: Identity, reader: asyncio.StreamReader) -> None:
        me, peer = self.node_id, who.id
        on_message = self._on_message
        stats = self._stats
        async with self._batches(reader, self.max_peer_frame_bytes) as batches:
            async for frames in batches:
                stats["frames_in"] += len(frames)
                for kind, body in frames:
                    stats["bytes_in"] += len(body) + 6
                    if kind != _RAFT:
                        raise ProtocolViolation(f"frame kind {kind} on a peer connection")
                    m = decode_message(body)
                    if m.frm != peer or m.to != me:
                        raise ProtocolViolation(f"message {m.frm!r}->{m.to!r} from {peer!r}")
                    try:
                        on_message(m)
                    except Exception:
                        stats["callback_errors"] += 1
                        log.exception("event=callback_error callback=on_message peer=%s", peer)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
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
                _event(logging.ERROR, "response_too_large", size=len(body), reason=_reason(e))
                return
            out.append(frame)
            if len(out) == 1:
                loop.call_soon(flush)
            stats["client_responses"] += 1
            stats["frames_out"] += 1
            stats["bytes_out"] += len(frame)

        inflight = asyncio.Semaphore(self.max_client_inflight)
        tasks: set[asyncio.Task[None]] = set()

        async def run(pending: Awaitable[None]) -> None:
            try:
                await pending
            except asyncio.CancelledError:
                raise
            except Exception:
                stats["callback_errors"] += 1
                log.exception("event=callback_error callback=on_client_frame")
            finally:
                inflight.release()

        try:
            async with self._batches(reader) as batches:
                async for frames in batches:
                    stats["frames_in"] += len(frames)
                    for kind, body in frames:
                        stats["bytes_in"] += len(body) + 6
                        if kind != _CLIENT_REQUEST:
                            raise ProtocolViolation(f"frame kind {kind} on a client connection")
                        stats["client_requests"] += 1
                        try:
                            pending = handler(body, respond)
                        except Exception:
                            stats["callback_errors"] += 1
                            log.exception("event=callback_error callback=on_client_frame")
                            continue
                        if pending is None:
                            continue  # answered now, or will be via respond() later
                        await inflight.acquire()
                        t = loop.create_task(run(pending))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
        finally:
            closed = True
            for t in list(tasks):
                t.cancel()
        if slow:
            raise ProtocolViolation(f"client does not read its responses (> {max_out} bytes)")


def _fmt(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _role(who: Identity | None) -> str:
    return "unauthenticated" if who is None else f"{who.role}:{who.id}"
