"""Distributed counting semaphores: at most ``limit`` holders per name, FIFO fair, fenced,
session-bound. Decided by the applied log, identically on every replica.

- **Slots.** A semaphore grants up to ``limit`` slots to ``(session, owner)`` pairs. Acquiring
  again as the same pair re-enters the slot it holds (the count goes up, the token stays), so a
  nested call never waits for itself; ``release`` counts down and frees the slot at zero.
- **The limit** is fixed by the acquire that creates the semaphore; it lives while it has
  holders or waiters. An acquire naming another limit meanwhile is refused with
  ``semaphore_limit`` (details: the current limit), try or wait alike: two callers disagreeing
  on the bound is a bug to report, not a value to pick silently (etcd's and ZooKeeper's
  recipes leave it to the first creator the same way). Once idle the semaphore is dropped and
  the next acquire sets the limit afresh.
- **FIFO.** A request is granted at once only if a slot is free *and nobody waits*; otherwise it
  waits at the tail. Every request needs one slot, so granting strictly from the head starves
  nobody: the first waiter is always the next one served.
- **Waits** (``wait_ms > 0``) answer ``Pending(index)`` and complete when a slot is granted,
  when their deadline (log time of the request + ``wait_ms``) passes (a waiter past its deadline
  is never granted), or fail with ``session_expired`` when their session ends. A pair waits at
  most once per semaphore at a time.
- **Fencing tokens** strictly increase per semaphore and are never reused: a grant's token is
  the index of the entry that granted it, or one more than the last token this part issued if
  that is larger (one entry can free several slots, e.g. a tick ending several sessions, and
  grant several waiters). ``sem.check_token`` tells a fenced resource whether a token is still
  held.
- **Sessions.** Slots live as long as their session: when it ends (closed, expired, or closed
  on a dead worker's behalf), its waits fail and its slots are freed for the next waiters.
"""

from __future__ import annotations

from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Check, Ctx, Deadlines, Op, Pending, Query
from coordination.primitives.errors import (
    BAD_COMMAND,
    LIMIT,
    NOT_HOLDER,
    SEMAPHORE_LIMIT,
    SESSION_EXPIRED,
    reject,
)
from coordination.primitives.sessions import Sessions

TIMED_OUT = {"acquired": False, "timed_out": True}


class _Slot:
    __slots__ = ("count", "granted_ms", "owner", "sid", "token")

    def __init__(self, sid: int, owner: str, token: int, count: int, granted_ms: int) -> None:
        self.sid, self.owner, self.token, self.count = sid, owner, token, count
        self.granted_ms = granted_ms


class _Wait:
    __slots__ = ("deadline", "name", "owner", "sid", "since_ms", "token")

    def __init__(
        self, token: int, sid: int, owner: str, name: str, deadline: int, since_ms: int
    ) -> None:
        self.token, self.sid, self.owner, self.name = token, sid, owner, name
        self.deadline, self.since_ms = deadline, since_ms


class _Semaphore:
    __slots__ = ("holders", "last_token", "limit", "queue")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.holders: dict[tuple[int, str], _Slot] = {}  # grant order
        self.queue: dict[int, _Wait] = {}  # request index -> wait; arrival order
        self.last_token = 0


