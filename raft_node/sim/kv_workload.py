"""The simulator's default workload: three clients on a replicated key-value register.

Clients write, read through the log, and read through ReadIndex (on leaders and followers), all
through the nodes' hosts (``NodeHost.propose``/``read``), as the request handler does. Writes
and log reads are retried with the same ``(client, seq)`` until they complete (the host's
applier dedups them); a lost ReadIndex read is abandoned. At the end every acknowledged
operation must be in the applied log, all state machines must be equal, and the history must be
linearizable per key.
"""

from __future__ import annotations

from typing import Any

from raft_node.host.applier import Outcome
from raft_node.host.node_host import ProposalDropped
from raft_node.host.waiters import Wait
from raft_node.sim import kv
from raft_node.sim.clients import INDEX_READ, LOG_READ, WRITE, Client, ClientOp, history_operations
from raft_node.sim.engine import Engine, Entry, SimNode
from raft_node.sim.invariants import Violation
from raft_node.sim.linearizability import check_operations
from raft_node.sim.models import RegisterModel

KEYS = ("a", "b", "c")
RETRY_AFTER_MS = 500


class _OpWait(Wait):
    """One attempt of a client operation, waiting on a host."""

    __slots__ = ("op", "workload")

    def __init__(self, workload: KVWorkload, op: ClientOp) -> None:
        self.workload, self.op = workload, op

    def done(self, ok: bool, value: Any) -> None:
        self.workload._answered(self.op, ok, value)

    def failed(self, reason: str, message: str) -> None:
        self.workload._failed(self.op)


class KVWorkload:
    def __init__(self, clients: int = 3) -> None:
        self.clients = [Client(f"c{i}") for i in range(clients)]
        self.sim: Engine | None = None
        # (client, seq) -> (index, term) of the entry that first applied it, on any node
        self.applied_at: dict[tuple[str, int], tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"pending ops {[c.current for c in self.clients if c.current is not None]}"

    # -- engine hooks --------------------------------------------------------------------------

    def attach(self, sim: Engine) -> None:
        self.sim = sim
        for c in self.clients:
            sim.schedule(sim.rng.randrange(1, 20), c)

    def new_state_machine(self) -> kv.KVStateMachine:
        return kv.KVStateMachine()

    def on_applied(self, node: SimNode, entry: Entry, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.client_id and not outcome.pending:
                key = (outcome.client_id, outcome.seq)
                self.applied_at.setdefault(key, (entry.index, entry.term))

    def on_crash(self, node: SimNode) -> None:
        pass  # the host answered its waits UNAVAILABLE: writes retry, reads were abandoned

    def settled(self) -> bool:
        return all(c.current is None for c in self.clients)

    # -- answers from the hosts ----------------------------------------------------------------

    def _answered(self, op: ClientOp, ok: bool, value: Any) -> None:
        sim = self.sim
        assert sim is not None
        if op.ret is not None or op.abandoned:
            return  # an answer to an earlier attempt, or to a read we gave up on
        if not ok:
            raise Violation(f"{op.kind} {op.client}#{op.seq} rejected: {value}")
        if op.kind != INDEX_READ:
            at = self.applied_at.get((op.client, op.seq))
            if at is None:
                raise Violation(f"{op.kind} {op.client}#{op.seq} answered but never applied")
            op.index, op.term = at
        self._client(op).finish(op, sim.now, None if op.kind == WRITE else value)

    def _failed(self, op: ClientOp) -> None:
        if op.ret is not None or op.abandoned:
            return
        if op.kind == INDEX_READ:
            self._client(op).abandon(op)  # a lost read constrained nothing
        else:
            op.needs_retry = True

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
            # snapshot, on the node we asked): retry; the applier's dedup makes it safe.
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
        if node is None or node.host is None:
            return
        cmd = kv.encode_put(op.key, op.value or "") if op.kind == WRITE else kv.encode_get(op.key)
        try:
            node.host.propose(op.client, op.seq, cmd, _OpWait(self, op))
        except ProposalDropped:
            return
        op.needs_retry = False
        op.attempt_at = sim.now
        sim.process(node)

    def _start_index_read(self, op: ClientOp) -> None:
        sim = self.sim
        assert sim is not None
        node = sim.pick_node(prefer_leader=False)
        if node is None or node.host is None:
            return
        op.node = node.id
        node.host.read(kv.encode_get(op.key), _OpWait(self, op))
        sim.process(node)

    # -- final checks --------------------------------------------------------------------------

    def final_check(self) -> None:
        sim = self.sim
        assert sim is not None
        applied_term = sim.checker.applied_term
        for c in self.clients:
            for op in c.history:
                acked = op.kind != INDEX_READ and op.ret is not None
                if acked and (op.index == 0 or applied_term.get(op.index) != op.term):
                    raise Violation(
                        f"acknowledged {op.kind} {op.client}#{op.seq} at "
                        f"({op.index}, term {op.term}) is not in the applied log"
                    )
        members = sim.members()  # a removed machine keeps the state it had when it left
        states = {
            n.id: n.host.state_machine.data
            for n in sim.nodes.values()
            if n.host and n.id in members
        }
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
