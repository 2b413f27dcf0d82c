"""The cache side of the simulated clients: an L1 that follows the real client's protocol.

Each client watches one node's event stream (``session:<id>``, a subscription on that node's
host), as ``cache_client.Cache`` does.
A read is an L1 hit while the local lease lasts, else a ``cache.fill`` through the log that may
register a lease; now and then a client extends the leases it holds with one ``cache.renew``.
An invalidation event, delivered after a random delay by the watched node, drops the key and
sends a release naming the fill's registration, on a separate lane without retries (as the
real client's releaser does: a lost release only delays writers until the lease ends). If the
watched node crashes, events may have been lost: the L1 is dropped. Writes are ``cache.set`` of
unique values. Every read (hits included) and write goes into a history
checked for linearizability per key with a register model: the L1 included, under faults.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from coordination.primitives import commands as c
from coordination.simulation.clients import Driver, Request, SimClient
from raft_node.host.node_host import ProposalDropped
from raft_node.sim.linearizability import Operation, check_operations
from raft_node.sim.models import RegisterModel

if TYPE_CHECKING:
    from raft_node.sim.engine import SimNode

CACHE_KEYS = ("ck1", "ck2")
LEASE_MS = 400
LEASE_SAFETY = 0.8


class CacheClients:
    def __init__(self, workload: Driver) -> None:
        self.w = workload
        self.history: list[Operation] = []
        self.values = 0
        self.hits = 0
        self.invalidations = 0
        self.renewals = 0

    # -- starting operations --------------------------------------------------------------------

    def next_op(self, cl: SimClient) -> None:
        sim = self.w.sim
        assert sim is not None and cl.session is not None
        key = sim.rng.choice(CACHE_KEYS)
        if sim.rng.random() < 0.35:
            self.values += 1
            value = f"{cl.name}:{self.values}".encode()
            self._drop_own(cl, key)  # as the real client does before writing
            if sim.rng.random() < 0.5:  # write and keep the value in our L1
                body = c.cache_set_hold(cl.session, key, value, None, LEASE_MS)
            else:
                body = c.cache_set(key, value, None)
            self.w.start(cl, body, "cset", {"key": key, "value": value})
            return
        if cl.l1 and sim.rng.random() < 0.3:  # extend what we hold, as the real client does
            pairs = {k: e[1] for k, e in cl.l1.items() if e[2] > sim.now}
            if pairs:
                body = c.cache_renew(cl.session, list(pairs.items()), LEASE_MS)
                self.w.start(cl, body, "renew", {"pairs": pairs})
                return
        entry = cl.l1.get(key)
        if entry is not None and entry[2] > sim.now:
            self.hits += 1
            self.history.append(Operation(cl.name, key, "read", None, entry[0], sim.now, sim.now))
            return
        cl.l1.pop(key, None)
        if cl.watch is None or cl.watch_topic != f"session:{cl.session}":
            self._watch(cl)
        self.w.start(cl, c.cache_fill(cl.session, key, LEASE_MS), "fill", {"key": key})

    def _watch(self, cl: SimClient) -> None:
        """(Re)subscribe to a live node; a new stream may have missed events: drop the L1."""
        sim = self.w.sim
        assert sim is not None
        if cl.unwatch is not None:
            cl.unwatch()
        cl.watch, cl.watch_topic, cl.unwatch = None, "", None
        cl.l1.clear()
        node = sim.pick_node(prefer_leader=False)
        if node is None or node.host is None:
            return
        topic = f"session:{cl.session}"

        def on_event(index: int, payload: Any) -> None:
            if payload[0] == "invalidate":
                sim.schedule(sim.rng.randrange(1, 40), ("invalidate", cl, payload[1]))

        cl.watch, cl.watch_topic = node.id, topic
        cl.unwatch = node.host.subscribe(topic, on_event)

    # -- results --------------------------------------------------------------------------------

    def finished(self, req: Request, ok: bool, value: Any) -> None:
        sim = self.w.sim
        assert sim is not None
        cl = req.client
        if not ok:
            return  # an error carries no information about the register
        if req.kind == "renew":
            self._renewed(cl, req, value)
            return
        key = req.info["key"]
        if req.kind == "cset":
            self.history.append(
                Operation(cl.name, key, "write", req.info["value"], None, req.started, sim.now)
            )
            if isinstance(value, dict) and value.get("registration") is not None:
                deadline = req.started + int(value["lease_ms"] * LEASE_SAFETY)
                if deadline > sim.now and cl.watch is not None:
                    cl.l1[key] = (req.info["value"], value["registration"], deadline)
                else:
                    self._release(cl, key, value["registration"])
            return
        self.history.append(
            Operation(cl.name, key, "read", None, value["value"], req.started, sim.now)
        )
        reg = value.get("registration")
        if reg is not None and value.get("lease_ms"):
            # From the FIRST send: a retried fill is answered from the dedup table with the
            # registration the first attempt made, whose lease started back then.
            deadline = req.started + int(value["lease_ms"] * LEASE_SAFETY)
            if deadline > sim.now and cl.watch is not None:
                cl.l1[key] = (value["value"], reg, deadline)
                return
        if reg is not None:
            self._release(cl, key, reg)

    def _renewed(self, cl: SimClient, req: Request, value: Any) -> None:
        """Extend the local leases the cluster extended, counted from the FIRST send (as for
        fills), and only for a copy still held from the same fill."""
        for key, granted in value:
            entry = cl.l1.get(key)
            if entry is None or entry[1] != req.info["pairs"].get(key):
                continue  # dropped (an invalidation) or re-filled since: leave it
            deadline = req.started + int(granted * LEASE_SAFETY)
            if deadline > entry[2]:
                cl.l1[key] = (entry[0], entry[1], deadline)
                self.renewals += 1

    # -- invalidations --------------------------------------------------------------------------

    def _drop_own(self, cl: SimClient, key: str) -> None:
        entry = cl.l1.pop(key, None)
        if entry is not None:
            self._release(cl, key, entry[1])

    def deliver(self, cl: SimClient, key: str) -> None:
        self.invalidations += 1
        entry = cl.l1.pop(key, None)
        if entry is not None:
            self._release(cl, key, entry[1])

    def _release(self, cl: SimClient, key: str, reg: int) -> None:
        """Fire-and-forget on the client's release lane (its own client id and sequence)."""
        sim = self.w.sim
        assert sim is not None
        if cl.session is None:
            return  # the session is gone, and its registrations with it
        node = sim.pick_node(prefer_leader=True)
        if node is None or node.host is None or not node.host.is_leader:
            return
        cl.release_seq += 1
        body = c.cache_release(cl.session, [(key, reg)])
        # May run inside the host's Ready handling: no process() here; the node's next tick
        # (or the Ready loop already running) picks the proposal up.
        with contextlib.suppress(ProposalDropped):
            node.host.propose(f"{cl.name}/release", cl.release_seq, body)

    def node_crashed(self, node: SimNode) -> None:
        for cl in self.w.clients:
            if cl.watch == node.id:  # the subscription died with the host
                cl.watch, cl.watch_topic, cl.unwatch = None, "", None
                cl.l1.clear()  # events may be lost with the stream: trust nothing cached

    def session_lost(self, cl: SimClient) -> None:
        cl.l1.clear()

    # -- the check ------------------------------------------------------------------------------

    def check(self) -> tuple[int, int]:
        result = check_operations(self.history, RegisterModel(), max_states=500_000)
        if result.ok is False:
            assert self.w.sim is not None
            raise self.w.sim.failure(f"cache history not linearizable: {result.explanation}")
        return len(self.history), result.states_explored
