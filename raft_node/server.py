"""``NodeServer``: the asyncio host that turns the sans-I/O core into a node process.

This is the only place with an event loop, a clock and sockets. One task ticks the core from
the loop's monotonic clock; the transport feeds peer messages into ``RawNode.step`` and client
requests into the request handlers (``raft_node.host.requests``). Whenever an input may have
produced a ``Ready``, ``kick()`` schedules one ``_process`` call (coalesced), which handles every
pending ``Ready`` in the core's documented order:

    send messages_early -> Storage.save (write + fsync) -> send messages
    -> apply committed entries, answer clients, serve reads -> advance -> maybe snapshot

The save runs on the loop thread. An fsync here costs ~0.1 ms; handing it to a thread costs
about as much again in wake-ups on each side, on every hop of every write. Everything that
arrives while it runs waits in the socket buffers and goes into the next ``Ready`` together, so
one fsync covers it all (group commit). Leader appends (``messages_early``) are written to the
sockets before the fsync, so followers persist in parallel with the leader. Snapshot files, which
can be large, are written by ``Storage.prepare_snapshot`` in a worker thread; only the small log
mark is written on the loop.

A failed write or fsync is fatal: the node stops (``fatal_error`` is set and ``run`` returns),
because a node that cannot persist must not keep voting or acknowledging. The same goes for every
long-lived task of the process (the tick loop, the transport's peer writers, plugin tasks such as
the Redis mirror, snapshot persistence): they run under ``spawn``, and one that raises (or a
forever-task that returns) is logged with ``event=fatal`` and stops the node, so a bug or a bad
value can never leave a zombie that listens but no longer ticks. ``NodeConfig`` checks types and
ranges before anything starts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft_node.core.fsm import StateMachine
from raft_node.core.leader import ProposalDropped
from raft_node.core.messages import NONE, Message, NodeId
from raft_node.core.raft import Config
from raft_node.core.rawnode import RawNode
from raft_node.core.ready import Ready, Role
from raft_node.host.applier import SYSTEM, Applier, Outcome, encode_command
from raft_node.host.metrics import NodeMetrics
from raft_node.storage.protocol import PersistentState, Storage
from raft_node.transport.tcp import TcpTransport

log = logging.getLogger("raft_node.server")

Address = tuple[str, int]


def event(level: int, name: str, **fields: Any) -> None:
    """One structured log line: ``event=name key=value ...`` (fields also in ``extra``)."""
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    log.log(level, "event=%s %s", name, text, extra={"event": name, **fields})


def parse_cluster(spec: str) -> dict[NodeId, Address]:
    """``"n1=127.0.0.1:7001,n2=127.0.0.1:7002"`` -> ``{"n1": ("127.0.0.1", 7001), ...}``."""
    cluster: dict[NodeId, Address] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        node, sep, addr = part.partition("=")
        host, colon, port = addr.rpartition(":")
        if not sep or not colon or not node or not host or not port.isdigit():
            raise ValueError(f"bad cluster member {part!r}: expected id=host:port")
        if node in cluster:
            raise ValueError(f"node id {node!r} appears twice in the cluster")
        cluster[node] = (host, int(port))
    if not cluster:
        raise ValueError("cluster is empty")
    return cluster


@dataclass
class NodeConfig:
    node_id: NodeId
    cluster: dict[NodeId, Address]
    data_dir: Path
    secret: bytes
    tick_ms: int = 10
    election_ticks: int = 15
    heartbeat_ticks: int = 2
    snapshot_every: int = 100_000
    snapshot_keep: int = 5_000
    max_frame_bytes: int = 4 << 20
    max_peer_frame_bytes: int = 512 << 20  # snapshots travel as one peer message
    max_inflight: int = 256
    fsync: bool = True
    request_timeout: float = 5.0
    metrics_port: int | None = None
    ssl_server: Any = None
    ssl_client: Any = None
    listen: Address | None = None  # default: this node's address in ``cluster``
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a config the node could not run with, naming the field, before anything
        starts (a wrong type here used to surface only inside a background task)."""
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"NodeConfig.node_id must be a non-empty string, got {self.node_id!r}")
        if not isinstance(self.cluster, dict) or not self.cluster:
            raise ValueError("NodeConfig.cluster must be a non-empty dict of id -> (host, port)")
        addresses = [(f"cluster[{node!r}]", addr) for node, addr in self.cluster.items()]
        if self.listen is not None:
            addresses.append(("listen", self.listen))
        for name, addr in addresses:
            if not _is_address(addr):
                raise ValueError(f"NodeConfig.{name} must be (host, port), got {addr!r}")
        if self.node_id not in self.cluster:
            raise ValueError(f"node id {self.node_id!r} is not in the cluster {list(self.cluster)}")
        if not isinstance(self.secret, bytes) or not self.secret:
            raise ValueError("a cluster secret is required (NodeConfig.secret: non-empty bytes)")
        self.data_dir = Path(self.data_dir)
        for name in (
            "tick_ms",
            "election_ticks",
            "heartbeat_ticks",
            "snapshot_every",
            "max_frame_bytes",
            "max_peer_frame_bytes",
            "max_inflight",
        ):
            _check_int(name, getattr(self, name), low=1)
        _check_int("snapshot_keep", self.snapshot_keep, low=0)
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError("NodeConfig: heartbeat_ticks must be less than election_ticks")
        if self.metrics_port is not None:
            _check_int("metrics_port", self.metrics_port, low=0, high=65535)
        timeout = self.request_timeout
        if not (_is_number(timeout) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"NodeConfig.request_timeout must be a number > 0, got {timeout!r}")
        if not isinstance(self.fsync, bool):
            raise ValueError(f"NodeConfig.fsync must be a bool, got {self.fsync!r}")


