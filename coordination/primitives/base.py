"""The contract between ``CoordinationMachine`` and its parts (sessions, locks, queues, cache).

A part is a small deterministic state machine with:

- ``ops``: write operations ``op(ctx, args) -> result | Pending``, applied from the log;
- ``queries``: read-only ``query(args) -> result``, answered after ReadIndex (or stale);
- ``next_deadline()`` and ``tick(ctx)``: time-based changes (expiry), applied by a leader-proposed
  tick entry once log time passes the deadline;
- ``session_ended(ctx, session_id)``: release what the session held (locks, leases, waits);
- ``to_state()`` / ``from_state(state)``: msgpack-able snapshot; identical on every replica.

Optional: ``observe_time(now_ms)`` (called before every applied entry, so queries that depend on
log time, like cache expiry, use the latest entry's time), ``drain_events()`` (events for
WATCH subscribers, e.g. cache invalidations) and ``checks()``: ``{op: check(args)}``, cheap
checks of an op's arguments that the leader runs before proposing (``CoordinationMachine
.validate``), so a malformed command is refused without taking a log entry. A check looks at
the arguments alone (arity, types, fixed limits), never at state, and refuses only what the op
itself would refuse first, with the same error: it runs the op's own leading checks (those
before the first one that reads state), never new ones. The op keeps every check: entries no
leader checked reach it too.

Waits: an op that must block returns ``Pending(ctx.index)`` and later calls ``ctx.complete`` or
``ctx.fail`` with that token (when granted, delivered, cancelled or timed out). Every wait has a
deadline; nothing waits forever.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from raft_node.core.fsm import Pending

Op = Callable[["Ctx", list[Any]], Any]
Query = Callable[[list[Any]], Any]
# ``record(kind, type, key, value, details)``: a change for ``coord.watch`` (see ``history``).
Record = Callable[[str, str, str, "bytes | None", "dict[str, Any] | None"], None]
Check = Callable[[list[Any]], object]  # raises CommandRejected (``errors.reject``); result unused

__all__ = [
    "Check",
    "Ctx",
    "Deadlines",
    "Op",
    "Part",
    "Pending",
    "Query",
    "Record",
    "ignore_change",
]


def ignore_change(
    kind: str, type_: str, key: str, value: bytes | None = None, details: Any = None
) -> None:
    """The recorder of a part built without a history (unit tests, custom machines)."""


@dataclass(slots=True)
class Ctx:
    """The entry being applied: its index (unique, increasing) and log time."""

    index: int
    now_ms: int
    completions: list[tuple[int, bool, Any]] = field(default_factory=list)

    def complete(self, token: int, value: Any) -> None:
        self.completions.append((token, True, value))

    def fail(
        self, token: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        """Fail a wait with a rejection: ``(code, message, details)``, as ``reject`` raises."""
        self.completions.append((token, False, (code, message, details or {})))


class Part(Protocol):
    name: str

    def ops(self) -> dict[str, Op]: ...

    def queries(self) -> dict[str, Query]: ...

    def next_deadline(self) -> int | None: ...

    def tick(self, ctx: Ctx) -> None: ...

    def session_ended(self, ctx: Ctx, session_id: int) -> None: ...

    def to_state(self) -> Any: ...

    def from_state(self, state: Any) -> None: ...


class Deadlines:
    """A min-heap of ``(deadline_ms, key)`` with lazy deletion: ``due`` yields keys whose
    deadline passed and whose current deadline (per ``current``) still matches, so callers may
    push a key again when its deadline moves without removing the old entry."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, Any]] = []

    def push(self, deadline: int, key: Any) -> None:
        heapq.heappush(self._heap, (deadline, key))

    def due(self, now_ms: int, current: Callable[[Any], int | None]) -> list[Any]:
        """Keys whose current deadline has passed, each once (a key pushed again with the same
        deadline, e.g. by a keepalive that did not move it, has two identical heap entries)."""
        heap = self._heap
        if not heap or heap[0][0] > now_ms:
            return []  # the usual case, on every tick of every part
        out: list[Any] = []
        seen: set[Any] = set()
        while heap and heap[0][0] <= now_ms:
            deadline, key = heapq.heappop(heap)
            if current(key) == deadline and key not in seen:
                seen.add(key)
                out.append(key)
        return out

    def next(self, current: Callable[[Any], int | None]) -> int | None:
        heap = self._heap
        while heap and current(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale entry
        return heap[0][0] if heap else None

    def rebuild(self, items: list[tuple[int, Any]]) -> None:
        self._heap = list(items)
        heapq.heapify(self._heap)