class Semaphores:
    name = "semaphores"

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.sems: dict[str, _Semaphore] = {}
        self.waits: dict[int, _Wait] = {}  # request index -> wait, over all semaphores
        self.last_token = 0  # the last token issued by this part (any semaphore)
        # session -> {semaphore name: None} it holds or waits on (derived; rebuilt on restore)
        self._by_session: dict[int, dict[str, None]] = {}
        self._deadlines = Deadlines()

    def ops(self) -> dict[str, Op]:
        return {"sem.acquire": self.acquire, "sem.release": self.release}

    def checks(self) -> dict[str, Check]:
        """Arity only: the next checks are cheap but not worth a second copy."""
        return limits.arities({"sem.acquire": 5, "sem.release": 3})

    def queries(self) -> dict[str, Query]:
        return {
            "sem.inspect": self.inspect,
            "sem.list": self.list,
            "sem.check_token": self.check_token,
        }

    # -- ops ------------------------------------------------------------------------------------

    def acquire(self, ctx: Ctx, args: list[Any]) -> dict[str, Any] | Pending:
        sid, name, limit, owner, wait_ms = limits.args(args, 5, "sem.acquire")
        name = limits.name(name, "semaphore name")
        limit = limits.integer(limit, limits.SEMAPHORE_LIMIT, "limit")
        owner = limits.owner(owner)
        wait_ms = limits.integer(wait_ms, limits.WAIT_MS, "wait_ms")
        sid = self.sessions.require(sid)

        sem = self.sems.get(name)
        if sem is not None:
            if sem.limit != limit:
                reject(
                    SEMAPHORE_LIMIT,
                    f"semaphore {name} has limit {sem.limit} while it has holders or waiters; "
                    f"an acquire with limit {limit} is refused",
                    semaphore=name,
                    limit=sem.limit,
                    requested=limit,
                )
            slot = sem.holders.get((sid, owner))
            if slot is not None:
                slot.count += 1
                return _granted(name, sem, slot)
        if sem is None or (not sem.queue and len(sem.holders) < sem.limit):
            if sem is None:
                sem = self.sems[name] = _Semaphore(limit)
            return _granted(name, sem, self._grant(ctx, name, sem, sid, owner))
        if wait_ms == 0:
            return {"acquired": False, "limit": sem.limit, "holders": len(sem.holders)}
        if any(w.sid == sid and w.owner == owner for w in sem.queue.values()):
            reject(
                BAD_COMMAND,
                f"session {sid} owner {owner!r} already waits for semaphore {name}",
            )
        if len(sem.queue) >= limits.LOCK_WAITERS_MAX:
            reject(LIMIT, f"semaphore {name} already has {limits.LOCK_WAITERS_MAX} waiters")
        wait = _Wait(ctx.index, sid, owner, name, ctx.now_ms + wait_ms, ctx.now_ms)
        self._add_wait(wait)
        return Pending(ctx.index)

    def release(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        sid, name, owner = limits.args(args, 3, "sem.release")
        name = limits.name(name, "semaphore name")
        owner = limits.owner(owner)
        sid = self.sessions.require(sid)
        sem = self.sems.get(name)
        slot = sem.holders.get((sid, owner)) if sem is not None else None
        if sem is None or slot is None:
            reject(
                NOT_HOLDER,
                f"session {sid} owner {owner!r} holds no slot of semaphore {name}",
                semaphore=name,
                session=sid,
                owner=owner,
            )
        slot.count -= 1
        if slot.count == 0:
            del sem.holders[(sid, owner)]
            self._forget_session(sid, name)
            self._regrant(ctx, name)
        return {"released": True, "count": slot.count}

    # -- time and sessions ----------------------------------------------------------------------

    def _deadline_of(self, token: int) -> int | None:
        wait = self.waits.get(token)
        return wait.deadline if wait is not None else None

    def next_deadline(self) -> int | None:
        return self._deadlines.next(self._deadline_of)

    def tick(self, ctx: Ctx) -> None:
        touched: dict[str, None] = {}
        for token in self._deadlines.due(ctx.now_ms, self._deadline_of):
            wait = self.waits[token]
            self._remove_wait(wait)
            ctx.complete(token, dict(TIMED_OUT))
            touched[wait.name] = None
        for name in touched:
            self._regrant(ctx, name)

    def session_ended(self, ctx: Ctx, session_id: int) -> None:
        names = self._by_session.pop(session_id, None)
        if not names:
            return
        for name in sorted(names):  # its waits first: none of them may be granted now
            sem = self.sems[name]
            for wait in [w for w in sem.queue.values() if w.sid == session_id]:
                self._remove_wait(wait, forget=False)
                ctx.fail(
                    wait.token,
                    SESSION_EXPIRED,
                    f"session {session_id} ended while waiting for semaphore {name}",
                )
        for name in sorted(names):
            sem = self.sems[name]
            for key in [k for k in sem.holders if k[0] == session_id]:
                del sem.holders[key]
            self._regrant(ctx, name)

    # -- state changes --------------------------------------------------------------------------

    def _grant(self, ctx: Ctx, name: str, sem: _Semaphore, sid: int, owner: str) -> _Slot:
        token = max(ctx.index, self.last_token + 1)
        self.last_token = sem.last_token = token
        slot = sem.holders[(sid, owner)] = _Slot(sid, owner, token, 1, ctx.now_ms)
        self._by_session.setdefault(sid, {})[name] = None
        return slot

    def _add_wait(self, wait: _Wait) -> None:
        self.sems[wait.name].queue[wait.token] = wait
        self.waits[wait.token] = wait
        self._by_session.setdefault(wait.sid, {})[wait.name] = None
        self._deadlines.push(wait.deadline, wait.token)

    def _remove_wait(self, wait: _Wait, forget: bool = True) -> None:
        del self.sems[wait.name].queue[wait.token]
        del self.waits[wait.token]
        if forget:
            self._forget_session(wait.sid, wait.name)

    def _forget_session(self, sid: int, name: str) -> None:
        """Drop ``name`` from ``sid``'s index once the session neither holds nor waits there."""
        sem = self.sems[name]
        if any(k[0] == sid for k in sem.holders) or any(w.sid == sid for w in sem.queue.values()):
            return
        names = self._by_session.get(sid)
        if names is not None:
            names.pop(name, None)
            if not names:
                del self._by_session[sid]

    def _regrant(self, ctx: Ctx, name: str) -> None:
        """Grant free slots to the head of ``name``'s queue, in order, timing out heads whose
        deadline has passed; then drop the semaphore if it is idle."""
        sem = self.sems.get(name)
        if sem is None:
            return
        queue = sem.queue
        while queue and len(sem.holders) < sem.limit:
            wait = next(iter(queue.values()))
            self._remove_wait(wait)
            if wait.deadline <= ctx.now_ms:
                ctx.complete(wait.token, dict(TIMED_OUT))
                continue
            slot = self._grant(ctx, name, sem, wait.sid, wait.owner)
            ctx.complete(wait.token, _granted(name, sem, slot))
        if not sem.holders and not queue:
            del self.sems[name]

    # -- queries --------------------------------------------------------------------------------

    def inspect(self, args: list[Any]) -> dict[str, Any]:
        (name,) = limits.args(args, 1, "sem.inspect")
        name = limits.name(name, "semaphore name")
        sem = self.sems.get(name)
        if sem is None:
            return {"name": name, "limit": None, "holders": [], "waiters": [], "last_token": None}
        return {
            "name": name,
            "limit": sem.limit,
            "holders": [
                {
                    "session": s.sid,
                    "owner": s.owner,
                    "token": s.token,
                    "count": s.count,
                    "granted_ms": s.granted_ms,
                }
                for s in sem.holders.values()
            ],
            "waiters": [
                {
                    "session": w.sid,
                    "owner": w.owner,
                    "since_index": w.token,
                    "since_ms": w.since_ms,
                    "deadline_ms": w.deadline,
                }
                for w in sem.queue.values()
            ],
            "last_token": sem.last_token,
        }

    def list(self, args: list[Any]) -> list[dict[str, Any]]:
        """Every semaphore with holders or waiters, by name; ``[prefix, limit]`` narrows it."""
        prefix, count = limits.prefix_and_limit(args, "sem.list", optional=True)
        names = sorted(n for n in self.sems if n.startswith(prefix))
        return [
            {
                "name": n,
                "limit": self.sems[n].limit,
                "holders": len(self.sems[n].holders),
                "waiters": len(self.sems[n].queue),
                "last_token": self.sems[n].last_token,
            }
            for n in names[:count]
        ]

    def check_token(self, args: list[Any]) -> bool:
        name, token = limits.args(args, 2, "sem.check_token")
        name = limits.name(name, "semaphore name")
        if not isinstance(token, int) or isinstance(token, bool):
            reject(BAD_COMMAND, "token must be an integer")
        sem = self.sems.get(name)
        return sem is not None and any(s.token == token for s in sem.holders.values())

    # -- snapshots ------------------------------------------------------------------------------

    def to_state(self) -> Any:
        return {
            "last_token": self.last_token,
            "sems": [
                [
                    name,
                    sem.limit,
                    sem.last_token,
                    [[s.sid, s.owner, s.token, s.count, s.granted_ms] for s in _slots(sem)],
                    [[w.token, w.sid, w.owner, w.deadline, w.since_ms] for w in _waits(sem)],
                ]
                for name, sem in self.sems.items()
            ],
        }

    def from_state(self, state: Any) -> None:
        self.sems, self.waits, self._by_session = {}, {}, {}
        self._deadlines = Deadlines()
        self.last_token = 0
        if state is None:  # a snapshot taken before this part existed
            return
        self.last_token = state["last_token"]
        for name, limit, last_token, holders, queue in state["sems"]:
            sem = self.sems[name] = _Semaphore(limit)
            sem.last_token = last_token
            for sid, owner, token, count, granted_ms in holders:
                sem.holders[(sid, owner)] = _Slot(sid, owner, token, count, granted_ms)
                self._by_session.setdefault(sid, {})[name] = None
            for token, sid, owner, deadline, since_ms in queue:
                self._add_wait(_Wait(token, sid, owner, name, deadline, since_ms))


def _granted(name: str, sem: _Semaphore, slot: _Slot) -> dict[str, Any]:
    return {"acquired": True, "token": slot.token, "count": slot.count, "limit": sem.limit}


def _slots(sem: _Semaphore) -> list[_Slot]:
    return list(sem.holders.values())


def _waits(sem: _Semaphore) -> list[_Wait]:
    return list(sem.queue.values())
