"""``NodeServer``: a ``NodeHost`` wired to sockets, the durable storage and the real clock.

This is the only place with an event loop, a clock and sockets; everything between the core and
the outside world (the Ready loop, the applier, the tick and grace policy, the waiters of client
requests) is ``raft_node.host.node_host.NodeHost``, which the simulator drives too. The server
adds what needs asyncio:

- **wiring**: ``TcpTransport`` feeds peer messages into ``NodeHost.step`` and client frames into
  the request handler (``raft_node.host.requests``); the host sends through the transport.
- **scheduling**: one task ticks the host from the loop's monotonic clock; whenever an input may
  have produced a ``Ready``, the host's ``wake`` (``kick()``) schedules one ``_process`` call
  (coalesced, once per loop iteration), which runs ``NodeHost.process`` in the core's order:

      send messages_early -> Storage.save (write + fsync) -> send messages
      -> apply committed entries, answer clients, serve reads -> advance -> maybe snapshot

  The save runs on the loop thread. An fsync here costs ~0.1 ms; handing it to a thread costs
  about as much again in wake-ups on each side, on every hop of every write. Everything that
  arrives while it runs waits in the socket buffers and goes into the next ``Ready`` together,
  so one fsync covers it all (group commit). Leader appends (``messages_early``) are written to
  the sockets before the fsync, so followers persist in parallel with the leader. Snapshot
  files, which can be large, are written by ``Storage.prepare_snapshot`` in a worker thread
  (between the host's ``take_snapshot`` and ``save_snapshot``); only the small log mark is
  written on the loop.
- **supervision and shutdown**: a failed write or fsync is fatal: the node stops
  (``fatal_error`` is set and ``run`` returns), because a node that cannot persist must not keep
  voting or acknowledging. The same goes for every long-lived task of the process (the tick
  loop, the transport's peer writers, plugin tasks such as the Redis mirror, snapshot
  persistence): they run under ``spawn``, and one that raises (or a forever-task that returns)
  is logged with ``event=fatal`` and stops the node, so a bug or a bad value can never leave a
  zombie that listens but no longer ticks. ``NodeConfig`` checks types and ranges before
  anything starts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from raft_node.core.conf import ConfState
from raft_node.core.fsm import StateMachine
from raft_node.core.messages import Message
from raft_node.core.raft import Config
from raft_node.host.config import NodeConfig, parse_address
from raft_node.host.events import event
from raft_node.host.inputs import SYSTEM_CLOCK, HostSettings
from raft_node.host.members import addresses_of
from raft_node.host.metrics import NodeMetrics
from raft_node.host.node_host import NodeHost
from raft_node.host.requests import RequestHandler
from raft_node.host.waiters import UNAVAILABLE
from raft_node.storage.protocol import Storage
from raft_node.transport.tcp import TcpTransport

log = logging.getLogger("raft_node.server")


class NodePlugin(Protocol):
    """A leader-side helper run by the node process (e.g. ``coordination``'s Redis mirror). It
    reads the host (``server.host``: ``is_leader``, ``apply_listeners``, ...) and starts its
    background tasks with ``server.spawn`` so that a crash in them stops the node."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Outbound:
    """The host's transport. The ``TcpTransport`` is built after the host (its callbacks are
    the host's own methods), so the host sends through this forwarder."""

    __slots__ = ("tcp",)

    def __init__(self) -> None:
        self.tcp: TcpTransport | None = None

    def send(self, messages: Sequence[Message]) -> None:
        assert self.tcp is not None
        self.tcp.send(messages)

    def flush_responses(self) -> None:
        flush = getattr(self.tcp, "flush_responses", None)  # the in-memory twin answers at once
        if flush is not None:
            flush()


class NodeServer:
    def __init__(
        self,
        config: NodeConfig,
        state_machine: StateMachine,
        storage: Storage | None = None,
    ) -> None:
        self.config = config
        self.id = config.node_id
        # Incoming snapshot chunks go to files next to the storage the server owns; with a storage
        # given by the caller (tests, in-memory), to the system's temporary directory.
        incoming = config.data_dir / "incoming" if storage is None else None
        if storage is None:
            from raft_node.storage.durable import DurableStorage

            storage = DurableStorage(config.data_dir, fsync=config.fsync)
        self.storage = storage
        self.metrics = NodeMetrics(self.id)
        self.metrics.fsync_enabled.set(1 if config.fsync else 0)
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        outbound = _Outbound()
        self.host = NodeHost(
            Config(
                id=self.id,
                voters=list(config.voters or config.cluster),
                rng=random.Random(),
                election_tick=config.election_ticks,
                heartbeat_tick=config.heartbeat_ticks,
                max_inflight=config.max_inflight,
            ),
            state_machine,
            storage,
            outbound,
            SYSTEM_CLOCK,
            settings=HostSettings(
                snapshot_every=config.snapshot_every,
                snapshot_keep=config.snapshot_keep,
                request_timeout=config.request_timeout,
            ),
            metrics=self.metrics,
            wake=self.kick,
        )
        self.requests = RequestHandler(self.host, config)
        self.transport = TcpTransport(
            self.id,
            config.cluster,
            config.secret,
            self.host.step,  # a message the core refuses is logged by the transport
            on_unreachable=self.host.report_unreachable,
            on_snapshot_status=self.host.report_snapshot,
            on_client_frame=self.requests.handle_frame,
            listen=config.listen,
            ssl_server=config.ssl_server,
            ssl_client=config.ssl_client,
            max_frame_bytes=config.max_frame_bytes,
            max_peer_frame_bytes=config.max_peer_frame_bytes,
            snapshot_chunk_bytes=config.snapshot_chunk_bytes,
            snapshot_dir=incoming,
            on_fatal=self.fail,
            on_peer_batch=self._process_now,
            on_peer_closed=self.host.report_peer_closed,
        )
        outbound.tcp = self.transport
        self.host.conf_listeners.append(self._use_configuration)
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"raft-io-{self.id}")
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.fatal_error: BaseException | None = None
        self.plugins: list[NodePlugin] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def _use_configuration(self, conf: ConfState) -> None:
        """Reach the members of the configuration in force, at the addresses it carries, and
        no one else (a removed node can no longer dial in, nor be dialled)."""
        addresses = addresses_of(conf, self.config.cluster)
        for node, text in addresses.items():
            addr = parse_address(text)
            if node != self.id and self.config.cluster.get(node) != addr:
                self.config.cluster[node] = addr
                self.transport.add_peer(node, addr)
                event(logging.INFO, "member_address", node=self.id, member=node, address=text)
        for node in [n for n in self.config.cluster if n not in addresses and n != self.id]:
            self.transport.remove_peer(node)
            del self.config.cluster[node]
            event(logging.INFO, "member_gone", node=self.id, member=node)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._use_configuration(self.host.configuration)  # the one in the log, if any
        await self.transport.start()
        if self.config.metrics_port is not None:
            host = (self.config.listen or self.config.cluster[self.id])[0]
            self.metrics.serve(self.config.metrics_port, host)
        self.spawn(self._tick_loop(), f"tick-{self.id}")
        for plugin in self.plugins:
            await plugin.start()
        self.kick()
        status = self.host.raw.status()
        event(
            logging.INFO,
            "node_started",
            node=self.id,
            address=self.requests.address_str(self.id),
            term=status.term,
            commit=status.commit,
            snapshot=status.snapshot_index,
        )

    async def run(self) -> None:
        """Start, then serve until ``stop()`` is called or a fatal error happens. A failure to
        start (port taken, a plugin that cannot start) is fatal too: ``fatal_error`` is set."""
        try:
            await self.start()
        except Exception as exc:
            self.fail(exc, "start")
        await self._stopping.wait()
        await self._shutdown()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, forever: bool = True
    ) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this node, supervised: if it raises, or if a ``forever``
        task returns while the node is running, the node stops with ``fatal_error`` set (the
        process then exits non-zero). Plugins start their background tasks with this."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._task_done(t, forever))
        return task

    def _task_done(self, task: asyncio.Task[Any], forever: bool) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None and (not forever or self._stopping.is_set()):
            return
        name = task.get_name()
        self.fail(exc or RuntimeError(f"task {name} ended unexpectedly"), name)

    def fail(self, exc: BaseException, where: str) -> None:
        """A fatal error: log it (``event=fatal``) and stop the node; the first one is kept in
        ``fatal_error``. Also given to the transport for its peer tasks."""
        if self.fatal_error is None:
            self.fatal_error = exc
        # OSError at start (port taken, unreadable file) needs no traceback; anything else does.
        trace = None if isinstance(exc, OSError) and where == "start" else exc
        log.critical("event=fatal node=%s task=%s error=%r", self.id, where, exc, exc_info=trace)
        self.stop()

    def stop(self) -> None:
        self._stopping.set()

    async def graceful_stop(self, timeout: float = 3.0) -> None:
        """SIGTERM path: hand leadership to the most caught-up follower first."""
        host = self.host
        target = host.best_transfer_target()
        if target is not None:
            event(logging.INFO, "transfer_on_shutdown", node=self.id, to=target)
            host.transfer(target)
            deadline = time.monotonic() + timeout
            while host.is_leader and time.monotonic() < deadline:
                await asyncio.sleep(self.config.tick_ms / 1000)
        self.stop()

    def reload_tls(self) -> bool:
        """Re-read the certificate files (SIGHUP) and use them without a restart: new inbound
        connections get the new server context, peer and forwarding connections are re-dialled
        with the new client context. A file that cannot be loaded (half-copied, wrong key)
        keeps the old contexts and logs ``tls_reload_failed``: a bad rotation step must not
        take the node off the network. Answers whether the new files are in use."""
        build = self.config.tls_reload
        if build is None:
            event(logging.WARNING, "tls_reload_skipped", node=self.id, reason="'TLS is off'")
            return False
        try:
            server_ssl, client_ssl = build()
        except Exception as exc:
            event(logging.ERROR, "tls_reload_failed", node=self.id, reason=repr(str(exc)))
            return False
        self.config.ssl_server, self.config.ssl_client = server_ssl, client_ssl
        self.transport.set_tls(server_ssl, client_ssl)
        self.requests.drop_forward_connections()
        cas = len(server_ssl.get_ca_certs()) if server_ssl is not None else 0
        event(logging.INFO, "tls_reloaded", node=self.id, ca_certs=cas)
        return True

    async def _shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.host.fail_waiters(UNAVAILABLE, "node is shutting down")
        for plugin in self.plugins:
            await plugin.stop()
        await self.transport.stop()
        self._io.shutdown(wait=True)
        close = getattr(self.storage, "close", None)
        if close is not None:
            close()
        event(logging.INFO, "node_stopped", node=self.id, fatal=self.fatal_error is not None)

    # -- inputs --------------------------------------------------------------------------------

    def kick(self) -> None:
        """Something may have produced a Ready: handle it soon (once per loop iteration)."""
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._process)

    def _process_now(self) -> None:
        """A peer's messages were just stepped: handle the Ready now rather than a loop
        iteration later. On the path of every write (a follower's append, the leader's acks),
        that was one more pass through the event loop per hop (a selector call, and whatever
        callbacks were queued meanwhile). Client requests still gather for one iteration
        (``kick``): they batch into one synced write."""
        if self._loop is not None and self.fatal_error is None:
            self._process()

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_ms / 1000
        next_at = loop.time() + interval
        host = self.host
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            # After a stall (GC, SIGSTOP) tick once and resynchronise rather than bursting.
            next_at = max(next_at + interval, now + interval / 2)
            host.tick()

    # -- Ready handling ------------------------------------------------------------------------

    def _process(self) -> None:
        self._scheduled = False
        if self.fatal_error is not None:
            return
        try:
            self.host.process()
            if self.host.snapshot_due():
                started, cpu = time.perf_counter(), time.thread_time()
                snap = self.host.take_snapshot()
                # The serialisation holds this loop, so it is logged apart from the total (which
                # also covers the file's write and fsync in the I/O thread), with its CPU time:
                # on a shared machine the wall time also counts waiting for a core.
                serialized = (time.perf_counter() - started, time.thread_time() - cpu)
                self.spawn(
                    self._persist_snapshot(snap, started, serialized),
                    f"snapshot-{self.id}",
                    forever=False,
                )
        except Exception as exc:
            self.fail(exc, "ready")

    async def _persist_snapshot(
        self, snap: Any, started: float, serialized: tuple[float, float]
    ) -> None:
        """File in the I/O thread, then mark and compaction on the loop (ordered with saves)."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._io, self.storage.prepare_snapshot, snap
            )
        except Exception as exc:
            self.host.abandon_snapshot()
            self.fail(exc, "snapshot")
            return
        try:
            self.host.save_snapshot(snap)
        except Exception as exc:
            self.fail(exc, "snapshot")
            return
        event(
            logging.INFO,
            "snapshot_taken",
            node=self.id,
            index=snap.index,
            bytes=len(snap.data),
            ms=round((time.perf_counter() - started) * 1000, 1),
            serialize_ms=round(serialized[0] * 1000, 1),
            serialize_cpu_ms=round(serialized[1] * 1000, 1),
        )

    # -- for the request layer and tools -------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.requests.status()
