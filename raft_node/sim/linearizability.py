"""Linearizability checking for recorded client histories (Wing & Gong search, Lowe's cache).

Why: the simulator and the soak tests record what clients *saw* (invocation time, response time,
output). A Raft bug — a stale read served by a deposed leader, a lost acknowledged write, two
lock holders — shows up as a history that no sequential execution of the data type explains.
This module decides that question, the same way Knossos' ``wgl`` and Porcupine do.

Algorithm
---------
Each operation contributes a *call* event at ``op.call`` and a *return* event at ``op.ret``. The
events are sorted by time into a doubly linked list (arrays of indices, "dancing links"). The
search walks the list from its head:

* At a call event it tries to linearize that operation now: ``model.step(state, op)``. If the
  step is legal and the resulting configuration — (bitset of linearized ops, model state) — has
  not been seen before, the op's call and return events are unlinked from the list, the choice is
  pushed on an explicit stack, and the walk restarts from the head.
* At a return event, the operation that returns there was not linearized before its response,
  so the last choice was wrong: pop it, relink its events, and continue after its call event.

The configuration cache (Lowe's memoization) is what makes the search practical: two different
orders that linearize the same set of ops and end in the same model state have identical
futures, so only the first is explored. The search is iterative (no recursion limit) and counts
every new configuration; it gives up with ``ok=None`` when it would exceed ``max_states``.

Real-time order (the tie rule)
------------------------------
Operation A happens-before operation B iff ``A.ret < B.call`` (strictly). Ops whose intervals
merely touch (``A.ret == B.call``) are concurrent and may be linearized in either order. In the
event list this means that at equal timestamps call events sort before return events. Clocks in
a simulation are coarse, so treating a tie as "concurrent" is the conservative choice: the
checker never reports a violation that depends on the order of two events stamped equal.

Unknown outcomes
----------------
An op with ``ret is None`` (the client timed out or crashed) may have taken effect at any point
after its call, or never. Its return event sits at +infinity, and the search succeeds as soon as
every op with a *known* return is linearized: unknown ops still pending then simply never took
effect. For such ops the model must not check ``op.output``.

Histories are P-compositional per key: ``check_operations`` partitions by ``op.key`` and checks
each key on its own, which is exponentially cheaper than checking the interleaved whole.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "CheckResult",
    "Model",
    "Operation",
    "check_history",
    "check_operations",
]

DEFAULT_MAX_STATES = 2_000_000
_PREFIX_SHOWN = 10  # how many trailing ops of the longest prefix an explanation lists


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation as observed from the outside.

    ``ret is None`` means the outcome is unknown: the op may have taken effect at any time after
    ``call``, or never, and ``output`` is ignored.
    """

    client: str
    key: Hashable
    kind: str
    input: Any
    output: Any
    call: float
    ret: float | None

    def describe(self) -> str:
        """Render the op for explanations: who, what, what it saw, and when."""
        ret = "?" if self.ret is None else f"{self.ret:g}"
        seen = "<unknown>" if self.ret is None else repr(self.output)
        return f"{self.client} {self.kind}({self.input!r}) -> {seen} @[{self.call:g}, {ret}]"


class Model(Protocol):
    """A sequential specification of a data type, stepped one operation at a time."""

    def init(self) -> Hashable:
        """The state before any operation."""
        ...

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        """(is op legal from state with its observed output, next state).

        For ops with unknown outcome (``op.ret is None``) the output is not checked; the model
        should return the state as if the op took effect (not taking effect is covered by the
        checker leaving the op out).
        """
        ...


@dataclass(frozen=True)
class CheckResult:
    """Verdict for a history.

    ``ok`` is True (linearizable), False (not), or None (search budget exhausted: unknown).
    ``key`` names the key whose history failed or ran out of budget.
    """

    ok: bool | None
    key: Hashable | None
    explanation: str
    states_explored: int


