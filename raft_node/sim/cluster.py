"""Deterministic cluster simulation: one seeded RNG drives time, network, disks and clients.

A run has two phases:

1. Chaos (``steps`` events): nodes tick on skewed virtual clocks; messages are delayed, dropped,
   duplicated and reordered; symmetric and one-way partitions come and go; nodes crash (losing
   whatever was not persisted, sometimes mid-write with a torn last record) and restart; clients
   write, read through the log and read through ReadIndex.
2. Liveness: faults stop and partitions heal; within ``liveness_ms`` of virtual time there must
   be a leader, every client operation must complete, and every node must converge.

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
from dataclasses import dataclass, field
from typing import Any, Protocol

from raft_node.core.messages import Message, NodeId
from raft_node.core.messages import MessageType as MT
from raft_node.core.raft import Config, Raft
from raft_node.core.rawnode import RawNode
from raft_node.core.ready import Ready, Role
from raft_node.sim.disk import SimDisk
from raft_node.sim.invariants import Checker, Violation

TICK, DELIVER, CLIENT, FAULT = 0, 1, 2, 3


class SimulationFailure(AssertionError):
    pass


class Workload(Protocol):
    """What the simulated clients do and what must hold of their results.

    The engine calls: ``attach`` once (schedule first client events with ``sim.schedule``),
    ``new_state_machine`` at every node start, ``on_event`` for each scheduled event (``liveness``
    is True after healing: finish outstanding work, start nothing new), ``apply`` for each Ready
    (apply committed entries and read states to ``node.sm``, complete client operations),
    ``on_crash``, ``on_leader``/``on_node_tick`` (host duties of a leader, e.g. proposing
    ticks), ``settled`` during the liveness phase, and ``final_check``/``check_history`` at the
    end (raise ``Violation``/``SimulationFailure``)."""

    def attach(self, sim: Simulation) -> None: ...

    def new_state_machine(self) -> Any: ...

    def snapshot(self, sm: Any) -> bytes: ...

    def restore(self, sm: Any, data: bytes) -> None: ...

    def applied_index(self, sm: Any) -> int: ...

    def on_event(self, payload: Any, liveness: bool) -> None: ...

    def apply(self, node: SimNode, rd: Ready) -> None: ...

    def on_crash(self, node: SimNode) -> None: ...

    def on_leader(self, node: SimNode) -> None: ...

    def on_node_tick(self, node: SimNode) -> None: ...

    def settled(self) -> bool: ...

    def final_check(self) -> None: ...

    def check_history(self) -> tuple[int, int]: ...


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


@dataclass
class SimNode:
    id: NodeId
    disk: SimDisk
    tick_ms: int
    raw: RawNode | None = None
    sm: Any = None
    host: dict[str, Any] = field(default_factory=dict)  # the workload's per-incarnation state


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
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.faults = faults if faults is not None else Faults.sample(self.rng)
        self.raft_class = raft_class
        self.liveness_ms = liveness_ms
        self.compact_every = compact_every
        self.check_linearizability = check_linearizability
        self.ids = [f"n{i + 1}" for i in range(nodes)]
        self.checker = Checker()
        self.now = 0
        self._seq = 0
        self._events: list[tuple[int, int, int, Any]] = []
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.nodes = {
            i: SimNode(i, SimDisk(self.checker.base_hash), self.rng.randrange(9, 12))
            for i in self.ids
        }
        if workload is None:
            from raft_node.sim.kv_workload import KVWorkload

            workload = KVWorkload()
        self.workload = workload
        self.elections = 0
        self.replay = f"{replay} --seed {seed} --nodes {nodes} --steps {steps}"
        for node in self.nodes.values():
            self._start(node)
            self._push(self.rng.randrange(0, node.tick_ms), TICK, node.id)
        workload.attach(self)
        self._push(self.faults.fault_every_ms, FAULT, None)

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
                if node.raw is not None:
                    node.raw.tick()
                    if node.raw.raft.role == Role.LEADER:
                        self.workload.on_node_tick(node)
                    self.process(node)
            elif kind == DELIVER:
                self._deliver(payload)
            elif kind == CLIENT:
                self.workload.on_event(payload, deadline is not None)
            elif kind == FAULT and self.faults.enabled:
                self._fault()
                self._push(self.rng.randrange(1, 2 * self.faults.fault_every_ms), FAULT, None)

    # -- nodes ---------------------------------------------------------------------------------

    def _config(self, node_id: NodeId) -> Config:
        return Config(
            id=node_id,
            voters=self.ids,
            rng=random.Random(self.rng.getrandbits(32)),
            election_tick=10,
            heartbeat_tick=1,
            max_size_per_msg=self.rng.choice((64, 4096)),
            max_inflight=self.rng.choice((1, 4, 64)),
        )

    def _start(self, node: SimNode) -> None:
        node.raw = RawNode(self._config(node.id), node.disk, self.raft_class)
        node.sm = self.workload.new_state_machine()
        node.host = {}
        if node.disk.snapshot.index:
            self.workload.restore(node.sm, node.disk.snapshot.data)
        self.checker.on_start(node.id, node.raw.raft, node.disk)

    def _crash(self, node: SimNode) -> None:
        node.disk.crash()
        node.raw = None
        node.sm = None
        self.workload.on_crash(node)
        node.host = {}

    def process(self, node: SimNode) -> None:
        """Handle the node's pending Readys (call after giving it input)."""
        raw = node.raw
        for _ in range(8):
            if raw is None or node.raw is not raw or not raw.has_ready():
                break
            self._handle_ready(node, raw, raw.ready())
        if node.raw is not None:
            self.checker.after_event(node.id, node.raw.raft)

    def _handle_ready(self, node: SimNode, raw: RawNode, rd: Ready) -> None:
        """The host loop of ``raft_node.core.ready``, with crashes injected between its steps."""
        rng = self.rng
        crash_at = None
        if self.faults.enabled and rng.random() < self.faults.crash_in_ready:
            crash_at = rng.choice(("before_persist", "torn", "after_persist", "after_send"))
        early_first = rng.random() < 0.5
        if early_first:
            self._send_all(rd.messages_early)
        if crash_at == "before_persist":
            return self._crash(node)
        if crash_at == "torn" and rd.entries:
            node.disk.save_torn(rd.entries, rng.randrange(len(rd.entries)))
            return self._crash(node)
        before = node.disk.hard_state
        node.disk.save(rd.hard_state, rd.entries, rd.snapshot, sync=rd.must_sync)
        role = raw.raft.role if rd.soft_state is None else rd.soft_state.role
        self.checker.on_persisted(node.id, role, rd, node.disk, before)
        became_leader = rd.soft_state is not None and rd.soft_state.role == Role.LEADER
        if became_leader:
            self.elections += 1
            self.checker.on_became_leader(node.id, raw.raft.term, node.disk)
        if not early_first:
            self._send_all(rd.messages_early)
        if crash_at == "after_persist":
            return self._crash(node)
        self._send_all(rd.messages)
        if crash_at == "after_send":
            return self._crash(node)
        if rd.snapshot is not None:
            self.workload.restore(node.sm, rd.snapshot.data)
        for e in rd.committed_entries:
            self.checker.on_applied(node.id, e.index, e.term, node.disk)
        self.workload.apply(node, rd)
        raw.advance(rd)
        if became_leader:
            self.workload.on_leader(node)
        self._maybe_compact(node, raw)
        return None

    def _maybe_compact(self, node: SimNode, raw: RawNode) -> None:
        log = raw.raft.log
        if log.applied - log.snapshot.index < self.compact_every:
            return
        data = self.workload.snapshot(node.sm)
        snap = raw.compact(log.applied, data, self.rng.choice((0, 5, 30)))
        node.disk.save_snapshot(snap)
        node.disk.compact(min(log.offset, snap.index))

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
        sender = self.nodes[m.frm].raw
        if sender is None or self.rng.random() < 0.5:
            return
        if m.type == MT.SNAP:
            sender.report_snapshot(m.to, ok=False)
        elif m.type == MT.APP:
            sender.report_unreachable(m.to)

    def _deliver(self, m: Message) -> None:
        node = self.nodes[m.to]
        if node.raw is None or (m.frm, m.to) in self.blocked:
            return
        node.raw.step(m)
        self.process(node)

    # -- for workloads -------------------------------------------------------------------------

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raw is not None]

    def pick_node(self, prefer_leader: bool) -> SimNode | None:
        """A random live node; with ``prefer_leader``, its known leader if that one is up (as a
        client that follows leader hints would reach)."""
        up = self.up_nodes()
        if not up:
            return None
        node = self.rng.choice(up)
        if prefer_leader and node.raw is not None and node.raw.raft.role != Role.LEADER:
            lead = node.raw.raft.lead
            if lead and self.nodes[lead].raw is not None:
                node = self.nodes[lead]
        return node

    # -- faults --------------------------------------------------------------------------------

    def _fault(self) -> None:
        rng = self.rng
        down = [n for n in self.nodes.values() if n.raw is None]
        choice = rng.random()
        if down and choice < 0.35:
            self._start(rng.choice(down))
        elif choice < 0.55:
            victim = rng.choice(list(self.nodes.values()))
            if victim.raw is not None:
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
        else:
            self.blocked.clear()

    def _heal_all(self) -> None:
        self.faults = Faults(drop=0.0, duplicate=0.0, long_delay=0.0, max_delay_ms=5, enabled=False)
        self.blocked.clear()
        for node in self.nodes.values():
            if node.raw is None:
                self._start(node)

    # -- liveness and final checks -------------------------------------------------------------

    def _leader(self) -> SimNode | None:
        for n in self.nodes.values():
            if n.raw is not None and n.raw.raft.role == Role.LEADER:
                return n
        return None

    def _liveness_reached(self) -> bool:
        leader = self._leader()
        if leader is None or not self.workload.settled():
            return False
        assert leader.raw is not None
        commit = leader.raw.raft.log.committed
        return all(
            n.raw is not None and n.raw.raft.log.applied == commit for n in self.nodes.values()
        )

    def _liveness_report(self) -> str:
        parts = []
        for n in self.nodes.values():
            if n.raw is None:
                parts.append(f"{n.id}: down")
            else:
                r = n.raw.raft
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