def _is_address(addr: Any) -> bool:
    return (
        isinstance(addr, tuple)
        and len(addr) == 2
        and isinstance(addr[0], str)
        and _is_int(addr[1])
        and 0 <= addr[1] <= 65535
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"NodeConfig.{name} must be an integer {bound}, got {value!r}")


class _Preloaded:
    """Hands the core the state the server already loaded (``load()`` reads the whole log)."""

    def __init__(self, storage: Storage, state: PersistentState) -> None:
        self._storage, self._state = storage, state

    def load(self) -> PersistentState:
        return self._state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


class NodeServer:
    def __init__(
        self,
        config: NodeConfig,
        state_machine: StateMachine,
        storage: Storage | None = None,
    ) -> None:
        from raft_node.host.requests import RequestHandler  # request layer sits on top of us

        self.config = config
        self.id = config.node_id
        if storage is None:
            from raft_node.storage.durable import DurableStorage

            storage = DurableStorage(config.data_dir, fsync=config.fsync)
        self.storage = storage
        state = storage.load()
        self.applier = Applier(state_machine)
        if state.snapshot.index:
            self.applier.restore(state.snapshot.data)
        self.raw = RawNode(
            Config(
                id=self.id,
                voters=list(config.cluster),
                rng=random.Random(),
                election_tick=config.election_ticks,
                heartbeat_tick=config.heartbeat_ticks,
                max_inflight=config.max_inflight,
            ),
            _Preloaded(storage, state),
        )
        self.metrics = NodeMetrics(self.id)
        self.requests = RequestHandler(self)
        self.transport = TcpTransport(
            self.id,
            config.cluster,
            config.secret,
            self._on_message,
            on_unreachable=self.raw.report_unreachable,
            on_snapshot_status=lambda peer, ok: self._report(self.raw.report_snapshot, peer, ok),
            on_client_frame=self.requests.handle_frame,
            listen=config.listen,
            ssl_server=config.ssl_server,
            ssl_client=config.ssl_client,
            max_frame_bytes=config.max_frame_bytes,
            max_peer_frame_bytes=config.max_peer_frame_bytes,
            on_fatal=self.fail,
        )
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"raft-io-{self.id}")
        self._scheduled = False
        self._snapshotting = False
        self._tick_index = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._role = self.raw.raft.role
        self._lead = self.raw.raft.lead
        self.last_contact: dict[NodeId, float] = {}
        self.fatal_error: BaseException | None = None
        self.apply_listeners: list[Callable[[int], None]] = []
        self.plugins: list[Any] = []  # objects with ``async start()`` / ``async stop()``
        self._drain_events = getattr(state_machine, "drain_events", None)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.transport.start()
        if self.config.metrics_port is not None:
            host = (self.config.listen or self.config.cluster[self.id])[0]
            self.metrics.serve(self.config.metrics_port, host)
        self.spawn(self._tick_loop(), f"tick-{self.id}")
        for plugin in self.plugins:
            await plugin.start()
        self.kick()
        event(
            logging.INFO,
            "node_started",
            node=self.id,
            address=self.address_str(self.id),
            term=self.raw.raft.term,
            commit=self.raw.raft.log.committed,
            snapshot=self.raw.raft.log.snapshot.index,
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
        raft = self.raw.raft
        if raft.role == Role.LEADER and len(self.config.cluster) > 1:
            target = max((p for p in raft.prs if p != self.id), key=lambda p: raft.prs[p].match)
            event(logging.INFO, "transfer_on_shutdown", node=self.id, to=target)
            self.raw.transfer_leadership(target)
            self.kick()
            deadline = time.monotonic() + timeout
            while raft.role == Role.LEADER and time.monotonic() < deadline:
                await asyncio.sleep(self.config.tick_ms / 1000)
        self.stop()

    async def _shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.requests.fail_all("unavailable", "node is shutting down")
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

    def _on_message(self, m: Message) -> None:
        self.last_contact[m.frm] = time.monotonic()
        try:
            self.raw.step(m)
        except Exception:  # an authenticated peer sent something the core refuses: a bug
            log.exception("event=step_failed node=%s from=%s type=%s", self.id, m.frm, m.type)
            return
        self.kick()

    def _report(self, fn: Callable[[NodeId, bool], None], peer: NodeId, ok: bool) -> None:
        fn(peer, ok)
        self.kick()

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_ms / 1000
        next_at = loop.time() + interval
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            # After a stall (GC, SIGSTOP) tick once and resynchronise rather than bursting.
            next_at = max(next_at + interval, now + interval / 2)
            self.raw.tick()
            if self.is_leader:
                self._maybe_propose_tick()
            self.kick()

    # -- Ready handling ------------------------------------------------------------------------

    def _process(self) -> None:
        self._scheduled = False
        if self.fatal_error is not None:
            return
        try:
            while self.raw.has_ready():
                self._handle_ready(self.raw.ready())
            self._maybe_snapshot()
        except Exception as exc:
            self.fail(exc, "ready")

    def _handle_ready(self, rd: Ready) -> None:
        if rd.messages_early:
            self.transport.send(rd.messages_early)
        if rd.must_sync:
            started = time.perf_counter()
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot)
            self.metrics.fsync_seconds.observe(time.perf_counter() - started)
        elif rd.must_write:
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot, sync=False)
            if rd.entries:
                self.metrics.batch_entries.observe(len(rd.entries))
        if rd.messages:
            self.transport.send(rd.messages)
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.lead)
        if rd.snapshot is not None:
            self.applier.restore(rd.snapshot.data)
            event(logging.INFO, "snapshot_installed", node=self.id, index=rd.snapshot.index)
        outcomes: list[Outcome] = []
        drain_events = self._drain_events
        for entry in rd.committed_entries:
            outcomes.extend(self.applier.apply(entry))
            if drain_events is not None:
                for topic, payload in drain_events():
                    self.requests.publish(entry.index, topic, payload)
        self.raw.advance(rd)
        if outcomes:
            self.requests.on_outcomes(outcomes)
        if rd.read_states:
            self.requests.on_read_states(rd.read_states)
        if rd.committed_entries or rd.snapshot is not None:
            self.requests.on_applied(self.applier.applied_index)
            for listener in self.apply_listeners:
                listener(self.applier.applied_index)
        raft = self.raw.raft
        self.metrics.observe_status(
            raft.role, raft.term, raft.log.committed, raft.log.applied, raft.log.snapshot.index
        )

    def propose_system(self, body: bytes) -> int | None:
        """Propose a leader-originated command (no client, no dedup); returns its index."""
        data = encode_command(SYSTEM, 0, time.time_ns() // 1_000_000, body)
        try:
            index, _ = self.raw.propose(data)
        except ProposalDropped:
            return None
        self.kick()
        return index

    def _maybe_propose_tick(self) -> None:
        """Time-based changes (session expiry, lease and wait timeouts, TTLs) happen by an entry
        the leader proposes once its clock passes the state machine's next deadline."""
        if self._tick_index and self.applier.applied_index < self._tick_index:
            return  # one tick in flight at a time
        deadline = self.applier.next_deadline()
        if deadline is None or deadline > time.time_ns() // 1_000_000:
            return
        command = self.applier.tick_command()
        if command is not None:
            self._tick_index = self.propose_system(command) or 0

    def _on_soft_state(self, role: Role, lead: NodeId) -> None:
        if role == Role.LEADER and self._role != Role.LEADER:
            self._tick_index = 0
            command = self.applier.leader_command()
            if command is not None:
                self.propose_system(command)
        if role != self._role:
            self.metrics.role_changes.inc()
            if role == Role.LEADER:
                self.metrics.elections.inc()
            event(
                logging.INFO,
                "role_change",
                node=self.id,
                role=role.name,
                previous=self._role.name,
                term=self.raw.raft.term,
            )
            if self._role == Role.LEADER:
                self.requests.on_lost_leadership()
        if lead != self._lead:
            event(
                logging.INFO,
                "leader_change",
                node=self.id,
                leader=lead or "none",
                term=self.raw.raft.term,
            )
        self._role, self._lead = role, lead

    def _maybe_snapshot(self) -> None:
        log_ = self.raw.raft.log
        if self._snapshotting or log_.applied - log_.snapshot.index < self.config.snapshot_every:
            return
        self._snapshotting = True
        started = time.perf_counter()
        snap = self.raw.compact(log_.applied, self.applier.snapshot(), self.config.snapshot_keep)
        self.spawn(self._persist_snapshot(snap, started), f"snapshot-{self.id}", forever=False)

    async def _persist_snapshot(self, snap: Any, started: float) -> None:
        """File in the I/O thread, then mark and compaction on the loop (ordered with saves)."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._io, self.storage.prepare_snapshot, snap
            )
            if snap.index >= self.raw.raft.log.snapshot.index:  # not overtaken by an install
                self.storage.save_snapshot(snap)
                self.storage.compact(min(self.raw.raft.log.offset, snap.index))
        except Exception as exc:
            self.fail(exc, "snapshot")
            return
        finally:
            self._snapshotting = False
        event(
            logging.INFO,
            "snapshot_taken",
            node=self.id,
            index=snap.index,
            bytes=len(snap.data),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    # -- helpers for the request layer ---------------------------------------------------------

    def address_str(self, node: NodeId) -> str:
        if node == NONE or node not in self.config.cluster:
            return ""
        host, port = self.config.cluster[node]
        return f"{host}:{port}"

    def leader_hint(self) -> str:
        return self.address_str(self.raw.raft.lead)

    @property
    def is_leader(self) -> bool:
        return self.raw.raft.role == Role.LEADER

    def status(self) -> dict[str, Any]:
        raft = self.raw.raft
        now = time.monotonic()
        last_index = raft.log.last_index()
        status: dict[str, Any] = {
            "id": self.id,
            "address": self.address_str(self.id),
            "role": raft.role.name.lower(),
            "term": raft.term,
            "leader": raft.lead,
            "leader_address": self.leader_hint(),
            "commit": raft.log.committed,
            "applied": raft.log.applied,
            "last_index": last_index,
            "snapshot_index": raft.log.snapshot.index,
            "last_contact_ms": None,
            "peers": {},
        }
        if raft.lead and raft.lead != self.id and raft.lead in self.last_contact:
            status["last_contact_ms"] = round((now - self.last_contact[raft.lead]) * 1000)
        if raft.role == Role.LEADER:
            for peer, pr in raft.prs.items():
                if peer == self.id:
                    continue
                seen = self.last_contact.get(peer)
                lag = max(0, last_index - pr.match)
                self.metrics.follower_lag.labels(peer=peer).set(lag)
                status["peers"][peer] = {
                    "match": pr.match,
                    "lag": lag,
                    "state": pr.state.name.lower(),
                    "last_contact_ms": None if seen is None else round((now - seen) * 1000),
                }
        return status
