"""``NodeHost``: everything between ``RawNode`` and the outside world, written once.

The asyncio server (``raft_node.server``) and the simulator (``raft_node.sim``) both drive this
class, so the simulator tests the host code that production runs. A host holds:

- **the Ready loop**, in the core's documented order (``raft_node.core.ready``)::

      send messages_early -> Storage.save (write + fsync) -> send messages
      -> apply committed entries (Applier: exactly-once, log clock), publish their events
      -> advance -> answer waiting proposals, serve reads -> apply listeners

  and, after it, "maybe snapshot" as separate steps (``take_snapshot`` / ``save_snapshot``), so
  the server can write a large snapshot file in a worker thread between them;
- **the tick and grace policy**: a leader proposes the state machine's tick command once the
  log clock would pass its next deadline (one at a time), and a new leader proposes its grace
  command (``leader_command``) before anything else;
- **the waiters** of client requests and the event-stream subscribers
  (``raft_node.host.waiters``), and hooks for leader-side plugins (``apply_listeners``, which
  the Redis mirror uses, and ``is_leader``).

Inputs are plain objects, so a simulator can drive it synchronously: a ``transport`` with
``send(messages)`` (the transport calls back ``step``, ``report_unreachable`` and
``report_snapshot``), a ``Storage``, and a ``Clock``. Nothing here has an event loop, a thread
or a socket. ``wake`` is called whenever an input may have produced a ``Ready``: the server
schedules ``process`` on its loop (coalesced); the simulator calls ``process`` itself.

Any exception from the Ready loop propagates: the server treats it as fatal (a node that cannot
persist must not keep voting), the simulator injects crashes and reports safety violations
through it (``ReadyHooks``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from raft_node.core.conf import ConfChange, ConfState
from raft_node.core.fsm import CommandRejected, StateMachine
from raft_node.core.leader import ProposalDropped
from raft_node.core.messages import NONE, Message, NodeId, Snapshot
from raft_node.core.raft import Config, Raft
from raft_node.core.rawnode import RawNode
from raft_node.core.ready import Ready, Role
from raft_node.host.applier import SYSTEM, Applier, Outcome, encode_command
from raft_node.host.events import event, log
from raft_node.host.inputs import SYSTEM_CLOCK, Clock, HostSettings, ReadyHooks, Transport
from raft_node.host.log_clock import LeaderClock
from raft_node.host.metrics import NodeMetrics
from raft_node.host.node_status import node_status
from raft_node.host.waiters import NOT_LEADER, Subscriber, Wait, Waiters, fail
from raft_node.storage.protocol import PersistentState, Storage

__all__ = ["NodeHost", "ProposalDropped"]


class _Preloaded:
    """Hands the core the state the host already loaded (``load()`` reads the whole log)."""

    def __init__(self, storage: Storage, state: PersistentState) -> None:
        self._storage, self._state = storage, state

    def load(self) -> PersistentState:
        return self._state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


def _nothing() -> None:
    pass


class NodeHost:
    """One Raft node's host: ``RawNode`` + applier + policy + waiters (see the module doc)."""

    def __init__(
        self,
        raft: Config,
        state_machine: StateMachine,
        storage: Storage,
        transport: Transport,
        clock: Clock = SYSTEM_CLOCK,
        *,
        settings: HostSettings | None = None,
        metrics: NodeMetrics | None = None,
        hooks: ReadyHooks | None = None,
        wake: Callable[[], None] = _nothing,
        raft_class: type[Raft] = Raft,
    ) -> None:
        """Load ``storage``, restore the state machine from its snapshot, build the core.

        ``raft_class`` lets the simulator run a deliberately broken protocol; production never
        passes it."""
        self.id = raft.id
        self.settings = settings or HostSettings()
        self.storage = storage
        self.transport = transport
        # A transport that batches client responses per loop iteration may offer to write them
        # at once (TCP does); a leader calls it right after applying (``_handle_ready``).
        self._flush_responses: Callable[[], None] | None = getattr(
            transport, "flush_responses", None
        )
        self.clock = clock
        self.metrics = metrics or NodeMetrics(raft.id, enabled=False)
        self.hooks = hooks
        self.wake = wake
        state = storage.load()
        self.applier = Applier(state_machine)
        if state.snapshot.index:
            self.applier.restore(state.snapshot.data)
        self.raw = RawNode(raft, _Preloaded(storage, state), raft_class)
        self._stamp = LeaderClock(clock.wall_ms, clock.monotonic, lambda: self.applier.now_ms)
        self._waiters = Waiters(
            self.id,
            clock.monotonic,
            self.settings.request_timeout,
            self.metrics,
            self._start_read_round,
            self.query,
            raft.rng.randrange(0, 1 << 32),
        )
        self._drain_events = getattr(state_machine, "drain_events", None)
        self._validate: Callable[[bytes], None] | None = getattr(state_machine, "validate", None)
        self._processing = False
        self._snapshotting = False
        self._tick_index = 0  # index of the tick command in flight (0: none)
        self._role = self.raw.raft.role
        self._lead = self.raw.raft.lead
        self.last_contact: dict[NodeId, float] = {}
        self.apply_listeners: list[Callable[[int], None]] = []  # plugins: after each batch
        # Called with the configuration in force whenever it changes (before the Ready that
        # follows is sent: a new member's address must be known to reach it).
        self.conf_listeners: list[Callable[[ConfState], None]] = []
        # Called with the new leader (NONE: none known) whenever this node's view of it changes.
        self.leader_listeners: list[Callable[[NodeId], None]] = []
        self._conf = self.raw.raft.conf

    # -- what the request handler and plugins read ---------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.raw.raft.role == Role.LEADER

    @property
    def leader(self) -> NodeId:
        """The leader this node knows of ("" if none)."""
        return self.raw.raft.lead

    @property
    def term(self) -> int:
        return self.raw.raft.term

    @property
    def applied_index(self) -> int:
        return self.applier.applied_index

    @property
    def log_time_ms(self) -> int:
        """The log clock: the newest leader stamp applied (never goes backwards)."""
        return self.applier.now_ms

    @property
    def state_machine(self) -> Any:
        return self.applier.sm

    @property
    def waiting(self) -> int:
        """Requests waiting on this node (for back-pressure)."""
        return len(self._waiters)

    # -- inputs from the transport and the clock -----------------------------------------------

    def step(self, m: Message) -> None:
        """A message from a peer. Raises if the core refuses it (the caller decides whether
        that is a peer's bug to log, or, in the simulator, a failure)."""
        self.last_contact[m.frm] = self.clock.monotonic()
        self.raw.step(m)
        self.wake()

    def report_unreachable(self, peer: NodeId) -> None:
        self.raw.report_unreachable(peer)
        self.wake()

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        self.raw.report_snapshot(peer, ok)
        self.wake()

    def report_peer_closed(self, peer: NodeId) -> None:
        """``peer``'s process closed its connection (EOF or reset): a follower whose leader
        that is elects a new one soon (``Raft.suspect_leader``)."""
        raft = self.raw.raft
        suspected = raft.lead_suspect
        self.raw.report_peer_closed(peer)
        if raft.lead_suspect and not suspected:
            event(logging.INFO, "leader_connection_closed", node=self.id, leader=peer)
        self.wake()

    def tick(self) -> None:
        """One tick of the core; a leader may propose the state machine's tick; expire waits.

        Only once the host has seen its own leadership (``_on_soft_state``, which proposes the
        grace command first): the core may have become leader since the last ``Ready`` (votes
        arrive by ``step``), and a tick proposed then would land *before* the grace and expire
        every session whose deadline passed during the election (or, after a restore, while
        the cluster was down), which is what the grace is for."""
        self.raw.tick()
        if self._role == Role.LEADER and self.raw.raft.role == Role.LEADER:
            self._maybe_propose_tick()
        if self._waiters.busy:
            self._waiters.sweep(self.clock.monotonic())
        self.wake()

    # -- client requests -----------------------------------------------------------------------

    def propose(self, client_id: str, seq: int, body: bytes, wait: Wait | None = None) -> None:
        """Propose a client command (leader only; raises ``ProposalDropped`` with the known
        leader otherwise). ``wait`` is answered with the outcome for ``(client_id, seq)``, or
        failed on timeout, lost leadership or shutdown; without it nobody is answered.

        A leader first lets the state machine's ``validate`` hook (if any) refuse the body: a
        refused command is answered at once with the rejection and appends nothing, so an
        authenticated client sending garbage costs no log entry on every replica. (Nothing is
        recorded for its ``seq`` either: a retry is refused again by the same check.)"""
        checked = self._validate is not None and self.raw.raft.role == Role.LEADER
        if checked and self._refused(body, wait):
            return
        self.raw.propose(encode_command(client_id, seq, self._stamp.now_ms(), body))
        if wait is not None:
            self._waiters.add_proposal(client_id, seq, wait)
        self.metrics.proposals.inc()
        self.wake()

    def _refused(self, body: bytes, wait: Wait | None) -> bool:
        """Whether ``validate`` refused ``body`` (``wait`` is then answered with it). A bug in
        the hook (any other exception) is logged and the command proposed: ``apply`` checks
        every command anyway, and a broken pre-check must not make the cluster unusable."""
        assert self._validate is not None
        try:
            self._validate(body)
        except CommandRejected as exc:
            self.metrics.proposals_refused.inc()
            if wait is not None:  # not registered with the waiters: answered here only
                wait.finished = True
                wait.done(False, exc.record())
            return True
        except Exception:
            log.exception("event=validate_failed node=%s", self.id)
        return False

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int, ConfState]:
        """Propose one membership change (leader only): ``(index, term, configuration)`` of its
        entry, in force here at once; it is done when ``applied_index`` reaches ``index`` with
        the entry there still of ``term`` (``conf_change_outcome``). Raises
        ``ConfChangeRefused``."""
        index, conf = self.raw.propose_conf_change(change)
        return index, self.raw.raft.term, conf

    def conf_change_outcome(self, index: int, term: int) -> bool | None:
        """For a change proposed at ``(index, term)``: True once applied, False if another
        entry took its place (leadership moved before it committed), None while undecided."""
        log_ = self.raw.raft.log
        at = log_.term(index)
        if self.applier.applied_index < index:
            return None if at == term else False  # gone (None) or replaced: not committed
        return True if at is None else at == term  # compacted: it was applied, so committed

    @property
    def configuration(self) -> ConfState:
        """The membership in force on this node (the latest in its log)."""
        return self.raw.raft.conf

    def propose_system(self, body: bytes) -> int | None:
        """Propose a leader-originated command (no client, no dedup); returns its index, or
        None if this node cannot propose now."""
        data = encode_command(SYSTEM, 0, self._stamp.now_ms(), body)
        try:
            index, _ = self.raw.propose(data)
        except ProposalDropped:
            return None
        self.wake()
        return index

    def read(self, query: bytes | None, wait: Wait) -> None:
        """A linearizable read (ReadIndex, batched into rounds), on a leader or a follower;
        failed at once with ``NOT_LEADER`` if no leader is known. ``query=None`` is a barrier:
        ``wait.done(True, None)`` once everything committed before the call is applied here."""
        if self.raw.raft.lead == NONE:
            wait.finished = False
            fail(wait, NOT_LEADER, "no leader known; retry")
            return
        self._waiters.add_read(query, wait)

    def query(self, query: bytes) -> tuple[bool, Any]:
        """Query the local state machine now: ``(True, value)``, or ``(False, (code, message,
        details))`` when it refuses. Not linearizable on its own (a stale read); ``read`` is."""
        try:
            return True, self.applier.sm.query(query)
        except CommandRejected as exc:
            return False, exc.record()

    def _start_read_round(self, context: bytes) -> None:
        self.raw.read_index(context)
        self.wake()

    def transfer(self, target: NodeId) -> None:
        """Ask the core to hand leadership to ``target`` (leader only; watch ``leader``)."""
        self.raw.transfer_leadership(target)
        self.wake()

    def best_transfer_target(self) -> NodeId | None:
        """The most caught-up follower, if this node leads a cluster of more than one."""
        raft = self.raw.raft
        if raft.role != Role.LEADER:
            return None
        followers = [p for p in raft.prs if p != self.id]
        return max(followers, key=lambda p: raft.prs[p].match) if followers else None

    def leader_silence(self) -> float | None:
        """Seconds since this node last heard from its leader (0 on the leader; None when it
        knows of none): how stale what a follower serves may be."""
        raft = self.raw.raft
        if raft.role == Role.LEADER:
            return 0.0
        seen = self.last_contact.get(raft.lead) if raft.lead != NONE else None
        return None if seen is None else self.clock.monotonic() - seen

    def subscribe(self, topic: str, subscriber: Subscriber) -> Callable[[], None]:
        """Events the state machine emits on ``topic``, as ``subscriber(index, payload)`` in log
        order from now on; returns the function that cancels the subscription."""
        return self._waiters.subscribe(topic, subscriber)

    def fail_waiters(self, reason: str, message: str) -> None:
        """Answer every waiting request with ``failed(reason, message)`` (stop, crash)."""
        self._waiters.fail_all(reason, message)

    # -- the Ready loop ------------------------------------------------------------------------

    def process(self) -> None:
        """Handle every pending ``Ready``. A call made while one runs (a waiter's callback that
        proposes on this node) returns at once: the running loop picks its ``Ready`` up."""
        if self._processing:
            return
        self._processing = True
        try:
            raw = self.raw
            while raw.has_ready():
                self._handle_ready(raw.ready())
        finally:
            self._processing = False

    def _handle_ready(self, rd: Ready) -> None:
        """One ``Ready``, in the order Raft needs: messages that need nothing on disk (the
        leader's appends) first, then the synced write, then the messages that depend on it,
        then applying.

        A leader that stays leader answers first: it applies, and writes its clients' answers,
        before it sends what does not depend on applying (heartbeats, a tick's commit-index
        append) and before the unsynced write of its commit index. Those sat between a
        commit and its answer: three syscalls per committed batch on the latency path. With
        entries to sync it still applies after the sync (an applied entry is on this node's
        disk, which the simulator checks)."""
        if self.raw.raft.conf is not self._conf:
            self._conf = self.raw.raft.conf
            for listener in self.conf_listeners:
                listener(self._conf)
        hooks = self.hooks
        leading = (
            bool(rd.committed_entries)
            and rd.soft_state is None
            and rd.snapshot is None
            and self.raw.raft.role == Role.LEADER
        )
        quick = leading and not rd.must_sync  # nothing to sync: answer before sending anything
        if quick:
            self._apply(rd)
            self._answer_now()
        if rd.messages_early:
            self.transport.send(rd.messages_early)
        if hooks is not None:
            hooks.before_save(rd)
        if rd.must_sync:  # entries, a snapshot, or a term/vote change: one write + one fsync
            started = time.perf_counter()
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot)
            self.metrics.fsync_seconds.observe(time.perf_counter() - started)
            if rd.entries:
                self.metrics.batch_entries.observe(len(rd.entries))
        if quick:
            self._finish_ready(rd, hooks)
        elif leading:
            self._apply(rd)
            self._answer_now()
            self._finish_ready(rd, hooks)
        else:
            self._finish_ready(rd, hooks)
            self._apply(rd)
        raft = self.raw.raft
        self.metrics.observe_status(
            raft.role, raft.term, raft.log.committed, raft.log.applied, raft.log.snapshot.index
        )

    def _answer_now(self) -> None:
        if self._flush_responses is not None:
            self._flush_responses()

    def _finish_ready(self, rd: Ready, hooks: ReadyHooks | None) -> None:
        """The unsynced commit-index write, the messages sent after the save, role changes
        and an installed snapshot."""
        if rd.must_write and not rd.must_sync:  # only the commit index moved: no fsync needed
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot, sync=False)
        if hooks is not None:
            hooks.after_save(rd)
        if rd.messages:
            self.transport.send(rd.messages)
        if hooks is not None:
            hooks.after_send(rd)
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.lead)
        if rd.snapshot is not None:
            self.applier.restore(rd.snapshot.data)
            event(logging.INFO, "snapshot_installed", node=self.id, index=rd.snapshot.index)

    def _apply(self, rd: Ready) -> None:
        """Apply the committed entries, then answer and wake what waited on them."""
        hooks = self.hooks
        outcomes: list[Outcome] = []
        apply, drain_events, publish = self.applier.apply, self._drain_events, self._waiters.publish
        for entry in rd.committed_entries:
            produced = apply(entry)
            outcomes.extend(produced)
            if drain_events is not None:
                for topic, payload in drain_events():
                    publish(entry.index, topic, payload)
            if hooks is not None:
                hooks.applied(entry, produced)
        self.raw.advance(rd)
        waiters = self._waiters
        if outcomes:
            waiters.on_outcomes(outcomes)
        if rd.read_states:
            waiters.on_read_states(rd.read_states, self.applier.applied_index)
        if rd.committed_entries or rd.snapshot is not None:
            applied = self.applier.applied_index
            waiters.on_applied(applied)
            for listener in self.apply_listeners:
                listener(applied)

    # -- tick and grace policy -----------------------------------------------------------------

    def _maybe_propose_tick(self) -> None:
        """Time-based changes (session expiry, lease and wait timeouts, TTLs) happen by an entry
        the leader proposes once its clock passes the state machine's next deadline, one at a
        time: the next only after the previous one was applied here."""
        if self._tick_index and self.applier.applied_index < self._tick_index:
            return
        deadline = self.applier.next_deadline()
        if deadline is None or deadline > self._stamp.now_ms():
            return
        command = self.applier.tick_command()
        if command is not None:
            self._tick_index = self.propose_system(command) or 0

    def _on_soft_state(self, role: Role, lead: NodeId) -> None:
        """A new leader proposes the grace command first (Chubby's grace period: sessions get
        one more TTL, since clients could not reach anyone during the election)."""
        if role == Role.LEADER and self._role != Role.LEADER:
            self._tick_index = 0
            self._stamp.lead(self.applier.now_ms)
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
                self._waiters.on_lost_leadership()
                self._stamp.follow()
        changed = lead != self._lead
        if changed:
            event(
                logging.INFO,
                "leader_change",
                node=self.id,
                leader=lead or "none",
                term=self.raw.raft.term,
            )
        self._role, self._lead = role, lead
        if changed:
            for listener in self.leader_listeners:
                listener(lead)

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot_due(self) -> bool:
        """``snapshot_every`` entries applied since the last snapshot, and none being written."""
        log_ = self.raw.raft.log
        return (
            not self._snapshotting
            and log_.applied - log_.snapshot.index >= self.settings.snapshot_every
        )

    def take_snapshot(self) -> Snapshot:
        """Snapshot the state machine at the applied index and compact the in-memory log. The
        caller persists it: ``storage.prepare_snapshot(snap)`` (any thread), then
        ``save_snapshot(snap)`` on the host's thread (or ``abandon_snapshot`` on failure)."""
        self._snapshotting = True
        applied = self.raw.raft.log.applied
        return self.raw.compact(applied, self.applier.snapshot(), self.settings.snapshot_keep)

    def save_snapshot(self, snap: Snapshot) -> None:
        """Write the snapshot's log mark, then drop the entries it covers from storage; skipped
        if a snapshot installed from the leader overtook it meanwhile. Ordered with ``save``
        because both run on the host's thread."""
        try:
            log_ = self.raw.raft.log
            if snap.index >= log_.snapshot.index:
                self.storage.save_snapshot(snap)
                self.storage.compact(min(log_.offset, snap.index))
        finally:
            self._snapshotting = False

    def abandon_snapshot(self) -> None:
        self._snapshotting = False

    def snapshot_if_due(self) -> Snapshot | None:
        """All snapshot steps at once, on the caller's thread (the simulator, tests)."""
        if not self.snapshot_due():
            return None
        snap = self.take_snapshot()
        try:
            self.storage.prepare_snapshot(snap)
        except BaseException:
            self.abandon_snapshot()
            raise
        self.save_snapshot(snap)
        return snap

    # -- status --------------------------------------------------------------------------------

    def status(self, address: Callable[[NodeId], str]) -> dict[str, Any]:
        """This node's Raft status; ``address`` turns a node id into ``host:port`` ("")."""
        lag = self.metrics.follower_lag
        now = self.clock.monotonic()
        return node_status(self.raw.raft, now, self.last_contact, lag, address)
