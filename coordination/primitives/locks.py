"""Distributed locks: exclusive and shared, FIFO fair, reentrant, fenced, deadlock-checked.

A lock is held by ``(session, owner)`` pairs; ``owner`` tells holders within one session apart
(a thread, a task). Everything here is decided by the applied log, identically on every replica.

- **Modes.** One exclusive holder, or any number of shared holders.
- **Reentrant** per ``(session, owner)``: acquiring again in the same mode counts up and returns
  the same token (at once, even if others wait: the owner already holds the lock). Acquiring
  in the other mode is refused with ``lock_mode`` (no upgrades or downgrades).
- **Fencing token** = the Raft index of the entry that granted the hold. Indexes only grow, so
  tokens strictly increase per lock across exclusive grants, even when a lock is dropped from
  memory once free and recreated later; readers granted together in one entry share a token,
  and a lock is granted at most once per entry (else see ``_regrant``), so no token is reused.
  ``lock.check_token`` tells a fenced resource whether a token is still a current hold.
- **FIFO fairness.** A request is granted at once only if it is compatible with the holders and
  nobody waits (so a stream of readers cannot starve a waiting writer). When holders go, the
  head of the queue is granted: one writer, or every consecutive reader at the head, together.
- **Waits** (``wait_ms > 0``) answer ``Pending(index)`` and complete later: granted, timed out
  (deadline = log time of the request + ``wait_ms``; a waiter whose deadline has passed is
  never granted, it times out), or failed with ``session_expired`` when its session ends. An
  ``(session, owner)`` waits for at most one lock at a time; a second wait is ``bad_command``
  (a try, ``wait_ms == 0``, is still allowed).
- **Deadlocks** are refused at wait time (search in ``locks_graph``, linear in the size of the
  graph). The wait-for graph has one node per *session*: A -> B
  when A waits on a lock that B holds in an incompatible mode, or on which B waits ahead of A in
  an incompatible mode. Cycles only ever appear when a wait is added (grants turn "waits ahead"
  edges into "holds" edges, releases remove edges), so the graph stays acyclic if every new wait
  is checked: the one that would close a cycle is refused with ``deadlock`` and the cycle named,
  ``cycle: session 12 -> session 15 (lock b) -> session 12 (lock a)`` (12 waits for 15 on b,
  15 waits for 12 on a). Because nodes are sessions, a session waiting behind itself under
  another owner (it holds the lock, or waits ahead for it, incompatibly) is a self-cycle and is
  refused too. The last ``DEADLOCK_MEMORY`` refusals are kept for ``lock.deadlocks`` (that log
  is the only state a refused command changes).
- **Sessions.** Locks live as long as their session: when it ends (closed or expired), its
  waits fail and its holds are released, granting the next waiters.

A lock with no holders and no waiters is dropped from memory (``last_token`` goes with it; a
later grant still gets a higher token, being a later index).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import (
    Check,
    Ctx,
    Deadlines,
    Op,
    Pending,
    Query,
    Record,
    ignore_change,
)
from coordination.primitives.errors import (
    BAD_COMMAND,
    DEADLOCK,
    LIMIT,
    LOCK_MODE,
    NOT_HOLDER,
    SESSION_EXPIRED,
    reject,
)
from coordination.primitives.locks_graph import EXCLUSIVE, find_cycle
from coordination.primitives.sessions import Sessions

SHARED = "shared"
MODES = (EXCLUSIVE, SHARED)
DEADLOCK_MEMORY = 20  # refused deadlocks kept for ``lock.deadlocks``
TIMED_OUT = {"acquired": False, "timed_out": True}


class _Hold:
    __slots__ = ("count", "mode", "owner", "sid", "token")

    def __init__(self, sid: int, owner: str, mode: str, token: int, count: int) -> None:
        self.sid, self.owner, self.mode, self.token, self.count = sid, owner, mode, token, count


class _Wait:
    __slots__ = ("deadline", "mode", "name", "owner", "sid", "token")

    def __init__(
        self, token: int, sid: int, owner: str, mode: str, name: str, deadline: int
    ) -> None:
        self.token, self.sid, self.owner, self.mode = token, sid, owner, mode
        self.name, self.deadline = name, deadline


class _Lock:
    __slots__ = ("holders", "last_token", "queue")

    def __init__(self) -> None:
        self.holders: dict[tuple[int, str], _Hold] = {}  # grant order
        self.queue: dict[int, _Wait] = {}  # token -> wait; arrival order = token order
        self.last_token = 0

    def admits(self, mode: str) -> bool:
        """Whether a ``mode`` hold is compatible with the current holders."""
        if not self.holders:
            return True
        return mode == SHARED and next(iter(self.holders.values())).mode == SHARED


class _Refs:
    """What one session is involved in: lock name -> number of its holds there; wait tokens."""

    __slots__ = ("holds", "waits")

    def __init__(self) -> None:
        self.holds: dict[str, int] = {}
        self.waits: dict[int, None] = {}


class Locks:
    name = "locks"

    def __init__(self, sessions: Sessions, record: Record | None = None) -> None:
        self.sessions = sessions
        self.record = record or ignore_change  # grants and releases, for ``coord.watch``
        self.locks: dict[str, _Lock] = {}
        self.waits: dict[int, _Wait] = {}  # token -> wait, over all locks
        self._refs: dict[int, _Refs] = {}  # session -> refs (derived; rebuilt on restore)
        self.deadlocks: list[dict[str, Any]] = []  # oldest first
        self.deferred: dict[str, int] = {}  # lock -> log time its grant was put off (see _regrant)
        self._deadlines = Deadlines()

    def ops(self) -> dict[str, Op]:
        return {
            "lock.acquire": self.acquire,
            "lock.release": self.release,
            "lock.renew": self.renew,
        }

    def queries(self) -> dict[str, Query]:
        return {
            "lock.inspect": self.inspect,
            "lock.check_token": self.check_token,
            "lock.list": self.list,
            "lock.deadlocks": self.recent_deadlocks,
        }

    # -- ops ------------------------------------------------------------------------------------

    def checks(self) -> dict[str, Check]:
        return {
            "lock.acquire": _acquire_args,
            "lock.release": _hold_check("lock.release"),
            "lock.renew": _hold_check("lock.renew"),
        }

    def acquire(self, ctx: Ctx, args: list[Any]) -> dict[str, Any] | Pending:
        """Grant, refuse, or queue a wait; an acquire that is not rejected also keeps its
        session alive (a keepalive in the same entry), so the answer confirms the client's
        lease as of the send and a busy locker needs no separate keepalive entries."""
        sid, name, mode, owner, wait_ms = _acquire_args(args)
        sid = self.sessions.require(sid)
        result = self._acquire(ctx, sid, name, mode, owner, wait_ms)
        self.sessions.renew(ctx, sid)
        return result

    def _acquire(
        self, ctx: Ctx, sid: int, name: str, mode: str, owner: str, wait_ms: int
    ) -> dict[str, Any] | Pending:
        lock = self.locks.get(name)
        if lock is not None:
            hold = lock.holders.get((sid, owner))
            if hold is not None:
                if hold.mode != mode:
                    reject(
                        LOCK_MODE,
                        f"session {sid} owner {owner!r} holds lock {name} {hold.mode}; "
                        f"release it before acquiring it {mode} (no upgrades or downgrades)",
                    )
                hold.count += 1
                return _granted(hold)
        if lock is None or (not lock.queue and lock.admits(mode)):
            if lock is None:
                lock = self.locks[name] = _Lock()
            return _granted(self._add_hold(ctx.index, name, lock, sid, owner, mode))
        if wait_ms == 0:
            return {"acquired": False}

        refs = self._refs.get(sid)
        if refs is not None:
            for token in refs.waits:
                if self.waits[token].owner == owner:
                    reject(
                        BAD_COMMAND,
                        f"session {sid} owner {owner!r} already waits for lock "
                        f"{self.waits[token].name} (one wait at a time per owner)",
                    )
        lock = self.locks.get(name)
        if lock is not None and len(lock.queue) >= limits.LOCK_WAITERS_MAX:
            reject(LIMIT, f"lock {name} already has {limits.LOCK_WAITERS_MAX} waiters")
        cycle = find_cycle(self.locks, self.waits, self._waits_of, sid, name, mode, ctx.index)
        if cycle is not None:
            message = "cycle: " + " -> ".join(
                [f"session {sid}", *(f"session {s} (lock {n})" for s, n in cycle)]
            )
            sessions, names = [sid, *(s for s, _ in cycle)], [n for _, n in cycle]
            self.deadlocks.append(
                {"index": ctx.index, "cycle": sessions, "locks": names, "message": message}
            )
            del self.deadlocks[:-DEADLOCK_MEMORY]
            reject(DEADLOCK, message, cycle=sessions, locks=names)

        wait = _Wait(ctx.index, sid, owner, mode, name, ctx.now_ms + wait_ms)
        self._add_wait(wait)
        return Pending(ctx.index)

    def release(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        sid, name, owner = limits.args(args, 3, "lock.release")
        lock, hold = self._hold(sid, name, owner)
        hold.count -= 1
        if hold.count == 0:
            self._remove_hold(name, lock, hold)
            self._regrant(ctx, name)
        return {"released": True, "count": hold.count}

    def renew(self, ctx: Ctx, args: list[Any]) -> int:
        """Check the hold is still the caller's and keep its session alive (a keepalive in the
        same entry: the client counts a renewal as one, so the cluster must too)."""
        sid, name, owner = limits.args(args, 3, "lock.renew")
        token = self._hold(sid, name, owner)[1].token
        self.sessions.renew(ctx, sid)
        return token

    # -- for the cache's transactions (``cache_txn``: fenced writes, txn compares and releases) -

    def is_current(self, name: str, token: int) -> bool:
        """Whether ``token`` is a current grant of ``name`` (``check_token``'s rule)."""
        lock = self.locks.get(name)
        return lock is not None and any(h.token == token for h in lock.holders.values())

    def require_holder(self, sid: int, name: str, owner: str) -> None:
        """Refuse as ``release`` would (``not_holder``, ``session_expired``...), changing
        nothing: a txn checks all its releases before its first change."""
        self._hold(sid, name, owner)

    def release_hold(self, ctx: Ctx, sid: int, name: str, owner: str) -> dict[str, Any]:
        """``lock.release`` from inside another op's entry (a txn's release)."""
        return self.release(ctx, [sid, name, owner])

    def _hold(self, sid: Any, name: Any, owner: Any) -> tuple[_Lock, _Hold]:
        name = limits.name(name, "lock name")
        owner = limits.owner(owner)
        sid = self.sessions.require(sid)
        lock = self.locks.get(name)
        hold = lock.holders.get((sid, owner)) if lock is not None else None
        if lock is None or hold is None:
            reject(
                NOT_HOLDER,
                f"session {sid} owner {owner!r} does not hold lock {name}",
                lock=name,
                session=sid,
                owner=owner,
            )
        return lock, hold

    # -- time and sessions ----------------------------------------------------------------------

    def _deadline_of(self, token: int) -> int | None:
        wait = self.waits.get(token)
        return wait.deadline if wait is not None else None

    def next_deadline(self) -> int | None:
        deadline = self._deadlines.next(self._deadline_of)
        if self.deferred:
            put_off = min(self.deferred.values())
            return put_off if deadline is None else min(deadline, put_off)
        return deadline

    def tick(self, ctx: Ctx) -> None:
        touched = dict.fromkeys(self.deferred)
        for token in self._deadlines.due(ctx.now_ms, self._deadline_of):
            wait = self.waits[token]
            self._remove_wait(wait)
            ctx.complete(token, dict(TIMED_OUT))
            touched[wait.name] = None
        for name in touched:
            self._regrant(ctx, name)

    def session_ended(self, ctx: Ctx, session_id: int) -> None:
        refs = self._refs.get(session_id)
        if refs is None:
            return
        touched: dict[str, None] = {}
        for token in sorted(refs.waits):  # its waits first: none of them may be granted now
            wait = self.waits[token]
            self._remove_wait(wait)
            ctx.fail(
                token,
                SESSION_EXPIRED,
                f"session {session_id} ended while waiting for lock {wait.name}",
            )
            touched[wait.name] = None
        for name in sorted(refs.holds):
            lock = self.locks[name]
            for hold in [h for h in lock.holders.values() if h.sid == session_id]:
                self._remove_hold(name, lock, hold)
            touched[name] = None
        for name in sorted(touched):
            self._regrant(ctx, name)

    # -- state changes --------------------------------------------------------------------------

    def _add_hold(
        self, token: int, name: str, lock: _Lock, sid: int, owner: str, mode: str
    ) -> _Hold:
        hold = lock.holders[(sid, owner)] = _Hold(sid, owner, mode, token, 1)
        lock.last_token = token
        self.record("lock", "acquired", name, None, _details(hold))
        refs = self._refs_of(sid)
        refs.holds[name] = refs.holds.get(name, 0) + 1
        return hold

    def _remove_hold(self, name: str, lock: _Lock, hold: _Hold) -> None:
        del lock.holders[(hold.sid, hold.owner)]
        self.record("lock", "released", name, None, _details(hold))
        refs = self._refs[hold.sid]
        refs.holds[name] -= 1
        if refs.holds[name] == 0:
            del refs.holds[name]
            self._forget_if_idle(hold.sid, refs)

    def _add_wait(self, wait: _Wait) -> None:
        self.locks[wait.name].queue[wait.token] = wait
        self.waits[wait.token] = wait
        self._refs_of(wait.sid).waits[wait.token] = None
        self._deadlines.push(wait.deadline, wait.token)

    def _remove_wait(self, wait: _Wait) -> None:
        del self.locks[wait.name].queue[wait.token]
        del self.waits[wait.token]
        refs = self._refs[wait.sid]
        del refs.waits[wait.token]
        self._forget_if_idle(wait.sid, refs)

    def _refs_of(self, sid: int) -> _Refs:
        refs = self._refs.get(sid)
        if refs is None:
            refs = self._refs[sid] = _Refs()
        return refs

    def _forget_if_idle(self, sid: int, refs: _Refs) -> None:
        if not refs.holds and not refs.waits:
            del self._refs[sid]

    def _regrant(self, ctx: Ctx, name: str) -> None:
        """Grant from the head of ``name``'s queue (one writer, or the run of readers there),
        timing out heads whose deadline has passed; then drop the lock if it is free.

        At most one batch of grants per lock per entry: in a tick that ends several sessions,
        a lock granted to one of them may be released again by the next, and a second grant
        in the same entry would reuse the token (index) of a hold that is already gone, or
        give a writer the token of the readers before it. So that grant is put off to the next
        entry: ``next_deadline`` reports it due at once and the leader proposes a tick."""
        self.deferred.pop(name, None)
        lock = self.locks.get(name)
        if lock is None:
            return
        queue = lock.queue
        granting = False
        while queue:
            wait = next(iter(queue.values()))
            if wait.deadline <= ctx.now_ms:
                self._remove_wait(wait)
                ctx.complete(wait.token, dict(TIMED_OUT))
                continue
            if not lock.admits(wait.mode):
                break
            if not granting and lock.last_token == ctx.index:
                self.deferred[name] = ctx.now_ms
                break
            granting = True
            self._remove_wait(wait)
            hold = self._add_hold(ctx.index, name, lock, wait.sid, wait.owner, wait.mode)
            ctx.complete(wait.token, _granted(hold))
        if not lock.holders and not queue:
            del self.locks[name]

    def _waits_of(self, sid: int) -> Iterable[int]:
        refs = self._refs.get(sid)
        return refs.waits if refs is not None else ()

    # -- queries --------------------------------------------------------------------------------

    def inspect(self, args: list[Any]) -> dict[str, Any]:
        (name,) = limits.args(args, 1, "lock.inspect")
        name = limits.name(name, "lock name")
        lock = self.locks.get(name)
        if lock is None:
            return {"name": name, "mode": None, "holders": [], "waiters": [], "last_token": None}
        return {
            "name": name,
            "mode": _mode(lock),
            "holders": [
                {
                    "session": h.sid,
                    "owner": h.owner,
                    "mode": h.mode,
                    "token": h.token,
                    "count": h.count,
                }
                for h in lock.holders.values()
            ],
            "waiters": [
                {
                    "session": w.sid,
                    "owner": w.owner,
                    "mode": w.mode,
                    "since_index": w.token,
                    "deadline_ms": w.deadline,
                }
                for w in lock.queue.values()
            ],
            "last_token": lock.last_token,
        }

    def check_token(self, args: list[Any]) -> bool:
        name, token = limits.args(args, 2, "lock.check_token")
        name = limits.name(name, "lock name")
        if not isinstance(token, int) or isinstance(token, bool):
            reject(BAD_COMMAND, "token must be an integer")
        return self.is_current(name, token)

    def list(self, args: list[Any]) -> list[dict[str, Any]]:
        """Every lock with holders or waiters, by name; ``[prefix, limit]`` narrows it."""
        prefix, limit = limits.prefix_and_limit(args, "lock.list", optional=True)
        names = sorted(n for n in self.locks if n.startswith(prefix))
        return [
            {
                "name": n,
                "mode": _mode(self.locks[n]),
                "holders": len(self.locks[n].holders),
                "waiters": len(self.locks[n].queue),
                "last_token": self.locks[n].last_token,
            }
            for n in names[:limit]
        ]

    def recent_deadlocks(self, args: list[Any]) -> list[dict[str, Any]]:
        limits.args(args, 0, "lock.deadlocks")
        return [dict(d) for d in self.deadlocks]

    # -- snapshots ------------------------------------------------------------------------------

    def to_state(self) -> Any:
        return {
            "locks": [
                [
                    name,
                    lock.last_token,
                    [[h.sid, h.owner, h.mode, h.token, h.count] for h in lock.holders.values()],
                    [[w.token, w.sid, w.owner, w.mode, w.deadline] for w in lock.queue.values()],
                ]
                for name, lock in self.locks.items()
            ],
            "deadlocks": [dict(d) for d in self.deadlocks],
            "deferred": [[name, at_ms] for name, at_ms in self.deferred.items()],
        }

    def from_state(self, state: Any) -> None:
        self.locks, self.waits, self._refs = {}, {}, {}
        self._deadlines = Deadlines()
        record, self.record = self.record, ignore_change  # restoring holds is not a change
        try:
            for name, last_token, holders, queue in state["locks"]:
                lock = self.locks[name] = _Lock()
                for sid, owner, mode, token, count in holders:
                    self._add_hold(token, name, lock, sid, owner, mode).count = count
                for token, sid, owner, mode, deadline in queue:
                    self._add_wait(_Wait(token, sid, owner, mode, name, deadline))
                lock.last_token = last_token
        finally:
            self.record = record
        self.deadlocks = [dict(d) for d in state["deadlocks"]]
        self.deferred = {name: at_ms for name, at_ms in state["deferred"]}


def _granted(hold: _Hold) -> dict[str, Any]:
    return {"acquired": True, "token": hold.token, "mode": hold.mode, "count": hold.count}


def _details(hold: _Hold) -> dict[str, Any]:
    return {"token": hold.token, "owner": hold.owner, "mode": hold.mode, "session": hold.sid}


def _mode(lock: _Lock) -> str | None:
    return next(iter(lock.holders.values())).mode if lock.holders else None


def _acquire_args(args: list[Any]) -> tuple[int, str, str, str, int]:
    """``lock.acquire``'s arguments, checked in order; the session id only for its type (its
    liveness is state, checked by the op)."""
    sid, name, mode, owner, wait_ms = limits.args(args, 5, "lock.acquire")
    name = limits.name(name, "lock name")
    if mode not in MODES:
        reject(BAD_COMMAND, f"mode must be {EXCLUSIVE!r} or {SHARED!r}")
    owner = limits.owner(owner)
    wait_ms = limits.integer(wait_ms, limits.WAIT_MS, "wait_ms")
    return limits.session_id(sid), name, mode, owner, wait_ms


def _hold_check(op: str) -> Check:
    """``lock.release``/``lock.renew``: what ``Locks._hold`` checks before reading state."""

    def check(args: list[Any]) -> None:
        sid, name, owner = limits.args(args, 3, op)
        limits.name(name, "lock name")
        limits.owner(owner)
        limits.session_id(sid)

    return check
