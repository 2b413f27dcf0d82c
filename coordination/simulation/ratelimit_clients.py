"""Simulated clients of the rate-limit primitive, and the bound every grant must respect.

Clients take tokens of one bucket (``RATE`` per ``PERIOD_MS``, ``BURST``) now and then, while
nodes crash, leaders change and requests are retried. Checks:

- **The token-bucket bound, on log time**: for any two grants in log order, at log times
  ``a <= b``, the grants from the first to the second (both included) number at most
  ``BURST + floor(RATE * (b - a) / PERIOD_MS)``: no interval ever runs more than the burst plus
  what the rate refilled. Checked against every earlier grant as each granted entry is applied
  (once per index; a retried request's later entries are answered from the applier's dedup
  table and change nothing, so only its first entry counts). A bucket refilled from the wrong
  clock, lost tokens across a snapshot or a leader change, or a wrong refill all show here.
- **Exactly once**: every grant a client is told about is a grant in the log, and no two
  client requests are answered with the same logged grant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack

from coordination.primitives import commands as c
from raft_node.host.applier import Outcome, decode_command
from raft_node.sim.invariants import Violation

if TYPE_CHECKING:
    from coordination.simulation.clients import Driver, Request, SimClient
    from raft_node.sim.engine import Entry, SimNode

KEY = "sim-rl"
RATE, PERIOD_MS, BURST = 3, 1_000, 2


class RateLimitClients:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.grants: list[int] = []  # log times of logged grants, in log order
        self.granted: dict[tuple[str, int], int] = {}  # (client, seq) -> its logged grant
        self.told: set[tuple[str, int]] = set()  # grants clients were told of
        self.answered: set[tuple[str, int]] = set()  # takes applied (first entry of a seq)
        self._checked_index = 0

    def next_op(self, cl: SimClient) -> None:
        n = 1 if self.driver.sim is None or self.driver.sim.rng.random() < 0.8 else BURST
        body = c.ratelimit_take(KEY, RATE, PERIOD_MS, BURST, n)
        self.driver.start(cl, body, "take", {"n": n})

    def on_applied(self, node: SimNode, entry: Entry, outcomes: list[Outcome]) -> None:
        if entry.index <= self._checked_index or not entry.data:
            return
        self._checked_index = entry.index
        client_id, seq, _, body = decode_command(entry.data)
        if not client_id or msgpack.unpackb(body)[0] != "ratelimit.take":
            return
        n = msgpack.unpackb(body)[5]
        for outcome in outcomes:
            if (outcome.client_id, outcome.seq) != (client_id, seq) or not outcome.ok:
                continue
            if (client_id, seq) in self.answered:
                continue  # a retry answered from the applier's dedup table: nothing applied
            self.answered.add((client_id, seq))
            if outcome.value["granted"]:
                assert node.host is not None
                now = node.host.log_time_ms
                self.granted[(client_id, seq)] = len(self.grants)
                self.grants.extend([now] * n)
                self._check_bound(entry.index)

    def _check_bound(self, index: int) -> None:
        last = self.grants[-1]
        total = len(self.grants)
        for i, first in enumerate(self.grants):
            allowed = BURST + RATE * (last - first) // PERIOD_MS
            if total - i > allowed:
                raise Violation(
                    f"rate limit exceeded at index {index}: {total - i} tokens granted in "
                    f"{last - first} ms of log time, at most {allowed} allowed "
                    f"({RATE}/{PERIOD_MS} ms, burst {BURST})"
                )

    def finished(self, req: Request, ok: bool, value: Any) -> None:
        if not ok:
            raise Violation(f"{req.client.name} take rejected unexpectedly: {value}")
        if not value["granted"]:
            if value["wait_ms"] <= 0:
                raise Violation(f"a refused take answered wait {value['wait_ms']}")
            return
        key = (req.client.name, req.seq)
        if key not in self.granted:
            raise Violation(f"{req.client.name} was told of a grant the log never made: {key}")
        if key in self.told:
            raise Violation(f"{req.client.name} told of one grant twice: {key}")
        self.told.add(key)

    def check(self) -> int:
        return len(self.grants)
