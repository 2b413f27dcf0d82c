"""The simulator's default workload: three clients on a replicated key-value register.

Clients write, read through the log, and read through ReadIndex (on leaders and followers).
Writes and log reads are retried with the same ``(client, seq)`` until they complete; a lost
ReadIndex read is abandoned. At the end every acknowledged operation must be in the applied log,
all state machines must be equal, and the history must be linearizable per key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raft_node.core.raft import ProposalDropped
from raft_node.core.ready import Ready
from raft_node.sim import kv
from raft_node.sim.clients import INDEX_READ, LOG_READ, WRITE, Client, ClientOp, history_operations
from raft_node.sim.invariants import Violation
from raft_node.sim.linearizability import check_operations
from raft_node.sim.models import RegisterModel

if TYPE_CHECKING:
    from raft_node.sim.cluster import SimNode, Simulation

KEYS = ("a", "b", "c")
RETRY_AFTER_MS = 500


class KVWorkload:
    def __init__(self, clients: int = 3) -> None:
        self.clients = [Client(f"c{i}") for i in range(clients)]
        self.sim: Simulation | None = None

    def __repr__(self) -> str:
        return f"pending ops {[c.current for c in self.clients if c.current is not None]}"

    # -- engine hooks --------------------------------------------------------------------------

    def attach(self, sim: Simulation) -> None:
        self.sim = sim
        for c in self.clients:
            sim.schedule(sim.rng.randrange(1, 20), c)

    def new_state_machine(self) -> kv.KVStateMachine:
        return kv.KVStateMachine()

    def snapshot(self, sm: kv.KVStateMachine) -> bytes:
        return sm.snapshot()

    def restore(self, sm: kv.KVStateMachine, data: bytes) -> None:
        sm.restore(data)

    def applied_index(self, sm: kv.KVStateMachine) -> int:
        return sm.applied_index

    def on_leader(self, node: SimNode) -> None:
        pass

    def on_node_tick(self, node: SimNode) -> None:
        pass

    def on_crash(self, node: SimNode) -> None:
        host = node.host
        for _, op in host.get("proposals", {}).values():
            op.needs_retry = True
        for op in host.get("pending_reads", {}).values():
            self._client(op).abandon(op)
        for _, op in host.get("waiting_reads", []):
            self._client(op).abandon(op)

    def settled(self) -> bool:
        return all(c.current is None for c in self.clients)

    # -- applying ------------------------------------------------------------------------------

    def apply(self, node: SimNode, rd: Ready) -> None:
        sim = self.sim
        assert sim is not None
        sm = node.sm
        proposals = node.host.setdefault("proposals", {})
        pending_reads = node.host.setdefault("pending_reads", {})
        waiting = node.host.setdefault("waiting_reads", [])
        for e in rd.committed_entries:
            result = sm.apply(e.index, e.data)
            pending = proposals.pop(e.index, None)
            if pending is None:
                continue
            term, op = pending
            if e.term == term and not op.abandoned and op.ret is None:
                op.index, op.term = e.index, e.term
                self._client(op).finish(op, sim.now, result)
            elif op.ret is None:
                op.needs_retry = True
        for rs in rd.read_states:
            op = pending_reads.pop(rs.context, None)
            if op is not None:
                waiting.append((rs.index, op))
        if waiting:
            still = []
            for index, op in waiting:
                if sm.applied_index >= index:
                    if not op.abandoned:
                        self._client(op).finish(op, sim.now, sm.read(op.key))
                else:
                    still.append((index, op))
            node.host["waiting_reads"] = still

    # -- clients -------------------------------------------------------------------------------

    def _client(self, op: ClientOp) -> Client:
        return self.clients[int(op.client[1:])]

    def on_event(self, client: Client, liveness: bool) -> None:
        sim = self.sim
        assert sim is not None
        sim.schedule(sim.rng.randrange(2, 15), client)
        op = client.current
        if op is None:
            if liveness:
                return
            op = self._new_op(client)
        if op.kind == INDEX_READ:
            if op.node and sim.now - op.call > 300:
                client.abandon(op)  # lost read: give up, it constrained nothing
            elif not op.node:
                self._start_index_read(op)
            return
        if op.needs_retry or sim.now - op.attempt_at > RETRY_AFTER_MS:
            # No answer in time (its entry may have been overwritten, or compacted into a
            # snapshot, on the node we asked): retry; the state machine's dedup makes it safe.
            self._propose(op)

    def _new_op(self, client: Client) -> ClientOp:
        sim = self.sim
        assert sim is not None
        r = sim.rng.random()
        key = sim.rng.choice(KEYS)
        if r < 0.45:
            return client.start(WRITE, key, f"{client.name}.{client.seq + 1}", sim.now)
        if r < 0.6:
            return client.start(LOG_READ, key, None, sim.now)
        return client.start(INDEX_READ, key, None, sim.now)

    def _propose(self, op: ClientOp) -> None:
        sim = self.sim
        assert sim is not None
        node = sim.pick_node(prefer_leader=True)
        if node is None:
            return
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
        op.attempt_at = sim.now
        node.host.setdefault("proposals", {})[index] = (term, op)
        sim.process(node)

    def _start_index_read(self, op: ClientOp) -> None:
        sim = self.sim
        assert sim is not None
        node = sim.pick_node(prefer_leader=False)
        if node is None:
            return
        assert node.raw is not None
        ctx = f"{op.client}:{op.seq}".encode()
        op.node = node.id
        node.host.setdefault("pending_reads", {})[ctx] = op
        node.raw.read_index(ctx)
        sim.process(node)

    # -- final checks --------------------------------------------------------------------------

    def final_check(self) -> None:
        sim = self.sim
        assert sim is not None
        applied_term = sim.checker.applied_term
        for c in self.clients:
            for op in c.history:
                acked = op.kind != INDEX_READ and op.ret is not None
                if acked and applied_term.get(op.index) != op.term:
                    raise Violation(
                        f"acknowledged {op.kind} {op.client}#{op.seq} at "
                        f"({op.index}, term {op.term}) is not in the applied log"
                    )
        states = {n.id: n.sm.data for n in sim.nodes.values() if n.sm is not None}
        first = next(iter(states.values()))
        for nid, data in states.items():
            if data != first:
                raise Violation(f"state machines diverged after convergence: {nid}")

    def check_history(self) -> tuple[int, int]:
        sim = self.sim
        assert sim is not None
        ops = history_operations(self.clients)
        result = check_operations(ops, RegisterModel(), max_states=200_000)
        if result.ok is False:
            raise sim.failure(f"history not linearizable: {result.explanation}")
        return len(ops), result.states_explored
