"""``ProbeMachine``: the coordination state machine plus a ``probe`` part that refuses on demand,
so a test can send any error code across the real wire (node process, applier, client protocol,
raft client, coordination client) and see what the client raises.

- ``probe.reject [code, message, details]`` (a command, or a query): refused with exactly that;
- ``probe.wait`` (a command): pending until ``probe.fail``;
- ``probe.fail [code, message, details]``: fails every pending ``probe.wait`` with that (the
  completion path of blocking commands, ``Ctx.fail``); answers how many it failed.
"""

from __future__ import annotations

from typing import Any

from coordination.primitives.base import Ctx, Op, Pending, Query
from coordination.primitives.machine import CoordinationMachine
from raft_node.core.fsm import CommandRejected


class Probe:
    name = "probe"

    def __init__(self) -> None:
        self.waits: list[int] = []

    def ops(self) -> dict[str, Op]:
        return {"probe.reject": self.reject, "probe.wait": self.wait, "probe.fail": self.fail}

    def queries(self) -> dict[str, Query]:
        return {"probe.reject": lambda args: self.reject(None, args)}

    def reject(self, ctx: Ctx | None, args: list[Any]) -> Any:
        code, message, details = args
        raise CommandRejected(code, message, details)

    def wait(self, ctx: Ctx, args: list[Any]) -> Pending:
        self.waits.append(ctx.index)
        return Pending(ctx.index)

    def fail(self, ctx: Ctx, args: list[Any]) -> int:
        code, message, details = args
        waits, self.waits = self.waits, []
        for token in waits:
            ctx.fail(token, code, message, details)
        return len(waits)

    def next_deadline(self) -> int | None:
        return None

    def tick(self, ctx: Ctx) -> None:
        pass

    def session_ended(self, ctx: Ctx, session_id: int) -> None:
        pass

    def to_state(self) -> Any:
        return list(self.waits)

    def from_state(self, state: Any) -> None:
        self.waits = list(state or [])


class ProbeMachine(CoordinationMachine):
    def __init__(self) -> None:
        super().__init__()
        probe = Probe()  # the default parts are built by the constructor: add the probe after
        self.parts.append(probe)
        self._ops.update(probe.ops())
        self._queries.update(probe.queries())
