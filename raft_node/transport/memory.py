"""The in-memory twin of ``TcpTransport``: node transports in one process and one event loop,
joined by a ``MemoryNetwork`` that can drop, delay and partition (for tests of the host without
sockets).

It keeps the ``Transport`` contract (``raft_node.transport.protocol``) the way TCP does, so what
a host learns to expect from one holds for the other (``tests/raft/test_transport_contract.py``
runs the same tests against both):

- ``send`` only queues. Each peer has a bounded queue (``max_queue``; when full the *oldest* is
  dropped and counted, a dropped ``SNAP`` is reported ``on_snapshot_status(peer, False)``), and
  the queue is handed to the network on the next loop iteration, never inside ``send``.
- A peer that cannot be reached (not started, stopped, or cut off by ``block``/``partition``)
  is reported ``on_unreachable(peer)`` once per attempt; its messages stay queued and the
  attempt is retried with exponential backoff and jitter, as TCP reconnects, so what was queued
  is delivered once the peer is back (up to ``max_queue``). A ``SNAP`` handed to the network is
  reported ``on_snapshot_status(peer, True)``.
- The network keeps order per directed link (like one TCP connection) also under ``delay``.
  Messages in flight when their link is cut, or whose receiver stops, are lost, as with a cut
  connection; ``drop_rate`` loses messages at random on top (Raft must tolerate both).
- A receiver accepts a message only from the transport it claims to come from and only if it
  is addressed to it (otherwise it counts a ``protocol_error``, as TCP closes such a connection);
  ``on_message`` runs one message at a time on the loop, its exceptions counted and logged.
- Clients: ``MemoryNetwork.connect_client(node)`` gives a ``MemoryClientConnection``; its
  requests go to ``on_client_frame(body, respond)`` in order, awaitable handlers run as tasks (at
  most ``max_client_inflight``; reading pauses beyond that), cancelled when the connection or the
  transport closes.

Messages are passed as the (immutable) ``Message`` objects, not encoded: codec and framing are
what TCP adds, and their tests are ``tests/raft/test_codec.py`` and ``test_transport.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from raft_node.core.messages import Message, MessageType, NodeId
from raft_node.transport.protocol import STAT_KEYS, ClientHandler, call_client_handler

__all__ = ["MemoryClientConnection", "MemoryNetwork", "MemoryTransport"]

log = logging.getLogger("raft_node.transport.memory")

_SNAP = MessageType.SNAP
Link = tuple[NodeId, NodeId]  # (src, dst): one direction


class MemoryNetwork:
    """The wires between ``MemoryTransport``s: which links are cut, how long a message takes,
    how many are lost. One network serves one event loop."""

    def __init__(
        self, *, delay: float = 0.0, drop_rate: float = 0.0, rng: random.Random | None = None
    ) -> None:
        self.delay = delay  # seconds per message on every link without its own (set_delay)
        self.drop_rate = drop_rate  # probability that a message handed to a link is lost
        self.rng = rng or random.Random()
        self.lost = 0  # messages lost in flight (cut link, stopped receiver, drop_rate)
        self._nodes: dict[NodeId, MemoryTransport] = {}  # running transports
        self._epochs: dict[NodeId, int] = {}  # starts per node: a restart breaks connections
        self._blocked: set[Link] = set()
        self._delays: dict[Link, float] = {}
        # A "connection" is a link between two starts of its ends; cutting or closing one bumps
        # the link's generation, and what is in flight on an older one is lost.
        self._generations: dict[Link, int] = {}
        self._links: dict[Link, deque[tuple[float, tuple[int, int], Message]]] = {}
        self._scheduled: set[Link] = set()

    # -- faults ----------------------------------------------------------------------------------

    def block(self, src: NodeId, dst: NodeId) -> None:
        """Cut the directed link ``src -> dst``: what is in flight on it is lost, and ``src``
        sees its connection to ``dst`` break."""
        self._blocked.add((src, dst))
        self._close_connection(src, dst)

    def partition(self, side_a: Iterable[NodeId], side_b: Iterable[NodeId]) -> None:
        """Cut every link between the two sides, both directions."""
        side_b = list(side_b)
        for a in side_a:
            for b in side_b:
                self.block(a, b)
                self.block(b, a)

    def isolate(self, node: NodeId, others: Iterable[NodeId]) -> None:
        self.partition([node], [n for n in others if n != node])

    def heal(self) -> None:
        """Restore every link (delays and the drop rate stay)."""
        self._blocked.clear()

    def set_delay(self, src: NodeId, dst: NodeId, seconds: float | None) -> None:
        """Delay of the link ``src -> dst`` (None: back to ``delay``)."""
        if seconds is None:
            self._delays.pop((src, dst), None)
        else:
            self._delays[(src, dst)] = seconds

    def reachable(self, src: NodeId, dst: NodeId) -> bool:
        return dst in self._nodes and (src, dst) not in self._blocked

    # -- clients ---------------------------------------------------------------------------------

    def connect_client(self, node: NodeId, client_id: str = "client") -> MemoryClientConnection:
        """A client connection to ``node``; ``ConnectionRefusedError`` if it is not running or
        takes no clients (as TCP refuses, or the handshake rejects a client)."""
        transport = self._nodes.get(node)
        if transport is None or transport.on_client_frame is None:
            raise ConnectionRefusedError(f"{node!r} accepts no client connections")
        return transport._accept_client(client_id)

    # -- used by the transports ------------------------------------------------------------------

    def _join(self, transport: MemoryTransport) -> None:
        node = transport.node_id
        if node in self._nodes:
            raise RuntimeError(f"a transport for {node!r} is already running on this network")
        self._nodes[node] = transport
        self._epochs[node] = self._epochs.get(node, 0) + 1

    def _leave(self, transport: MemoryTransport) -> None:
        node = transport.node_id
        if self._nodes.get(node) is transport:
            del self._nodes[node]
        for link in [link for link in self._links if link[0] == node]:
            self.lost += len(self._links.pop(link))  # its queued frames go with it
        for other in self._nodes.values():
            other._connection_lost(node)

    def _epoch(self, node: NodeId) -> int:
        return self._epochs.get(node, 0)

    def _connection(self, src: NodeId, dst: NodeId) -> tuple[int, int]:
        return (self._epoch(dst), self._generations.get((src, dst), 0))

    def _close_connection(self, src: NodeId, dst: NodeId) -> None:
        """The ``src -> dst`` connection breaks (cut, or closed by ``dst`` for a protocol
        error): in-flight messages on it are lost and ``src`` is told, as TCP notices."""
        self._generations[(src, dst)] = self._generations.get((src, dst), 0) + 1
        sender = self._nodes.get(src)
        if sender is not None:
            sender._connection_lost(dst)

    def _carry(self, src: NodeId, dst: NodeId, msgs: list[Message]) -> None:
        """Put messages on the ``src -> dst`` link: delivered in order after its delay, unless
        lost on the way. Call on the loop."""
        loop = asyncio.get_running_loop()
        delay = self._delays.get((src, dst), self.delay)
        link = self._links.setdefault((src, dst), deque())
        due = loop.time() + delay  # a message never overtakes those ahead on its link
        conn = self._connection(src, dst)
        for m in msgs:
            if self.drop_rate and self.rng.random() < self.drop_rate:
                self.lost += 1
                continue
            link.append((due, conn, m))
        self._schedule((src, dst), loop)

    def _schedule(self, key: Link, loop: asyncio.AbstractEventLoop) -> None:
        link = self._links.get(key)
        if not link or key in self._scheduled:
            return
        self._scheduled.add(key)
        loop.call_at(link[0][0], self._deliver, key)

    def _deliver(self, key: Link) -> None:
        """Hand every message now due on the link to its receiver, in order."""
        self._scheduled.discard(key)
        link = self._links.get(key)
        if not link:
            return
        loop = asyncio.get_running_loop()
        src, dst = key
        now = loop.time()
        while link and link[0][0] <= now:
            _, conn, m = link.popleft()
            receiver = self._nodes.get(dst)
            if receiver is None or key in self._blocked or conn != self._connection(src, dst):
                self.lost += 1  # the connection it was on is gone
                continue
            if not receiver._receive(src, m):
                self._close_connection(src, dst)
        if link:
            self._schedule(key, loop)
        else:
            del self._links[key]


@dataclass(eq=False, slots=True)
class _Peer:
    id: NodeId
    queue: deque[Message] = field(default_factory=deque)
    timer: asyncio.Handle | None = None  # a flush or a retry is scheduled
    epoch: int = 0  # the peer's start we are "connected" to; 0: not connected
    ever_connected: bool = False
    attempt: int = 0
    drops: int = 0
    failures: int = 0
    frames_out: int = 0
    reconnects: int = 0


class MemoryTransport:
    """One node's transport on a ``MemoryNetwork``; see the module docstring.

    ``peers`` are the node ids this node sends to (a dict such as ``NodeConfig.cluster`` works;
    this node's own id is skipped); a message to anyone else counts as ``unknown_destination``.
    The callbacks are those of ``TcpTransport`` (``raft_node.transport.protocol``)."""

    def __init__(
        self,
        network: MemoryNetwork,
        node_id: NodeId,
        peers: Iterable[NodeId],
        on_message: Callable[[Message], None],
        *,
        on_unreachable: Callable[[NodeId], None] | None = None,
        on_snapshot_status: Callable[[NodeId, bool], None] | None = None,
        on_client_frame: ClientHandler | None = None,
        max_queue: int = 4096,
        backoff_first: float = 0.05,
        backoff_max: float = 1.0,
        max_client_inflight: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        self.network = network
        self.node_id = node_id
        self.on_message = on_message
        self.on_unreachable = on_unreachable
        self.on_snapshot_status = on_snapshot_status
        self.on_client_frame = on_client_frame
        self.max_queue = max_queue
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.max_client_inflight = max_client_inflight
        self._rng = rng or random.Random()
        self._peers: dict[NodeId, _Peer] = {p: _Peer(p) for p in peers if p != node_id}
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._clients: set[MemoryClientConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    # -- membership ------------------------------------------------------------------------------

    def add_peer(self, node_id: NodeId) -> None:
        if node_id != self.node_id and node_id not in self._peers:
            self._peers[node_id] = _Peer(node_id)

    def remove_peer(self, node_id: NodeId) -> None:
        """Forget a peer: its queue is dropped and its messages are no longer accepted."""
        p = self._peers.pop(node_id, None)
        if p is not None and p.timer is not None:
            p.timer.cancel()

    # -- Transport -------------------------------------------------------------------------------

    def send(self, msgs: Iterable[Message]) -> None:
        stats = self._stats
        touched: set[_Peer] = set()
        for m in msgs:
            p = self._peers.get(m.to)
            if p is None:
                stats["unknown_destination"] += 1
                continue
            if len(p.queue) >= self.max_queue:
                old = p.queue.popleft()
                p.drops += 1
                stats["drops"] += 1
                if old.type == _SNAP:
                    self._report(self.on_snapshot_status, p.id, False)
            p.queue.append(m)
            touched.add(p)
        if self._running:
            for p in touched:
                if p.timer is None:  # else a flush or a retry will take the new messages
                    p.timer = self._loop.call_soon(self._flush, p)  # type: ignore[union-attr]

    async def start(self) -> None:
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self.network._join(self)
        self._running = True
        for p in self._peers.values():
            if p.queue and p.timer is None:
                p.timer = self._loop.call_soon(self._flush, p)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self.network._leave(self)
        for p in self._peers.values():
            if p.timer is not None:
                p.timer.cancel()
            p.timer = None
            p.queue.clear()
            p.epoch = 0
        clients = list(self._clients)
        for c in clients:
            c.close()
        await asyncio.gather(*(c._task for c in clients), return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._stats)
        out["peers"] = {
            p.id: {
                "connected": p.epoch != 0,
                "queued": len(p.queue),
                "drops": p.drops,
                "frames_out": p.frames_out,
                "reconnects": p.reconnects,
                "failures": p.failures,
            }
            for p in self._peers.values()
        }
        return out

    # -- outbound --------------------------------------------------------------------------------

    def _flush(self, p: _Peer) -> None:
        """Hand ``p``'s queue to the network, or report it unreachable and retry later."""
        p.timer = None
        if not self._running or self._peers.get(p.id) is not p or not p.queue:
            return
        network, stats = self.network, self._stats
        if not network.reachable(self.node_id, p.id):
            if p.epoch:
                stats["write_failures"] += 1  # the connection broke
            else:
                stats["connect_failures"] += 1
            p.epoch = 0
            p.failures += 1
            self._report(self.on_unreachable, p.id)
            p.timer = self._loop.call_later(self._backoff(p.attempt), self._flush, p)  # type: ignore[union-attr]
            p.attempt += 1
            return
        epoch = network._epoch(p.id)
        if p.epoch != epoch:  # (re)connect: the peer started, or restarted since
            stats["connects"] += 1
            if p.ever_connected:
                p.reconnects += 1
                stats["reconnects"] += 1
            p.ever_connected, p.epoch, p.attempt = True, epoch, 0
        msgs = list(p.queue)
        p.queue.clear()
        network._carry(self.node_id, p.id, msgs)
        p.frames_out += len(msgs)
        stats["frames_out"] += len(msgs)
        for m in msgs:
            if m.type == _SNAP:
                self._report(self.on_snapshot_status, p.id, True)

    def _connection_lost(self, peer: NodeId) -> None:
        """The network broke our connection to ``peer`` (it stopped, or the link was cut):
        report it at once, as TCP notices the closed socket, and retry after a backoff."""
        p = self._peers.get(peer)
        if p is None or not p.epoch or not self._running:
            return
        p.epoch = 0
        p.attempt += 1
        self._stats["write_failures"] += 1
        self._report(self.on_unreachable, peer)
        if p.timer is not None:
            p.timer.cancel()
        p.timer = self._loop.call_later(self._backoff(p.attempt), self._flush, p)  # type: ignore[union-attr]

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max, self.backoff_first * (2**attempt))
        return base * (0.5 + 0.5 * self._rng.random())

    def _report(self, fn: Callable[..., None] | None, *args: Any) -> None:
        """Run a callback on the next loop iteration (never inside ``send``), never raising."""
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

    # -- inbound ---------------------------------------------------------------------------------

    def _receive(self, src: NodeId, m: Message) -> bool:
        """Deliver one message; False if it breaks the protocol (the connection closes)."""
        stats = self._stats
        if src not in self._peers or m.frm != src or m.to != self.node_id:
            stats["protocol_errors"] += 1
            log.warning(
                "event=protocol_error node=%s from=%s message=%r->%r",
                self.node_id,
                src,
                m.frm,
                m.to,
            )
            return False
        stats["frames_in"] += 1
        try:
            self.on_message(m)
        except Exception:
            stats["callback_errors"] += 1
            log.exception("event=callback_error callback=on_message peer=%s", src)
        return True

    def _accept_client(self, client_id: str) -> MemoryClientConnection:
        conn = MemoryClientConnection(self, client_id)
        self._clients.add(conn)
        return conn


