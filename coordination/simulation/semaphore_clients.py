"""The semaphore side of the simulated clients (``workload`` drives it, as ``cache_clients``).

Clients take slots of one ``LIMIT``-slot semaphore (tries and leader-served waits), hold them
for a while and release them; their sessions pause, expire and are replaced under the
simulator's faults. Checks, on the replicated state after every applied entry:

- **the limit**: never more than ``LIMIT`` holders, nobody waiting while a slot is free;
- **fencing tokens**: every grant's token is unique and larger than every token the semaphore
  granted before it (in log order).
"""

from __future__ import annotations

from typing import Any

import msgpack

from coordination.primitives import commands as c
from coordination.simulation.clients import Driver, Request, SimClient
from raft_node.sim.invariants import Violation

NAME = "gamma"
LIMIT = 2
KINDS = ("sacquire", "srelease")


class SemaphoreClients:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.held: dict[str, int] = {}  # client -> token, as the client believes
        self.seen_tokens: set[int] = set()
        self.last_token = 0

    def next_op(self, cl: SimClient) -> None:
        sim = self.driver.sim
        assert sim is not None and cl.session is not None
        if cl.name in self.held:
            body = c.sem_release(cl.session, NAME, "")
            self.driver.start(cl, body, "srelease", {})
        else:
            wait = sim.rng.choice((0, 300, 1_000))
            self.driver.start(cl, c.sem_acquire(cl.session, NAME, LIMIT, "", wait), "sacquire", {})

    def wind_down(self, cl: SimClient) -> bool:
        """Release a held slot before the session closes; False if there is none."""
        if cl.name not in self.held or cl.session is None:
            return False
        self.driver.start(cl, c.sem_release(cl.session, NAME, ""), "srelease", {})
        return True

    def finished(self, req: Request, ok: bool, value: Any) -> None:
        name = req.client.name
        if not ok:
            if value[0] not in ("not_holder", "session_expired", "unknown_session"):
                raise Violation(f"{name} {req.kind} rejected unexpectedly: {value}")
            if req.kind == "srelease":
                self.held.pop(name, None)
            return
        if req.kind == "sacquire" and value.get("acquired"):
            self.held[name] = value["token"]
        elif req.kind == "srelease" and value.get("count", 0) == 0:
            self.held.pop(name, None)

    def session_lost(self, cl: SimClient) -> None:
        self.held.pop(cl.name, None)

    def check(self, machine: Any, index: int) -> None:
        info = machine.query(msgpack.packb(["sem.inspect", NAME]))
        holders, waiters = info["holders"], info["waiters"]
        if len(holders) > LIMIT:
            raise Violation(f"semaphore {NAME} has {len(holders)} holders at index {index}")
        if waiters and len(holders) < LIMIT:
            raise Violation(f"semaphore {NAME}: a slot is free while {len(waiters)} wait")
        for token in sorted(h["token"] for h in holders):
            if token in self.seen_tokens:
                continue
            if token <= self.last_token:
                raise Violation(f"semaphore {NAME} token went back: {self.last_token} -> {token}")
            self.seen_tokens.add(token)
            self.last_token = token
