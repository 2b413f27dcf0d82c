"""Client sessions: the liveness unit that owns locks, queue leases and cache registrations.

A session is opened with a TTL and kept alive by the client library (``keepalive`` entries).
Expiry is decided on the leader's clock: when log time passes a session's deadline, the leader
proposes a tick, and applying it expires the session and releases everything it held, on every
replica at the same entry. A new leader first extends every live session by one TTL (Chubby's
grace period), so a leader change (which may take a while and delays keepalives) does not
expire healthy clients.

Session ids are the index of the entry that opened them: unique, increasing, never reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Check, Ctx, Deadlines, Op, Query
from coordination.primitives.errors import SESSION_EXPIRED, UNKNOWN_SESSION, reject

EXPIRED_MEMORY = 10_000  # expired session ids remembered, to tell "expired" from "unknown"


class Sessions:
    name = "sessions"

    def __init__(self, on_end: Callable[[Ctx, int], None]) -> None:
        self._on_end = on_end
        # id -> [ttl_ms, expires_ms, label]
        self.live: dict[int, list[Any]] = {}
        self.expired: dict[int, None] = {}  # recently expired ids, oldest first
        self._deadlines = Deadlines()
        self.now_ms = 0  # log time of the last applied entry (0: none since start or restore)

    # -- used by the other parts ----------------------------------------------------------------

    def require(self, session_id: Any) -> int:
        """The id of a live session, or a typed rejection."""
        limits.session_id(session_id)
        if session_id in self.live:
            return session_id
        if session_id in self.expired:
            reject(
                SESSION_EXPIRED, f"session {session_id} expired; everything it held was released"
            )
        reject(UNKNOWN_SESSION, f"no session {session_id}")

    # -- ops ------------------------------------------------------------------------------------

    def ops(self) -> dict[str, Op]:
        return {
            "session.open": self.open,
            "session.keepalive": self.keepalive,
            "session.close": self.close,
        }

    def queries(self) -> dict[str, Query]:
        return {"session.get": self.get, "session.list": self.list}

    def checks(self) -> dict[str, Check]:
        return {
            "session.open": _open_args,
            "session.keepalive": _id_check("session.keepalive"),
            "session.close": _id_check("session.close"),
        }

    def open(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        ttl, label = _open_args(args)
        sid = ctx.index
        self.live[sid] = [ttl, ctx.now_ms + ttl, label]
        self._deadlines.push(ctx.now_ms + ttl, sid)
        return {"session": sid, "ttl_ms": ttl, "expires_ms": ctx.now_ms + ttl}

    def keepalive(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        (sid,) = limits.args(args, 1, "session.keepalive")
        sid = self.require(sid)
        return {"session": sid, "expires_ms": self.renew(ctx, sid)}

    def renew(self, ctx: Ctx, sid: int) -> int:
        """Give live session ``sid`` a full TTL from this entry's time (a keepalive; a lock
        acquire or renew carries one too); returns the new deadline."""
        record = self.live[sid]
        deadline = ctx.now_ms + record[0]
        if deadline > record[1]:
            record[1] = deadline
            self._deadlines.push(deadline, sid)
        return record[1]

    def close(self, ctx: Ctx, args: list[Any]) -> bool:
        (sid,) = limits.args(args, 1, "session.close")
        sid = self.require(sid)
        self._end(ctx, sid)
        return True

    def grace(self, ctx: Ctx) -> None:
        """New leader: give every live session one more TTL from now."""
        for sid, record in self.live.items():
            if record[1] < ctx.now_ms + record[0]:
                record[1] = ctx.now_ms + record[0]
                self._deadlines.push(record[1], sid)

    # -- time -----------------------------------------------------------------------------------

    def observe_time(self, now_ms: int) -> None:
        """Called before every applied entry, so queries can say how long a session has left
        (as of the last applied entry: log time stands still while nothing is applied)."""
        self.now_ms = max(self.now_ms, now_ms)

    def _deadline_of(self, sid: int) -> int | None:
        record = self.live.get(sid)
        return record[1] if record is not None else None

    def next_deadline(self) -> int | None:
        return self._deadlines.next(self._deadline_of)

    def tick(self, ctx: Ctx) -> None:
        for sid in self._deadlines.due(ctx.now_ms, self._deadline_of):
            self._end(ctx, sid)

    def _end(self, ctx: Ctx, sid: int) -> None:
        del self.live[sid]
        self.expired[sid] = None
        while len(self.expired) > EXPIRED_MEMORY:
            del self.expired[next(iter(self.expired))]
        self._on_end(ctx, sid)

    # -- queries and snapshots ------------------------------------------------------------------

    def get(self, args: list[Any]) -> dict[str, Any] | None:
        (sid,) = limits.args(args, 1, "session.get")
        record = self.live.get(sid)
        if record is None:
            return None
        return {
            "session": sid,
            "ttl_ms": record[0],
            "expires_ms": record[1],
            "expires_in_ms": max(0, record[1] - self.now_ms) if self.now_ms else None,
            "label": record[2],
        }

    def list(self, args: list[Any]) -> list[dict[str, Any]]:
        limits.args(args, 0, "session.list")
        return [self.get([sid]) for sid in self.live]  # type: ignore[misc]

    def to_state(self) -> Any:
        return [[sid, *rec] for sid, rec in self.live.items()], list(self.expired)

    def from_state(self, state: Any) -> None:
        live, expired = state
        self.live = {row[0]: list(row[1:]) for row in live}
        self.expired = dict.fromkeys(expired)
        self._deadlines.rebuild([(rec[1], sid) for sid, rec in self.live.items()])


def _open_args(args: list[Any]) -> tuple[int, str]:
    """``session.open``'s arguments, checked (all of its checks read no state)."""
    ttl, label = limits.args(args, 2, "session.open")
    return limits.integer(ttl, limits.SESSION_TTL_MS, "ttl_ms"), limits.owner(label)


def _id_check(op: str) -> Check:
    """Arity and the id's type: what ``require`` checks before it looks the session up."""

    def check(args: list[Any]) -> int:
        (sid,) = limits.args(args, 1, op)
        return limits.session_id(sid)

    return check
