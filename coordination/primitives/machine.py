"""``CoordinationMachine``: the state machine a raftsync node hosts (``STATE_MACHINE`` setting).

Commands and queries are msgpack arrays ``[op, *args]`` (``coordination.primitives.commands``
builds them). ``op`` is namespaced by part (``lock.acquire``, ``queue.put``, ``cache.set``...).
Two system commands come from the leader itself: ``tick`` (log time passed a deadline: expire
sessions, leases, waits and TTLs) and ``grace`` (a new leader extends every session by one TTL).

``validate`` is the leader's check of a client command before it is proposed (the node host
calls it): a command that is not msgpack, not an array starting with a client op's name, or
whose arguments fail the op's own stateless checks (each part's ``checks()``: arity, types,
fixed limits) is refused with the error ``apply`` would give, without taking a log entry.
``apply`` keeps all its checks: it must handle whatever the log holds, identically everywhere.
"""

from __future__ import annotations

from typing import Any

import msgpack

from coordination.primitives.base import Check, Ctx, Op, Part, Query
from coordination.primitives.errors import BAD_COMMAND, reject
from coordination.primitives.history import History
from coordination.primitives.sessions import Sessions

TICK = msgpack.packb(["tick"])
GRACE = msgpack.packb(["grace"])
SNAPSHOT_VERSION = 1
_SYSTEM = frozenset({"tick", "grace"})  # proposed by the leader itself, never by a client


class CoordinationMachine:
    def __init__(self, parts: list[Part] | None = None) -> None:
        self.sessions = Sessions(self._session_ended)
        self.history = History()  # what ``coord.watch`` replays; the parts record into it
        if parts is None:
            parts = _default_parts(self.sessions, self.history)
        self.parts: list[Part] = [self.sessions, *parts, self.history]
        self._ops: dict[str, Op] = {}
        self._queries: dict[str, Query] = {}
        checks: dict[str, Check] = {}
        for part in self.parts:
            self._ops.update(part.ops())
            self._queries.update(part.queries())
            if hasattr(part, "checks"):
                checks.update(part.checks())  # type: ignore[attr-defined]
        # Every client op -> its pre-log check, or None: one lookup tells known from unknown.
        self._checks: dict[str, Check | None] = {op: checks.get(op) for op in self._ops}
        self._completions: list[tuple[int, bool, Any]] = []
        self._clock_watchers = [
            p.observe_time
            for p in self.parts
            if hasattr(p, "observe_time")  # type: ignore[attr-defined]
        ]
        self._event_sources = [
            p.drain_events
            for p in self.parts
            if hasattr(p, "drain_events")  # type: ignore[attr-defined]
        ]

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    # -- StateMachine ---------------------------------------------------------------------------

    def apply(self, index: int, command: bytes, now_ms: int) -> Any:
        for observe in self._clock_watchers:
            observe(now_ms)  # parts answering queries by log time see every entry's time
        op, args = _decode(command)
        ctx = Ctx(index, now_ms, self._completions)
        self.history.begin(ctx)
        if op == "tick":
            for part in self.parts:  # sessions first: their releases may free resources
                part.tick(ctx)
            return None
        if op == "grace":
            self.sessions.grace(ctx)
            return None
        handler = self._ops.get(op)
        if handler is None:
            reject(BAD_COMMAND, f"unknown command {op!r}")
        return handler(ctx, args)

    def validate(self, command: bytes) -> None:
        """Refuse a client command that ``apply`` would refuse whatever the state (see the
        module doc); called by the leader before proposing, so garbage costs no log entry.
        Decodes once more than ``apply`` does, on the leader only (about 1 µs for a cache set)."""
        op, args = _decode(command)
        try:
            check = self._checks[op]
        except KeyError:
            if op in _SYSTEM:
                reject(BAD_COMMAND, f"{op!r} is a system command: only the leader proposes it")
            if op not in self._ops:  # an op added after construction has no check: apply's
                reject(BAD_COMMAND, f"unknown command {op!r}")
            check = None
        if check is not None:
            check(args)

    def query(self, query: bytes) -> Any:
        op, args = _decode(query)
        handler = self._queries.get(op)
        if handler is None:
            reject(BAD_COMMAND, f"unknown query {op!r}")
        return handler(args)

    def drain_completions(self) -> list[tuple[int, bool, Any]]:
        done, self._completions = self._completions, []
        return done

    def drain_events(self) -> list[tuple[str, Any]]:
        """Events for WATCH subscribers (e.g. cache invalidations), from every part that has
        them; the node publishes them after each applied entry."""
        events: list[tuple[str, Any]] = []
        for drain in self._event_sources:
            events.extend(drain())
        return events

    def next_deadline(self) -> int | None:
        deadlines = [d for d in (p.next_deadline() for p in self.parts) if d is not None]
        return min(deadlines) if deadlines else None

    def tick_command(self) -> bytes:
        return TICK

    def leader_command(self) -> bytes:
        return GRACE

    def _session_ended(self, ctx: Ctx, session_id: int) -> None:
        for part in self.parts[1:]:
            part.session_ended(ctx, session_id)

    def snapshot(self) -> bytes:
        state = {p.name: p.to_state() for p in self.parts}
        return msgpack.packb([SNAPSHOT_VERSION, state], use_bin_type=True)

    def restore(self, data: bytes) -> None:
        version, state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"unknown coordination snapshot version {version}")
        for part in self.parts:
            # A part newer than the snapshot (``results`` in one taken before it existed)
            # gets None and starts empty.
            part.from_state(state.get(part.name))


def _decode(raw: bytes) -> tuple[str, list[Any]]:
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types on garbage
        reject(BAD_COMMAND, f"undecodable command: {exc}")
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], str):
        reject(BAD_COMMAND, "command must be a non-empty array starting with the op name")
    return obj[0], obj[1:]


def _default_parts(sessions: Sessions, history: History) -> list[Part]:
    """The product's parts. The cache's memory budget is fixed here (not a per-node setting):
    eviction is part of the replicated state, so every replica must use the same budget."""
    from coordination.primitives.cache import Cache
    from coordination.primitives.locks import Locks
    from coordination.primitives.queues import Queues
    from coordination.primitives.ratelimits import RateLimits
    from coordination.primitives.results import Results
    from coordination.primitives.semaphores import Semaphores

    locks = Locks(sessions, record=history.record)
    return [
        locks,
        Queues(sessions),
        Cache(sessions, record=history.record, locks=locks),  # txns compare and release locks
        Results(),
        Semaphores(sessions),
        RateLimits(),
    ]
