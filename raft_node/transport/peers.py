"""Routing Raft messages to peers over TCP: one outbound queue and writer per peer, reconnect
with backoff, and reports to the node (used by ``raft_node.transport.tcp``).

This module decides *which* connection a message leaves on and what happens when it cannot;
opening and authenticating that connection is ``raft_node.transport.connections.dial``.
``TcpTransport``'s docstring describes the behaviour (queue bound, batching, backoff, snapshot
reports); the code that keeps each promise is here. A ``SNAP`` message is not batched: the writer
streams it in chunks (``raft_node.transport.snapstream``), letting the other messages queued for
that peer through between chunks, and reports it when the receiver acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from raft_node.core.messages import Message, MessageType, NodeId
from raft_node.transport.auth import AuthError
from raft_node.transport.codec import CodecError, encode_message
from raft_node.transport.connections import (
    FRAME_OVERHEAD,
    Address,
    ProtocolViolation,
    dial,
    event,
    fmt_addr,
    log,
    reason,
    tls_version,
)
from raft_node.transport.snapstream import OutgoingSnapshot, decode_ack
from raft_node.transport.wire import FrameKind, frame_batches, frame_header

__all__ = ["MAX_BATCH_BYTES", "PeerRouter"]

MAX_BATCH_BYTES = 256 * 1024
"""A writer coalesces queued messages up to about this many bytes per write + drain (bigger
writes only make asyncio's send buffer shuffle more memory)."""
SNAPSHOT_ACK_TIMEOUT = 60.0
"""Seconds the sender waits, after the last chunk left, for the receiver's ``SNAP_ACK`` before
it reports the snapshot failed (the receiver reads the image back from disk before it answers)."""
_RAFT = int(FrameKind.RAFT)
_SNAP_ACK = int(FrameKind.SNAP_ACK)
_SNAP = MessageType.SNAP


@dataclass(eq=False, slots=True)
class _Stream:
    """A snapshot stream from its first frame until its outcome is reported."""

    key: tuple[int, int, int]  # message term, snapshot index, snapshot term
    reports: int = 1  # SNAP messages it answers for: an identical one sent meanwhile merges in
    timer: asyncio.TimerHandle | None = None  # waiting for the SNAP_ACK


def _snapshot_key(m: Message) -> tuple[int, int, int]:
    snap = m.snapshot
    return (m.term, 0, 0) if snap is None else (m.term, snap.index, snap.term)


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
    redial: bool = False  # we closed the connection on purpose (new TLS contexts)
    redialed_at: float = float("-inf")  # when we last closed it on purpose (monotonic)
    streams: dict[int, _Stream] = field(default_factory=dict)  # by stream id: not yet reported


class PeerRouter:
    """The outbound half of ``TcpTransport``: per-peer queues, writer tasks and reports.

    ``peers`` holds every peer but this node; its keys are the ids allowed to connect inbound
    (the transport hands that live view to the handshake)."""

    def __init__(
        self,
        node_id: NodeId,
        secret: bytes,
        stats: dict[str, int],
        *,
        on_unreachable: Callable[[NodeId], None] | None,
        on_snapshot_status: Callable[[NodeId, bool], None] | None,
        on_fatal: Callable[[BaseException, str], None] | None,
        ssl_client: ssl.SSLContext | None,
        max_peer_frame_bytes: int,
        snapshot_chunk_bytes: int,
        max_queue: int,
        handshake_timeout: float,
        connect_timeout: float,
        write_timeout: float,
        backoff_first: float,
        backoff_max: float,
        rng: random.Random,
    ) -> None:
        self.node_id = node_id
        self._secret = secret
        self._stats = stats
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._on_fatal = on_fatal
        self._ssl_client = ssl_client
        self.max_peer_frame_bytes = max_peer_frame_bytes
        self.snapshot_chunk_bytes = snapshot_chunk_bytes
        self._stream_ids = 0
        self.max_queue = max_queue
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self._rng = rng
        self.peers: dict[NodeId, _Peer] = {}
        self._running = False

    # -- membership ------------------------------------------------------------------------------

    def add(self, node_id: NodeId, addr: Address) -> None:
        """Add a peer or change its address (takes effect at the next connection attempt)."""
        p = self.peers.get(node_id)
        if p is not None:
            p.addr = addr
            return
        p = self.peers[node_id] = _Peer(node_id, addr)
        if self._running:
            self._start_peer(p)

    def remove(self, node_id: NodeId) -> None:
        """Forget a peer: its queue is dropped."""
        p = self.peers.pop(node_id, None)
        if p is not None and p.task is not None:
            p.task.cancel()

    # -- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every peer's writer task (on the running loop)."""
        self._running = True
        for p in self.peers.values():
            p.wake = asyncio.Event()  # bound to this loop (a transport may be restarted)
            self._start_peer(p)

    def cancel(self) -> list[asyncio.Task[None]]:
        """Cancel every writer task; answers them (to await before ``reset``)."""
        self._running = False
        tasks = [p.task for p in self.peers.values() if p.task is not None]
        for t in tasks:
            t.cancel()
        return tasks

    def reset(self) -> None:
        """After the writers ended: queued messages are discarded, nothing is connected."""
        for p in self.peers.values():
            p.task = None
            p.queue.clear()
            p.connected = False

    def set_ssl_client(self, ssl_client: ssl.SSLContext | None) -> None:
        """Dial with ``ssl_client`` from now on, and close every open peer connection so each
        is re-dialled with it at once: a certificate reload is checked against every peer
        right away (a bad one shows in ``connect_failed`` now, not at the next network blip
        days later). Raft resends whatever those connections lose."""
        self._ssl_client = ssl_client
        now = time.monotonic()
        for p in self.peers.values():
            if p.writer is not None:
                p.redial, p.redialed_at = True, now
                p.writer.close()

    def peer_stats(self) -> dict[NodeId, dict[str, Any]]:
        return {
            p.id: {
                "connected": p.connected,
                "queued": len(p.queue),
                "drops": p.drops,
                "frames_out": p.frames_out,
                "reconnects": p.reconnects,
                "failures": p.failures,
            }
            for p in self.peers.values()
        }

    # -- sending ---------------------------------------------------------------------------------

    def send(self, msgs: Iterable[Message]) -> None:
        peers = self.peers
        stats = self._stats
        max_queue = self.max_queue
        touched: set[_Peer] = set()
        for m in msgs:
            p = peers.get(m.to)
            if p is None:
                stats["unknown_destination"] += 1
                continue
            if m.type == _SNAP and self._merge_snapshot(p, m):
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

    def _merge_snapshot(self, p: _Peer, m: Message) -> bool:
        """True if the same snapshot is already on its way to this peer: ``m`` then shares that
        stream's outcome instead of queueing a second transfer. The core re-sends a snapshot when
        it has heard nothing for an election timeout, much less than a large transfer takes."""
        key = _snapshot_key(m)
        for stream in p.streams.values():
            if stream.key == key:
                stream.reports += 1
                return True
        return False

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

    # -- one peer's writer -----------------------------------------------------------------------

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
                reader, writer = await dial(
                    p.addr,
                    self._secret,
                    my_id=self.node_id,
                    peer_id=p.id,
                    ssl_client=self._ssl_client,
                    connect_timeout=self.connect_timeout,
                    handshake_timeout=self.handshake_timeout,
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._stats["connect_failures"] += 1
                p.failures += 1
                if isinstance(e, AuthError):
                    self._stats["auth_failures"] += 1
                level = logging.WARNING if attempt == 0 else logging.DEBUG
                event(level, "connect_failed", peer=p.id, addr=fmt_addr(p.addr), reason=reason(e))
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
            event(
                logging.INFO,
                "peer_connected",
                peer=p.id,
                addr=fmt_addr(p.addr),
                tls=tls_version(writer),
            )
            try:
                await self._pump(p, reader, writer)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if p.redial:
                    event(logging.INFO, "peer_redial", peer=p.id, reason="'TLS reloaded'")
                else:
                    self._stats["write_failures"] += 1
                    event(logging.WARNING, "peer_disconnected", peer=p.id, reason=reason(e))
                    self._call_soon(self._on_unreachable, p.id)
            finally:
                p.connected = False
                p.redial = False
                writer.close()
            # A connection that dies young (the peer accepts then drops us) must not make us
            # spin: keep backing off unless it lived a while.
            attempt = 0 if time.monotonic() - started > self.backoff_max else attempt + 1
            await asyncio.sleep(self._backoff(attempt))

    async def _pump(
        self, p: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Write batches and stream snapshots until the connection fails. The server sends
        nothing on a peer connection after the handshake but ``SNAP_ACK`` frames, so anything
        else (or EOF) read on it means it is dead."""
        dead: list[BaseException] = []

        async def watch() -> None:
            try:
                async with contextlib.aclosing(
                    frame_batches(reader, 1024, frame_timeout=self.write_timeout)
                ) as batches:
                    async for frames in batches:
                        for kind, body in frames:
                            if kind != _SNAP_ACK:
                                raise ProtocolViolation(f"frame kind {kind} from a peer server")
                            self._finish(p, *decode_ack(body))
                dead.append(ConnectionError("closed by peer"))
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
                    if p.queue[0].type == _SNAP:
                        await self._stream_snapshot(p, writer, p.queue.popleft(), dead)
                    else:
                        self._write_batch(p, writer)
                        async with asyncio.timeout(self.write_timeout):
                            await writer.drain()
                finally:
                    p.busy = False
        finally:
            p.writer = None
            watcher.cancel()
            for stream_id in list(p.streams):
                self._finish(p, stream_id, False, "connection lost before SNAP_ACK")

    async def _stream_snapshot(
        self, p: _Peer, writer: asyncio.StreamWriter, m: Message, dead: list[BaseException]
    ) -> None:
        """Send one snapshot as chunk frames (``raft_node.transport.snapstream``), draining and
        yielding to the event loop after each chunk, so the leader's extra memory is about one
        chunk and its loop keeps serving; the messages queued for this peer meanwhile (the
        heartbeats that keep the follower from campaigning during a long transfer) go out between
        chunks. Raises if the connection fails, after reporting the snapshot failed."""
        self._stream_ids += 1
        out = OutgoingSnapshot(m, self._stream_ids, self.snapshot_chunk_bytes)
        p.streams[out.stream_id] = stream = _Stream(_snapshot_key(m))
        try:
            begin = out.begin()
        except CodecError as e:
            self._stats["encode_errors"] += 1
            event(logging.ERROR, "encode_failed", peer=p.id, reason=reason(e))
            self._finish(p, out.stream_id, False, "cannot encode")
            return
        event(logging.INFO, "snapshot_send", peer=p.id, stream=out.stream_id, bytes=out.total)
        try:
            self._write_counted(p, writer, begin)
            for seq in range(out.count):
                self._write_counted(p, writer, *out.chunk(seq))
                async with asyncio.timeout(self.write_timeout):
                    await writer.drain()
                await asyncio.sleep(0)  # drain does not yield while the socket takes everything
                if dead:
                    raise dead[0]
                if seq + 1 < out.count and p.queue and p.queue[0].type != _SNAP:
                    self._write_batch(p, writer)
            self._write_counted(p, writer, out.end())
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except BaseException as e:
            self._finish(p, out.stream_id, False, f"{type(e).__name__}: {e}")
            raise
        stream.timer = asyncio.get_running_loop().call_later(
            SNAPSHOT_ACK_TIMEOUT, self._finish, p, out.stream_id, False, "no SNAP_ACK in time"
        )

    def _write_counted(self, p: _Peer, writer: asyncio.StreamWriter, *parts: Any) -> None:
        """Write one frame given in parts (a chunk's data is a view of the image, not a copy)."""
        _check_open(writer)
        for part in parts:
            writer.write(part)
        p.frames_out += 1
        self._stats["frames_out"] += 1
        self._stats["bytes_out"] += sum(len(part) for part in parts)

    def _finish(self, p: _Peer, stream_id: int, ok: bool, why: str = "") -> None:
        """Report a stream's outcome (the receiver's ``SNAP_ACK``, a failure to send it, or the
        ack's timeout) once for every ``SNAP`` message it answers for. A stream already reported
        (an ack after its timeout) is ignored."""
        stream = p.streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.timer is not None:
            stream.timer.cancel()
        if ok:
            self._stats["snapshots_out"] += 1
            event(logging.INFO, "snapshot_sent", peer=p.id, stream=stream_id)
        else:
            self._stats["snapshot_failures"] += 1
            event(logging.WARNING, "snapshot_failed", peer=p.id, stream=stream_id, reason=repr(why))
        for _ in range(stream.reports):
            self._snapshot_status(p.id, ok)

    def _write_now(self, p: _Peer) -> None:
        """``send`` fast path: an idle, connected peer gets its frames written at once (asyncio
        tries the socket immediately), saving a task switch on every Raft hop. Back-pressure
        stays with the pump: with data already buffered, we leave it to the pump's drain, as we
        leave it a snapshot to stream."""
        writer = p.writer
        if (
            writer is None
            or p.busy
            or writer.transport.is_closing()  # the pump notices and reconnects
            or writer.transport.get_write_buffer_size() > MAX_BATCH_BYTES
        ):
            p.wake.set()
            return
        self._write_batch(p, writer)
        if p.queue:
            p.wake.set()

    def _write_batch(self, p: _Peer, writer: asyncio.StreamWriter) -> None:
        """Encode queued messages (up to ``MAX_BATCH_BYTES``) into one write, stopping before a
        snapshot (which the pump streams). ``ConnectionResetError`` (nothing taken from the
        queue) if the connection is closed already: asyncio's transports drop such a write,
        uvloop's raise ``RuntimeError``, so the check comes first for both."""
        _check_open(writer)
        stats = self._stats
        max_body = self.max_peer_frame_bytes - 2
        header = frame_header
        parts: list[bytes] = []
        size = 0
        queue = p.queue
        while queue and size < MAX_BATCH_BYTES and queue[0].type != _SNAP:
            m = queue.popleft()
            try:
                body = encode_message(m)
            except CodecError as e:
                stats["encode_errors"] += 1
                event(logging.ERROR, "encode_failed", peer=p.id, reason=reason(e))
                continue
            if len(body) > max_body:
                stats["oversize_drops"] += 1
                event(
                    logging.ERROR,
                    "message_too_large",
                    peer=p.id,
                    type=m.type.name,
                    size=len(body),
                    max_frame_bytes=self.max_peer_frame_bytes,
                )
                continue
            parts.append(header(_RAFT, len(body)))
            parts.append(body)
            size += len(body) + FRAME_OVERHEAD
        if parts:
            data = b"".join(parts)
            writer.write(data)
            n = len(parts) // 2
            p.frames_out += n
            stats["frames_out"] += n
            stats["bytes_out"] += len(data)


def _check_open(writer: asyncio.StreamWriter) -> None:
    if writer.transport.is_closing():
        raise ConnectionResetError("the connection to the peer is closed")
