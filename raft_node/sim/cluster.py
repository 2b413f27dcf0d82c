"""Deterministic cluster simulation: one seeded RNG drives time, network, disks and clients.

A run has two phases:

1. Chaos (``steps`` events): nodes tick on skewed virtual clocks; messages are delayed, dropped,
   duplicated and reordered; symmetric and one-way partitions come and go; nodes crash (losing
   whatever was not persisted, sometimes mid-write with a torn last record) and restart; clients
   write, read through the log and read through ReadIndex.
2. Liveness: faults stop and partitions heal; within ``liveness_ms`` of virtual time there must
   be a leader, every client operation must complete, and every node must converge.

Every node runs the production host, ``NodeHost`` (``raft_node.host.node_host``): the same Ready
loop, applier, tick and grace policy, snapshot policy and request waiters as the node process.
The simulator only supplies its inputs: a transport into the simulated network, the node's
``SimDisk``, a skewed virtual clock, and hooks (``_SimHooks``) that check Raft's invariants
between the steps of each Ready and inject crashes there.

The ``Checker`` runs after every event (Raft safety). What clients do, and what must hold of
their results, is a pluggable ``Workload``: the default ``KVWorkload`` (``kv_workload.py``) runs
a replicated register and checks that acknowledged writes survive and the history is
linearizable; ``coordination.simulation`` runs sessions, locks, queues and cache on the same
engine. Any failure raises ``SimulationFailure`` whose message carries the seed and the one-line
replay command.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Any

from raft_node.core.messages import Message, NodeId
from raft_node.core.messages import MessageType as MT
from raft_node.core.raft import Config, Raft
from raft_node.core.ready import Ready, Role
from raft_node.host.applier import Outcome
from raft_node.host.inputs import Clock, HostSettings, ReadyHooks
from raft_node.host.node_host import NodeHost
from raft_node.host.waiters import UNAVAILABLE
from raft_node.sim.disk import SimDisk
from raft_node.sim.engine import Entry, SimNode, SimulationFailure, Workload
from raft_node.sim.invariants import Checker, Violation
from raft_node.sim.kv_workload import KVWorkload
from raft_node.sim.membership import CommitQuorum, change_membership

__all__ = ["Faults", "SimNode", "SimResult", "Simulation", "SimulationFailure", "Workload"]

TICK, DELIVER, CLIENT, FAULT, MEMBERSHIP, PEER_CLOSED = 0, 1, 2, 3, 4, 5
MEMBERSHIP_EVERY_MS = (20, 120)  # between membership change requests, during the chaos phase
REQUEST_TIMEOUT_S = 3.0  # hosts answer "timeout" to client requests waiting longer


@dataclass(frozen=True)
class Faults:
    """Fault rates for one run; ``Faults.sample`` varies them by seed (calm to hostile)."""

    drop: float = 0.02
    duplicate: float = 0.02
    long_delay: float = 0.02
    max_delay_ms: int = 12
    fault_every_ms: int = 300
    crash_in_ready: float = 0.002
    enabled: bool = True

    @classmethod
    def sample(cls, rng: random.Random) -> Faults:
        return cls(
            drop=rng.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate=rng.choice((0.0, 0.02, 0.08)),
            long_delay=rng.choice((0.0, 0.02, 0.1)),
            max_delay_ms=rng.choice((3, 12, 40)),
            fault_every_ms=rng.choice((150, 400, 1500)),
            crash_in_ready=rng.choice((0.0, 0.002, 0.01)),
        )


class NodeCrashed(Exception):
    """Raised by the hooks to crash a node between two steps of its Ready handling."""


class _SimTransport:
    """A node's transport: messages go into the simulated network."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def send(self, messages: tuple[Message, ...]) -> None:
        self.sim._send_all(messages)


