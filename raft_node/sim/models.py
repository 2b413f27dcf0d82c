"""Sequential specifications of raftsync's data types, for the linearizability checker.

Each model is the single-copy behaviour the replicated service promises. States are small
immutable values (hashable) because the checker caches (linearized set, state) pairs.

Unknown outcomes: when ``op.ret is None`` a model never checks ``op.output`` and returns the
state as if the op *took effect*. The checker covers "never took effect" on its own by leaving
the op out, so a model only has to describe the effectful branch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from enum import Enum
from typing import Any

from raft_node.sim.linearizability import Operation

__all__ = ["UNKNOWN_TOKEN", "FencingLockModel", "QueueModel", "RegisterModel"]

Step = tuple[bool, Hashable]


def _dispatch(
    table: dict[str, Callable[[Any, Operation], Step]], state: Any, op: Operation
) -> Step:
    """Route to the handler for ``op.kind``; an unknown kind is a harness bug, so fail loudly."""
    try:
        handler = table[op.kind]
    except KeyError:
        raise ValueError(f"unsupported operation kind {op.kind!r} in {op!r}") from None
    return handler(state, op)


class RegisterModel:
    """A single read/write/compare-and-set register.

    * ``write``: ``input`` = value; output ignored.
    * ``read``: ``output`` = value read.
    * ``cas``: ``input`` = ``(expected, new)``; ``output`` = whether it swapped.
    """

    def __init__(self, initial: Hashable = None) -> None:
        self.initial = initial
        self._table = {"write": self._write, "read": self._read, "cas": self._cas}

    def init(self) -> Hashable:
        return self.initial

    def step(self, state: Hashable, op: Operation) -> Step:
        return _dispatch(self._table, state, op)

    @staticmethod
    def _write(state: Hashable, op: Operation) -> Step:
        return True, op.input

    @staticmethod
    def _read(state: Hashable, op: Operation) -> Step:
        return (op.ret is None or op.output == state), state

    @staticmethod
    def _cas(state: Hashable, op: Operation) -> Step:
        expected, new = op.input
        swapped = state == expected
        legal = op.ret is None or op.output == swapped
        return legal, (new if swapped else state)


class _Unknown(Enum):
    """Marker for "held, by a token we never saw" (an acquire whose reply was lost)."""

    TOKEN = "unknown"

    def __repr__(self) -> str:
        return "<unknown token>"


UNKNOWN_TOKEN = _Unknown.TOKEN


class FencingLockModel:
    """A mutual-exclusion lock that hands out fencing tokens.

    State is ``(holder, last)``: the current holder's token (None when free, ``UNKNOWN_TOKEN``
    when an acquire with lost reply may hold it) and the highest token granted so far (None
    before the first grant). Tokens are ints that strictly increase across grants but need not
    be contiguous (a Raft log index is a typical token).

    * ``acquire``: a try-lock. ``output`` = the token granted, or None if refused. A grant is
      legal only when the lock is free and the token exceeds every earlier one. A refusal is
      legal only while the lock is held, unless ``allow_spurious_refusal`` (for services whose
      acquire may give up, e.g. on a leader change, without the lock being held).
    * ``release``: ``input`` = token; ``output`` = True iff that token held the lock (it is
      then free). Releasing with any other token is a no-op returning False.
    * ``check``: ``input`` = token; ``output`` = True iff that token is the current holder's.
      This is what a fenced resource asks; a stale token answering True is the classic bug.

    There are no leases here: expiry, if the service has it, must appear in the history as a
    release. With ``UNKNOWN_TOKEN`` holding, a token above ``last`` may turn out to be the
    holder's (a successful ``release``/``check`` with it pins it down); a failed check with an
    unknown holder is accepted without narrowing, which errs towards accepting histories.
    """

    def __init__(self, *, allow_spurious_refusal: bool = False) -> None:
        self.allow_spurious_refusal = allow_spurious_refusal
        self._table = {"acquire": self._acquire, "release": self._release, "check": self._check}

    def init(self) -> Hashable:
        return (None, None)

    def step(self, state: Hashable, op: Operation) -> Step:
        return _dispatch(self._table, state, op)

    @staticmethod
    def _fresh(token: Any, last: int | None) -> bool:
        """Could ``token`` be granted after ``last``? (Tokens strictly increase.)"""
        return isinstance(token, int) and (last is None or token > last)

    def _acquire(self, state: tuple[Any, int | None], op: Operation) -> Step:
        holder, last = state
        if op.ret is None:
            return True, ((UNKNOWN_TOKEN, last) if holder is None else state)
        token = op.output
        if token is None:
            return (holder is not None or self.allow_spurious_refusal), state
        if holder is None and self._fresh(token, last):
            return True, (token, token)
        return False, state

    def _release(self, state: tuple[Any, int | None], op: Operation) -> Step:
        holder, last = state
        token = op.input
        could_hold = holder == token or (holder is UNKNOWN_TOKEN and self._fresh(token, last))
        if op.ret is None or op.output:
            if not could_hold:
                return op.ret is None, state  # unknown: treat as the no-op it must have been
            return True, (None, last if holder == token else token)
        return holder != token, state

    def _check(self, state: tuple[Any, int | None], op: Operation) -> Step:
        holder, last = state
        token = op.input
        if op.ret is None:
            return True, state
        if op.output:
            if holder == token:
                return True, state
            if holder is UNKNOWN_TOKEN and self._fresh(token, last):
                return True, (token, token)
            return False, state
        return holder != token, state


class QueueModel:
    """A FIFO queue.

    * ``put``: ``input`` = value (not None: None is how ``get`` reports empty).
    * ``get``: ``output`` = the head value, removed, or None when the queue is empty.

    State is the tuple of queued values, head first.
    """

    def __init__(self) -> None:
        self._table = {"put": self._put, "get": self._get}

    def init(self) -> Hashable:
        return ()

    def step(self, state: Hashable, op: Operation) -> Step:
        return _dispatch(self._table, state, op)

    @staticmethod
    def _put(state: tuple[Any, ...], op: Operation) -> Step:
        return True, (*state, op.input)

    @staticmethod
    def _get(state: tuple[Any, ...], op: Operation) -> Step:
        if op.ret is None:
            return True, state[1:]
        if op.output is None:
            return not state, state
        return (bool(state) and state[0] == op.output), state[1:]