def check_operations(
    ops: Iterable[Operation], model: Model, *, max_states: int = DEFAULT_MAX_STATES
) -> CheckResult:
    """Check each key's sub-history independently; report the first failure, else success.

    A definite violation on any key wins over an exhausted budget on another, because it is the
    more useful answer. ``max_states`` applies to each key separately; ``states_explored`` is
    the total.
    """
    by_key: dict[Hashable, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    total = 0
    unknown: CheckResult | None = None
    for key, key_ops in by_key.items():
        result = _check_one(key_ops, model, max_states, key)
        total += result.states_explored
        if result.ok is False:
            return _with_states(result, total)
        if result.ok is None and unknown is None:
            unknown = result
    if unknown is not None:
        return _with_states(unknown, total)
    return CheckResult(True, None, f"linearizable: {len(by_key)} key(s)", total)


def check_history(
    ops: Sequence[Operation], model: Model, *, max_states: int = DEFAULT_MAX_STATES
) -> CheckResult:
    """Check ``ops`` as a single history (keys are not used to partition).

    The result's ``key`` is the ops' common key, or None when they mix keys.
    """
    keys = {op.key for op in ops}
    key = next(iter(keys)) if len(keys) == 1 else None
    return _check_one(list(ops), model, max_states, key)


def _with_states(result: CheckResult, states: int) -> CheckResult:
    return CheckResult(result.ok, result.key, result.explanation, states)


def _check_one(
    ops: list[Operation], model: Model, max_states: int, key: Hashable | None
) -> CheckResult:
    for op in ops:
        _validate(op)
    search = _Search(ops, model, max_states)
    verdict = search.run()
    if verdict is True:
        text = f"linearizable: {len(ops)} op(s), {search.explored} state(s) explored"
    elif verdict is None:
        text = (
            f"unknown: search budget of {max_states} states exhausted on a history of "
            f"{len(ops)} op(s) (longest linearizable prefix: {len(search.best_path)} op(s))"
        )
    else:
        text = search.explain(key)
    return CheckResult(verdict, None if verdict is True else key, text, search.explored)


def _validate(op: Operation) -> None:
    """Reject timestamps the event ordering cannot represent, rather than mis-order them."""
    if math.isnan(op.call) or (op.ret is not None and math.isnan(op.ret)):
        raise ValueError(f"NaN timestamp in {op!r}")
    if op.ret is not None and op.ret < op.call:
        raise ValueError(f"operation returns before it is called: {op!r}")


class _Search:
    """One WGL search over one history. Nodes are list indices: 0 is head, 2n+1 is tail."""

    def __init__(self, ops: list[Operation], model: Model, max_states: int) -> None:
        self.ops = ops
        self.model = model
        self.max_states = max_states
        self.explored = 0
        self.best_path: list[int] = []
        self.best_state: Hashable = model.init()
        self._build_events()

    def _build_events(self) -> None:
        """Sort events by time, calls before returns at equal time (the tie rule)."""
        n = len(self.ops)
        events: list[tuple[float, int, int]] = []  # (time, 0=call/1=return, op index)
        for i, op in enumerate(self.ops):
            events.append((op.call, 0, i))
            events.append((math.inf if op.ret is None else op.ret, 1, i))
        events.sort()
        self.tail = 2 * n + 1
        self.node_op = [-1] * (2 * n + 2)
        self.node_is_call = [False] * (2 * n + 2)
        self.call_node = [0] * n
        self.ret_node = [0] * n
        for pos, (_, is_ret, i) in enumerate(events, start=1):
            self.node_op[pos] = i
            self.node_is_call[pos] = not is_ret
            if is_ret:
                self.ret_node[i] = pos
            else:
                self.call_node[i] = pos
        self.next = [*range(1, 2 * n + 2), self.tail]
        self.prev = [0, *range(2 * n + 1)]

    def _lift(self, i: int) -> None:
        """Unlink op i's call and return events (it is now linearized)."""
        nxt, prv = self.next, self.prev
        for node in (self.call_node[i], self.ret_node[i]):
            nxt[prv[node]] = nxt[node]
            prv[nxt[node]] = prv[node]

    def _unlift(self, i: int) -> None:
        """Relink op i's events; valid because lifts are undone in LIFO order."""
        nxt, prv = self.next, self.prev
        for node in (self.ret_node[i], self.call_node[i]):
            nxt[prv[node]] = node
            prv[nxt[node]] = node

    def run(self) -> bool | None:
        """Depth-first search for a linearization; True, False, or None when out of budget."""
        ops, step = self.ops, self.model.step
        nxt, node_op, node_is_call = self.next, self.node_op, self.node_is_call
        state = self.best_state
        linearized = 0
        remaining = sum(op.ret is not None for op in ops)  # known-outcome ops not yet placed
        fewest_remaining = remaining
        cache: set[tuple[int, Hashable]] = set()
        stack: list[tuple[int, Hashable]] = []  # (op placed, state before it)
        path: list[int] = []
        node = nxt[0]
        while remaining:
            if node_is_call[node]:
                i = node_op[node]
                legal, new_state = step(state, ops[i])
                if legal:
                    config = (linearized | (1 << i), new_state)
                    if config not in cache:
                        if self.explored >= self.max_states:
                            return None
                        self.explored += 1
                        cache.add(config)
                        stack.append((i, state))
                        path.append(i)
                        linearized, state = config
                        remaining -= ops[i].ret is not None
                        self._lift(i)
                        if remaining < fewest_remaining:  # progress = known ops placed
                            fewest_remaining = remaining
                            self.best_path, self.best_state = path[:], state
                        node = nxt[0]
                        continue
                node = nxt[node]
            elif node == self.tail or not stack:
                return False
            else:
                i, state = stack.pop()
                path.pop()
                linearized ^= 1 << i
                remaining += ops[i].ret is not None
                self._unlift(i)
                node = nxt[self.call_node[i]]
        return True

    def _frontier(self) -> list[int]:
        """Ops that could have been linearized right after the longest prefix.

        Those are the unplaced ops called before the earliest response among unplaced ops.
        """
        placed = set(self.best_path)
        pending = [i for i in range(len(self.ops)) if i not in placed]
        first_ret = min(self.ret_node[i] for i in pending)
        return [i for i in pending if self.call_node[i] < first_ret]

    def explain(self, key: Hashable | None) -> str:
        """Describe the longest linearizable prefix and why nothing could follow it.

        "Longest" counts ops with known outcome: the first prefix found that places the most of
        them. Unknown-outcome ops appear in it only where the search placed them on the way.
        """
        prefix = self.best_path
        lines = [
            f"not linearizable (key {key!r}): {len(self.ops)} op(s); longest linearizable "
            f"prefix has {len(prefix)} op(s)"
        ]
        if len(prefix) > _PREFIX_SHOWN:
            lines.append(f"  ... {len(prefix) - _PREFIX_SHOWN} earlier op(s)")
        lines.extend(f"  {self.ops[i].describe()}" for i in prefix[-_PREFIX_SHOWN:])
        lines.append(f"state after prefix: {self.best_state!r}")
        lines.append("could not linearize next:")
        for i in self._frontier():
            op = self.ops[i]
            legal, _ = self.model.step(self.best_state, op)
            why = "legal here, but no continuation succeeds" if legal else "illegal in this state"
            lines.append(f"  {op.describe()}: {why}")
        return "\n".join(lines)