class _SimHooks(ReadyHooks):
    """Raft's invariants checked at each step of a host's Ready handling, and crashes injected
    between the steps: before the fsync (nothing persisted), in the middle of it (a torn write:
    a prefix of the entries, no hard state), after it, or after sending."""

    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self.sim, self.node = sim, node
        self.crash_at: str | None = None
        self.before = node.disk.hard_state

    def before_save(self, rd: Ready) -> None:
        sim, disk = self.sim, self.node.disk
        rng, faults = sim.rng, sim.faults
        self.crash_at = None
        if faults.enabled and rng.random() < faults.crash_in_ready:
            self.crash_at = rng.choice(("before_persist", "torn", "after_persist", "after_send"))
        if self.crash_at == "before_persist":
            raise NodeCrashed
        if self.crash_at == "torn" and rd.entries:
            disk.save_torn(rd.entries, rng.randrange(len(rd.entries)))
            raise NodeCrashed
        self.before = disk.hard_state

    def after_save(self, rd: Ready) -> None:
        sim, node = self.sim, self.node
        assert node.host is not None
        raft = node.host.raw.raft
        role = raft.role if rd.soft_state is None else rd.soft_state.role
        sim.checker.on_persisted(node.id, role, rd, node.disk, self.before)
        if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
            sim.elections += 1
            sim.checker.on_became_leader(node.id, raft.term, node.disk)
        if self.crash_at == "after_persist":
            raise NodeCrashed

    def after_send(self, rd: Ready) -> None:
        if self.crash_at == "after_send":
            raise NodeCrashed

    def applied(self, entry: Entry, outcomes: list[Outcome]) -> None:
        node = self.node
        self.sim.checker.on_applied(node.id, entry.index, entry.term, node.disk)
        self.sim.workload.on_applied(node, entry, outcomes)


@dataclass
class SimResult:
    seed: int
    steps: int
    virtual_ms: int
    elections: int
    committed: int
    operations: int
    linearizability_states: int