class MemoryClientConnection:
    """A client's connection to one ``MemoryTransport``: ``send`` requests, ``recv`` responses,
    ``close``. ``recv`` raises ``ConnectionError`` once the connection closed and nothing is
    left to read."""

    def __init__(self, transport: MemoryTransport, client_id: str) -> None:
        self.client_id = client_id
        self._transport = transport
        self._requests: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._responses: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(
            self._serve(), name=f"client-{transport.node_id}-{client_id}"
        )

    def send(self, body: bytes) -> None:
        if self.closed:
            raise ConnectionError("connection closed")
        self._requests.put_nowait(body)

    async def recv(self) -> bytes:
        body = await self._responses.get()
        if body is None:
            self._responses.put_nowait(None)  # every later recv fails too
            raise ConnectionError("connection closed")
        return body

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._requests.put_nowait(None)
        self._responses.put_nowait(None)

    async def _serve(self) -> None:
        """The server side: one request at a time into the handler, as TCP reads frames."""
        transport = self._transport
        handler = transport.on_client_frame
        assert handler is not None  # connect_client refuses otherwise
        stats = transport._stats
        inflight = asyncio.Semaphore(transport.max_client_inflight)
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()

        def respond(body: bytes) -> None:
            if self.closed:
                return
            self._responses.put_nowait(body)
            stats["client_responses"] += 1
            stats["frames_out"] += 1

        async def run(pending: Any) -> None:
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
            while (body := await self._requests.get()) is not None:
                stats["frames_in"] += 1
                pending = call_client_handler(handler, body, respond, stats, log)
                if pending is None:
                    continue
                await inflight.acquire()
                t = loop.create_task(run(pending))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        finally:
            self.close()
            for t in list(tasks):
                t.cancel()
            transport._clients.discard(self)
