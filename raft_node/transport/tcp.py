"""The asyncio TCP implementation of the node ``Transport`` (``raft_node.transport.protocol``
states the contract; ``raft_node.transport.memory`` is the in-process twin for tests).

``TcpTransport`` composes two parts: ``connections.InboundServer`` (accepting, the handshake,
reading frames and their limits, serving peers and clients; also ``dial`` for outbound
connections) and ``peers.PeerRouter`` (per-peer outbound queues and writers, reconnect with
backoff, reports to the node). They share one ``stats`` dict and log on one logger
(``raft_node.transport.tcp``). The behaviour of the whole:

``TcpTransport``
----------------
Outbound: one connection per peer, opened on demand (when something is queued for it) and kept
open. Each peer has a bounded queue (``max_queue`` messages; when full the *oldest* is dropped and
counted: stale Raft messages are the least useful) and one writer task that takes everything
queued, encodes it, and writes all frames with a single ``writer.write`` + ``drain()``; while a
drain waits, new messages accumulate and go out as the next batch, so batching grows with load.
A failed connect/handshake/write closes the connection, calls ``on_unreachable(peer)`` (the node
calls ``RawNode.report_unreachable``) and retries with exponential backoff plus jitter (first
retry ~50 ms, cap ~1 s).

Snapshots: a ``SNAP`` message is streamed in chunks of ``snapshot_chunk_bytes`` (1 MiB; format
and checks in ``raft_node.transport.snapstream``), sliced from the image without copying it and
with a drain and a yield to the event loop after each chunk, so the image's size is limited by
disk only, and a leader sending one keeps serving and replicating. Messages queued for the same
peer during a transfer go out between its chunks (so they may overtake the snapshot; Raft does
not mind, and the follower keeps hearing heartbeats). The receiver assembles the chunks in a
temporary file in ``snapshot_dir`` (the system temp directory if None; leftovers of a crashed
run are deleted at ``start()``), checks every chunk's CRC32 and the whole, and then delivers the
``SNAP`` message and acknowledges it. ``on_snapshot_status(peer, True)`` is reported on that
acknowledgement; a snapshot dropped from the queue, rejected by the receiver, lost with its
connection or not acknowledged within a minute is reported via ``on_snapshot_status(peer,
False)`` (the node calls ``RawNode.report_snapshot``, and the core sends it again later: a
transfer restarts from the start, it does not resume).

Inbound: ``asyncio.start_server``; every connection first passes the mutual HMAC handshake of
``raft_node.transport.auth``. A peer (``role="peer"``, id in ``peers``) may then send only
``RAFT`` frames (and snapshot streams) whose message is from that peer and to this node; they
go to ``on_message``. A
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
integrity-protected: use it only on a trusted network. The listener starts TLS on each accepted
connection itself, so a refused TLS handshake is logged (``event=tls_failed``, counted in
``tls_failures``) and the context is the one current at accept time: ``set_tls`` swaps both
contexts (a certificate rotation) and re-dials the peers. ``peer_connected`` lines carry the
connection's TLS version (``tls=TLSv1.3``, or ``none``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from raft_node.core.messages import Message, NodeId
from raft_node.transport.auth import HANDSHAKE_TIMEOUT, check_secret
from raft_node.transport.connections import Address, InboundServer, event
from raft_node.transport.peers import PeerRouter
from raft_node.transport.protocol import STAT_KEYS, ClientHandler, Transport
from raft_node.transport.snapstream import CHUNK_OVERHEAD, DEFAULT_CHUNK_BYTES, remove_stale
from raft_node.transport.wire import MAX_FRAME_BYTES

PEER_CLOSED_WINDOW = 1.0  # seconds between the two closes of a peer whose process is gone

__all__ = [
    "ClientHandler",
    "TcpTransport",
    "Transport",
]


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
        snapshot_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        snapshot_dir: str | Path | None = None,
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
        on_peer_batch: Callable[[], None] | None = None,
        on_peer_closed: Callable[[NodeId], None] | None = None,
    ) -> None:
        """``peers`` maps node ids to ``(host, port)``; it may include ``node_id`` itself, whose
        address is then the listen address unless ``listen`` is given (port 0 picks a free port;
        see ``address`` after ``start()``). ``on_fatal(exc, task_name)`` is called if a peer's
        writer task dies of an unexpected exception (a bug: every expected failure is retried);
        the node stops then, rather than live on unable to reach that peer. ``on_peer_batch()``
        is called after the messages of one socket read from a peer were given to
        ``on_message``: a node handles them there and then, rather than a loop iteration
        later. ``on_peer_closed(peer)`` is called when a peer's process is gone: it closed its
        connection to us (EOF or reset; not a close of ours, a timeout or a protocol error) and
        our connection to it failed too (in either order, within ``PEER_CLOSED_WINDOW``). A
        process that dies closes both at once; one that only re-dials us (a TLS reload) keeps
        the connection it accepted from us. The node calls ``RawNode.report_peer_closed``."""
        self.node_id = node_id
        secret = check_secret(secret)
        self._listen = listen if listen is not None else peers.get(node_id)
        if self._listen is None:
            raise ValueError(f"no listen address: give listen= or include {node_id!r} in peers")
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        # Authenticated peers may send bigger frames than clients: an append batch may hold the
        # largest entry a client can propose plus the core's batch budget.
        max_peer = max(max_peer_frame_bytes or max_frame_bytes, max_frame_bytes)
        if snapshot_chunk_bytes < 1:
            raise ValueError(f"snapshot_chunk_bytes must be >= 1, got {snapshot_chunk_bytes!r}")
        self._snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
        self._on_unreachable = on_unreachable
        self._on_peer_closed = on_peer_closed
        self._closed_in: dict[NodeId, float] = {}  # peer -> when its connection to us closed
        self._router = PeerRouter(
            node_id,
            secret,
            self._stats,
            on_unreachable=self._unreachable,
            on_snapshot_status=on_snapshot_status,
            on_fatal=on_fatal,
            ssl_client=ssl_client,
            max_peer_frame_bytes=max_peer,
            snapshot_chunk_bytes=max(1, min(snapshot_chunk_bytes, max_peer - CHUNK_OVERHEAD)),
            max_queue=max_queue,
            handshake_timeout=handshake_timeout,
            connect_timeout=connect_timeout,
            write_timeout=write_timeout,
            backoff_first=backoff_first,
            backoff_max=backoff_max,
            rng=rng or random.Random(),
        )
        for pid, addr in peers.items():
            if pid != node_id:
                self._router.add(pid, addr)
        self._inbound = InboundServer(
            node_id,
            secret,
            self._stats,
            on_message,
            on_client_frame,
            self._router.peers.keys(),  # a live view: add_peer/remove_peer change who may dial in
            ssl_server=ssl_server,
            max_frame_bytes=max_frame_bytes,
            max_peer_frame_bytes=max_peer,
            snapshot_dir=self._snapshot_dir,
            handshake_timeout=handshake_timeout,
            frame_timeout=frame_timeout,
            idle_timeout=idle_timeout,
            max_client_inflight=max_client_inflight,
            max_client_out_bytes=max_client_out_bytes,
            max_pending_handshakes=max_pending_handshakes,
            on_peer_batch=on_peer_batch,
            on_peer_closed=self._inbound_closed,
        )
        self._running = False
        self.address: Address | None = None

    # -- a peer's process gone: both directions closed ------------------------------------------

    def _inbound_closed(self, peer: NodeId) -> None:
        ours = self._router.peers.get(peer)
        now = time.monotonic()
        redialing = ours is not None and now - ours.redialed_at <= PEER_CLOSED_WINDOW
        if ours is None or not (ours.connected or redialing):
            self._peer_gone(peer)  # our connection to it already failed (or never was)
        else:
            # Wait for ours to fail too. One we are re-dialling ourselves (our own TLS reload)
            # proves nothing either way: only a failed attempt does.
            self._closed_in[peer] = now

    def _unreachable(self, peer: NodeId) -> None:
        if self._on_unreachable is not None:
            self._on_unreachable(peer)
        closed = self._closed_in.pop(peer, None)
        if closed is not None and time.monotonic() - closed <= PEER_CLOSED_WINDOW:
            self._peer_gone(peer)

    def _peer_gone(self, peer: NodeId) -> None:
        self._closed_in.pop(peer, None)
        if self._on_peer_closed is not None:
            self._on_peer_closed(peer)

    # -- membership ------------------------------------------------------------------------------

    def add_peer(self, node_id: NodeId, addr: Address) -> None:
        """Add a peer or change its address (takes effect at the next connection attempt)."""
        if node_id != self.node_id:
            self._router.add(node_id, addr)

    def remove_peer(self, node_id: NodeId) -> None:
        """Forget a peer: its queue is dropped and it may no longer connect inbound."""
        self._router.remove(node_id)

    def set_tls(self, ssl_server: ssl.SSLContext | None, ssl_client: ssl.SSLContext | None) -> None:
        """Use new TLS contexts (certificates rotated on disk): inbound connections accepted
        from now on get ``ssl_server``; outbound peer connections are closed and re-dialled
        with ``ssl_client``. Open client connections keep the session they negotiated."""
        self._inbound.ssl_server = ssl_server
        self._router.set_ssl_client(ssl_client)

    # -- Transport -------------------------------------------------------------------------------

    def flush_responses(self) -> None:
        """Write the client responses produced so far (``InboundServer.flush_responses``)."""
        self._inbound.flush_responses()

    def send(self, msgs: Iterable[Message]) -> None:
        self._router.send(msgs)

    async def start(self) -> None:
        if self._running:
            return
        host, port = self._listen  # type: ignore[misc]
        if self._snapshot_dir is not None:
            remove_stale(self._snapshot_dir)
        self.address = await self._inbound.start(host, port)
        self._running = True
        self._router.start()
        event(logging.INFO, "listening", node=self.node_id, addr=f"{host}:{self.address[1]}")

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        conns = self._inbound.close()
        tasks = [*self._router.cancel(), *conns]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._router.reset()
        await self._inbound.wait_closed()

    def stats(self) -> dict[str, Any]:
        """Counters since construction (``frames_*``/``bytes_*`` cover peer and client
        connections; ``drops`` are queue overflows), plus per-peer state under ``"peers"``."""
        out: dict[str, Any] = dict(self._stats)
        out["peers"] = self._router.peer_stats()
        return out

    # -- for tests that look inside ---------------------------------------------------------------

    @property
    def _on_message(self) -> Callable[[Message], None]:
        """The callback for peer messages (a test swaps it; connections opened later use it)."""
        return self._inbound.on_message

    @_on_message.setter
    def _on_message(self, fn: Callable[[Message], None]) -> None:
        self._inbound.on_message = fn

    @property
    def _handshaking(self) -> int:
        """Inbound connections in the middle of their handshake."""
        return self._inbound.handshaking
