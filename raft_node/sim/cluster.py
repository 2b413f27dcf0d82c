"""Deterministic cluster simulation: one seeded RNG drives time, network, disks and clients.

A run has two phases:

1. Chaos (``steps`` events): nodes tick on skewed virtual clocks; messages are delayed, dropped,
   duplicated and reordered; symmetric and one-way partitions come and go; nodes crash (losing
   whatever was not persisted, sometimes mid-write with a torn last record) and restart; clients
   write, read through the log and read through ReadIndex.
2. Liveness: faults stop and partitions heal; within ``liveness_ms`` of virtual time there must
   be a leader, every client operation must complete, and every node must converge.

The ``Checker`` runs after every event; at the end, every acknowledged write must be in the
applied log and the client history must be linearizable. Any failure raises ``SimulationFailure``
whose message carries the seed and the one-line replay command.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from raft_node.messages import Message, NodeId
from raft_node.messages import MessageType as MT
from raft_node.raft import Config, ProposalDropped, Raft
from raft_node.rawnode import RawNode
from raft_node.ready import Ready, Role
from raft_node.sim import kv
from raft_node.sim.clients import INDEX_READ, LOG_READ, WRITE, Client, ClientOp, history_operations
from raft_node.sim.disk import SimDisk
from raft_node.sim.invariants import Checker, Violation
from raft_node.sim.linearizability import check_operations
from raft_node.sim.models import RegisterModel

TICK, DELIVER, CLIENT, FAULT = 0, 1, 2, 3
KEYS = ("a", "b", "c")
RETRY_AFTER_MS = 500


class SimulationFailure(AssertionError):
    pass


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
    sm: kv.KVStateMachine | None = None
    proposals: dict[int, tuple[int, ClientOp]] = field(default_factory=dict)
    pending_reads: dict[bytes, ClientOp] = field(default_factory=dict)
    waiting_reads: list[tuple[int, ClientOp]] = field(default_factory=list)


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
        self.clients = [Client(f"c{i}") for i in range(3)]
        self.elections = 0
        self.replay = f"python -m raft_node.sim --seed {seed} --nodes {nodes} --steps {steps}"
        for node in self.nodes.values():
            self._start(node)
            self._push(self.rng.randrange(0, node.tick_ms), TICK, node.id)
        for c in self.clients:
            self._push(self.rng.randrange(1, 20), CLIENT, c)
        self._push(self.faults.fault_every_ms, FAULT, None)

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
        except Violation as exc:
            raise SimulationFailure(self._failure(f"safety violation: {exc}")) from exc
        ops = history_operations(self.clients)
        states = 0
        if self.check_linearizability:
            result = check_operations(ops, RegisterModel(), max_states=200_000)
            states = result.states_explored
            if result.ok is False:
                raise SimulationFailure(
                    self._failure(f"history not linearizable: {result.explanation}")
                )
        return SimResult(
            self.seed,
            self.steps,
            self.now,
            self.elections,
            max(self.checker.applied_term),
            len(ops),
            states,
        )

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
                    self._process(node)
            elif kind == DELIVER:
                self._deliver(payload)
            elif kind == CLIENT:
                self._client_event(payload, retry_only=deadline is not None)
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
        node.sm = kv.KVStateMachine()
        if node.disk.snapshot.index:
            node.sm.restore(node.disk.snapshot.data)
        self.checker.on_start(node.id, node.raw.raft, node.disk)

    def _crash(self, node: SimNode) -> None:
        node.disk.crash()
        node.raw = None
        node.sm = None
        for _, op in node.proposals.values():
            op.needs_retry = True
        for op in node.pending_reads.values():
            self._abandon(op)
        for _, op in node.waiting_reads:
            self._abandon(op)
        node.proposals.clear()
        node.pending_reads.clear()
        node.waiting_reads.clear()

    def _abandon(self, op: ClientOp) -> None:
        for c in self.clients:
            if c.name == op.client:
                c.abandon(op)

    def _process(self, node: SimNode) -> None:
        raw = node.raw
        for _ in range(8):
            if raw is None or node.raw is not raw or not raw.has_ready():
                break
            self._handle_ready(node, raw, raw.ready())
        if node.raw is not None:
            self.checker.after_event(node.id, node.raw.raft)

    def _handle_ready(self, node: SimNode, raw: RawNode, rd: Ready) -> None:
        """The host loop of ``raft_node.ready``, with crashes injected between its steps."""
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
        if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
            self.elections += 1
            self.checker.on_became_leader(node.id, raw.raft.term, node.disk)
        if not early_first:
            self._send_all(rd.messages_early)
        if crash_at == "after_persist":
            return self._crash(node)
        self._send_all(rd.messages)
        if crash_at == "after_send":
            return self._crash(node)
        self._apply(node, rd)
        raw.advance(rd)
        self._maybe_compact(node, raw)
        return None

    def _apply(self, node: SimNode, rd: Ready) -> None:
        sm = node.sm
        assert sm is not None
        if rd.snapshot is not None:
            sm.restore(rd.snapshot.data)
        for e in rd.committed_entries:
            result = sm.apply(e.index, e.data)
            self.checker.on_applied(node.id, e.index, e.term, node.disk)
            pending = node.proposals.pop(e.index, None)
            if pending is None:
                continue
            term, op = pending
            if e.term == term and not op.abandoned and op.ret is None:
                op.index, op.term = e.index, e.term
                self._client(op).finish(op, self.now, result)
            elif op.ret is None:
                op.needs_retry = True
        for rs in rd.read_states:
            op = node.pending_reads.pop(rs.context, None)
            if op is not None:
                node.waiting_reads.append((rs.index, op))
        if node.waiting_reads:
            still = []
            for index, op in node.waiting_reads:
                if sm.applied_index >= index:
                    if not op.abandoned:
                        self._client(op).finish(op, self.now, sm.read(op.key))
                else:
                    still.append((index, op))
            node.waiting_reads = still

    def _maybe_compact(self, node: SimNode, raw: RawNode) -> None:
        log = raw.raft.log
        if log.applied - log.snapshot.index < self.compact_every:
            return
        assert node.sm is not None
        snap = raw.compact(log.applied, node.sm.snapshot(), self.rng.choice((0, 5, 30)))
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
        self._process(node)

    # -- clients -------------------------------------------------------------------------------

    def _client(self, op: ClientOp) -> Client:
        return self.clients[int(op.client[1:])]

    def _client_event(self, client: Client, retry_only: bool) -> None:
        self._push(self.rng.randrange(2, 15), CLIENT, client)
        op = client.current
        if op is None:
            if retry_only:
                return
            op = self._new_op(client)
        if op.kind == INDEX_READ:
            if op.node and self.now - op.call > 300:
                client.abandon(op)  # lost read: give up, it constrained nothing
            elif not op.node:
                self._start_index_read(op)
            return
        if op.needs_retry or self.now - op.attempt_at > RETRY_AFTER_MS:
            # No answer in time (its entry may have been overwritten, or compacted into a
            # snapshot, on the node we asked): retry; the state machine's dedup makes it safe.
            self._propose(op)

    def _new_op(self, client: Client) -> ClientOp:
        r = self.rng.random()
        key = self.rng.choice(KEYS)
        if r < 0.45:
            return client.start(WRITE, key, f"{client.name}.{client.seq + 1}", self.now)
        if r < 0.6:
            return client.start(LOG_READ, key, None, self.now)
        return client.start(INDEX_READ, key, None, self.now)

    def _up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raw is not None]

    def _propose(self, op: ClientOp) -> None:
        up = self._up_nodes()
        if not up:
            return
        node = self.rng.choice(up)
        assert node.raw is not None
        if node.raw.raft.role != Role.LEADER:
            lead = node.raw.raft.lead
            if lead and self.nodes[lead].raw is not None:
                node = self.nodes[lead]
        assert node.raw is not None
        if op.kind == WRITE:
            cmd = kv.encode_put(op.client, op.seq, op.key, op.value or "")
        else:
            cmd = kv.encode_get(op.client, op.seq, op.key)
        try:
            index, term = node.raw.propose(cmd)
        except ProposalDropped:
            return
        op.needs_retry = False
        op.attempt_at = self.now
        node.proposals[index] = (term, op)
        self._process(node)

    def _start_index_read(self, op: ClientOp) -> None:
        up = self._up_nodes()
        if not up:
            return
        node = self.rng.choice(up)
        assert node.raw is not None
        ctx = f"{op.client}:{op.seq}".encode()
        op.node = node.id
        node.pending_reads[ctx] = op
        node.raw.read_index(ctx)
        self._process(node)

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
        if leader is None or any(c.current is not None for c in self.clients):
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
        pending = [c.current for c in self.clients if c.current is not None]
        return (
            f"liveness: no convergence within {self.liveness_ms}ms after healing; "
            + "; ".join(parts)
            + f"; pending ops: {pending}"
        )

    def _final_checks(self) -> None:
        applied_term = self.checker.applied_term
        for c in self.clients:
            for op in c.history:
                acked = op.kind != INDEX_READ and op.ret is not None
                if acked and applied_term.get(op.index) != op.term:
                    raise Violation(
                        f"acknowledged {op.kind} {op.client}#{op.seq} at "
                        f"({op.index}, term {op.term}) is not in the applied log"
                    )
        states = {n.id: n.sm.data for n in self.nodes.values() if n.sm is not None}
        first = next(iter(states.values()))
        for nid, data in states.items():
            if data != first:
                raise Violation(f"state machines diverged after convergence: {nid}")