class Simulation:
    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        steps: int = 3000,
        faults: Faults | None = None,
        raft_class: type[Raft] = Raft,
        liveness_ms: int = 8000,
        compact_every: int = 40,
        check_linearizability: bool = True,
        workload: Workload | None = None,
        replay: str = "python -m raft_node.sim",
        membership: bool = False,
        spares: int = 2,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.faults = faults if faults is not None else Faults.sample(self.rng)
        self.raft_class = raft_class
        self.liveness_ms = liveness_ms
        self.compact_every = compact_every
        self.check_linearizability = check_linearizability
        # With ``membership``, spare machines run too (not members until added) and membership
        # changes are one more fault (``raft_node.sim.membership``).
        self.membership = membership
        self.voters = [f"n{i + 1}" for i in range(nodes)]
        self.ids = self.voters + [f"n{nodes + i + 1}" for i in range(spares if membership else 0)]
        self.membership_changes = self.membership_refusals = 0
        self.commit_quorum = CommitQuorum()
        self.checker = Checker()
        self.now = 0
        self._seq = 0
        self._events: list[tuple[int, int, int, Any]] = []
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.nodes = {
            i: SimNode(i, SimDisk(self.checker.base_hash), self.rng.randrange(9, 12))
            for i in self.ids
        }
        self.workload: Workload = workload if workload is not None else KVWorkload()
        self.elections = 0
        self.replay = f"{replay} --seed {seed} --nodes {nodes} --steps {steps}"
        if membership:
            self.replay += " --membership"
        for node in self.nodes.values():
            self._start(node)
            self._push(self.rng.randrange(0, node.tick_ms), TICK, node.id)
        self.workload.attach(self)
        self._push(self.faults.fault_every_ms, FAULT, None)
        if membership:
            self._push(self.rng.randrange(*MEMBERSHIP_EVERY_MS), MEMBERSHIP, None)

    def schedule(self, delay: int, payload: Any) -> None:
        """Workloads schedule their client events here (delivered to ``Workload.on_event``)."""
        self._push(delay, CLIENT, payload)

    # -- event queue ---------------------------------------------------------------------------

    def _push(self, delay: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + delay, self._seq, kind, payload))

    def run(self) -> SimResult:
        try:
            self._run_phase(self.steps, deadline=None)
            self._heal_all()
            self._run_phase(None, deadline=self.now + self.liveness_ms)
            self._final_checks()
            operations, states = (0, 0)
            if self.check_linearizability:
                operations, states = self.workload.check_history()
        except Violation as exc:
            raise SimulationFailure(self._failure(f"safety violation: {exc}")) from exc
        return SimResult(
            self.seed,
            self.steps,
            self.now,
            self.elections,
            max(self.checker.applied_term),
            operations,
            states,
        )

    def failure(self, what: str) -> SimulationFailure:
        return SimulationFailure(self._failure(what))

    def _failure(self, what: str) -> str:
        return f"{what}\n  seed={self.seed} at t={self.now}ms\n  replay: {self.replay}"

    def _run_phase(self, steps: int | None, deadline: int | None) -> None:
        done = 0
        while self._events:
            if steps is not None and done >= steps:
                return
            if deadline is not None and self._liveness_reached():
                return
            when, _, kind, payload = heapq.heappop(self._events)
            if deadline is not None and when > deadline:
                raise SimulationFailure(self._failure(self._liveness_report()))
            self.now = when
            done += 1
            if kind == TICK:
                node = self.nodes[payload]
                self._push(node.tick_ms, TICK, node.id)
                if node.host is not None:
                    node.host.tick()
                    self.process(node)
            elif kind == DELIVER:
                self._deliver(payload)
            elif kind == CLIENT:
                self.workload.on_event(payload, deadline is not None)
            elif kind == FAULT and self.faults.enabled:
                self._fault()
                self._push(self.rng.randrange(1, 2 * self.faults.fault_every_ms), FAULT, None)
            elif kind == MEMBERSHIP and self.faults.enabled:
                change_membership(self)
                self._push(self.rng.randrange(*MEMBERSHIP_EVERY_MS), MEMBERSHIP, None)
            elif kind == PEER_CLOSED:
                node = self.nodes[payload[0]]
                if node.host is not None:
                    node.host.report_peer_closed(payload[1])
                    self.process(node)

    # -- nodes ---------------------------------------------------------------------------------

    def _config(self, node_id: NodeId) -> Config:
        return Config(
            id=node_id,
            voters=self.voters,
            rng=random.Random(self.rng.getrandbits(32)),
            election_tick=10,
            heartbeat_tick=1,
            max_size_per_msg=self.rng.choice((64, 4096)),
            max_inflight=self.rng.choice((1, 4, 64)),
        )

    def _start(self, node: SimNode) -> None:
        """Start a node on its disk with a real ``NodeHost``: the simulated transport, a
        skewed clock, crash-injecting hooks, and a snapshot every ``compact_every`` entries
        keeping 0, 5 or 30 of them behind (so InstallSnapshot happens often)."""
        sim = self
        skew = (node.tick_ms - 10) * 7  # a little skew between the nodes' wall clocks
        node.host = NodeHost(
            self._config(node.id),
            self.workload.new_state_machine(),
            node.disk,
            _SimTransport(self),
            Clock(wall_ms=lambda: sim.now + skew, monotonic=lambda: sim.now / 1000),
            settings=HostSettings(
                snapshot_every=self.compact_every,
                snapshot_keep=self.rng.choice((0, 5, 30)),
                request_timeout=REQUEST_TIMEOUT_S,
            ),
            hooks=_SimHooks(self, node),
            raft_class=self.raft_class,
        )
        node.state = {}
        self.checker.on_start(node.id, node.host.raw.raft, node.disk)

    def _crash(self, node: SimNode) -> None:
        """Lose the host and what the disk had not synced; waiting clients see the connection
        drop (``UNAVAILABLE``) and retry elsewhere."""
        host, node.host = node.host, None
        node.disk.crash()
        if host is not None:
            host.fail_waiters(UNAVAILABLE, "node crashed")
            self._tell_closed(node.id)
        self.workload.on_crash(node)
        node.state = {}

    def _tell_closed(self, closed: NodeId) -> None:
        """A crashed process's sockets close: most of its peers see the EOF soon (a peer cut
        off by a partition, or on a lost segment, does not)."""
        for other in self.nodes.values():
            if other.id != closed and other.host is not None and self.rng.random() < 0.8:
                self._push(self._delay(), PEER_CLOSED, (other.id, closed))

    def process(self, node: SimNode) -> None:
        """Let the node's host handle its pending Readys and snapshot if due (call after giving
        it input); a crash injected by the hooks takes the node down."""
        host = node.host
        if host is None:
            return
        try:
            host.process()
            host.snapshot_if_due()
        except NodeCrashed:
            if node.host is host:
                self._crash(node)
            return
        self.checker.after_event(node.id, host.raw.raft)
        if self.membership:
            disks = {n.id: n.disk for n in self.nodes.values()}
            self.commit_quorum.check(node.id, host.raw.raft, disks)

    # -- network -------------------------------------------------------------------------------

    def _send_all(self, msgs: tuple[Message, ...]) -> None:
        rng, f = self.rng, self.faults
        for m in msgs:
            if m.type in (MT.VOTE_RESP,) and not m.reject:
                self.checker.on_vote_granted(m.frm, m.term, m.to)
            if (m.frm, m.to) in self.blocked or (f.enabled and rng.random() < f.drop):
                self._report_loss(m)
                continue
            self._push(self._delay(), DELIVER, m)
            if f.enabled and rng.random() < f.duplicate:
                self._push(self._delay(), DELIVER, m)

    def _delay(self) -> int:
        f = self.faults
        if f.enabled and self.rng.random() < f.long_delay:
            return self.rng.randrange(20, 400)
        return self.rng.randrange(1, f.max_delay_ms + 1)

    def _report_loss(self, m: Message) -> None:
        """Sometimes the transport notices a loss (as a TCP send error would) and says so."""
        sender = self.nodes[m.frm].host
        if sender is None or self.rng.random() < 0.5:
            return
        if m.type == MT.SNAP:
            sender.report_snapshot(m.to, ok=False)
        elif m.type == MT.APP:
            sender.report_unreachable(m.to)

    def _deliver(self, m: Message) -> None:
        node = self.nodes[m.to]
        if node.host is None or (m.frm, m.to) in self.blocked:
            return
        node.host.step(m)
        self.process(node)

    # -- for workloads -------------------------------------------------------------------------

    def members(self) -> tuple[NodeId, ...]:
        leader = self.leader()
        if leader is None or leader.host is None:
            return tuple(self.ids)
        return leader.host.configuration.members()

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.host is not None]

    def pick_node(self, prefer_leader: bool) -> SimNode | None:
        """A random live node; with ``prefer_leader``, its known leader if that one is up (as a
        client that follows leader hints would reach)."""
        up = self.up_nodes()
        if not up:
            return None
        node = self.rng.choice(up)
        if prefer_leader and node.host is not None and not node.host.is_leader:
            lead = node.host.leader
            if lead and self.nodes[lead].host is not None:
                node = self.nodes[lead]
        return node

    # -- faults --------------------------------------------------------------------------------

    def _fault(self) -> None:
        rng = self.rng
        down = [n for n in self.nodes.values() if n.host is None]
        choice = rng.random()
        if down and choice < 0.35:
            self._start(rng.choice(down))
        elif choice < 0.55:
            victim = rng.choice(list(self.nodes.values()))
            if victim.host is not None:
                self._crash(victim)
        elif choice < 0.7:
            ids = self.ids[:]
            rng.shuffle(ids)
            cut = rng.randrange(1, len(ids))
            left, right = ids[:cut], ids[cut:]
            self.blocked = {(a, b) for a in left for b in right} | {
                (b, a) for a in left for b in right
            }
        elif choice < 0.8:
            a, b = rng.sample(self.ids, 2)
            self.blocked.add((a, b))  # one-way: a cannot reach b
            if rng.random() < 0.5:  # and b sees a's connection reset while a lives on
                self._push(self._delay(), PEER_CLOSED, (b, a))
        else:
            self.blocked.clear()

    def _heal_all(self) -> None:
        self.faults = Faults(drop=0.0, duplicate=0.0, long_delay=0.0, max_delay_ms=5, enabled=False)
        self.blocked.clear()
        for node in self.nodes.values():
            if node.host is None:
                self._start(node)

    # -- liveness and final checks -------------------------------------------------------------

    def leader(self) -> SimNode | None:
        for n in self.nodes.values():
            if n.host is not None and n.host.is_leader:
                return n
        return None

    def _liveness_reached(self) -> bool:
        leader = self.leader()
        if leader is None or not self.workload.settled():
            return False
        assert leader.host is not None
        commit = leader.host.raw.raft.log.committed
        members = self.members()  # removed machines get nothing more
        return all(
            n.host is not None and n.host.raw.raft.log.applied == commit
            for n in self.nodes.values()
            if n.id in members
        )

    def _liveness_report(self) -> str:
        parts = []
        for n in self.nodes.values():
            if n.host is None:
                parts.append(f"{n.id}: down")
            else:
                r = n.host.raw.raft
                parts.append(
                    f"{n.id}: {r.role.name} term={r.term} commit={r.log.committed} "
                    f"applied={r.log.applied} last={r.log.last_index()}"
                )
        return (
            f"liveness: no convergence within {self.liveness_ms}ms after healing; "
            + "; ".join(parts)
            + f"; workload: {self.workload}"
        )

    def _final_checks(self) -> None:
        self.workload.final_check()
