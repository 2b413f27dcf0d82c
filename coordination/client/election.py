"""Leader election for both clients: ``coord.election(name)``.

    election = coord.election("reports")                  # Coordinator
    leadership = election.campaign("worker-3")           # blocks until elected
    if election.is_leader():                             # linearizable: still the current grant?
        publish(fenced_by=leadership.token)
    election.resign()

An election is an exclusive lock named ``election:<name>`` (``coordination.primitives.locks``),
so it needs no state-machine part of its own and inherits everything a lock guarantees: the
leader is the holder, its **fencing token** is the Raft index of the grant (strictly increasing
from one leadership to the next), the campaigners wait in FIFO order served by the leader (no
polling), and leadership is bound to the campaigner's session: when that session ends (closed,
or expired because the process died or stalled past its TTL) the next campaigner is elected.
The campaign's ``value`` (who leads: a host, a pid, a URL) is the lock's owner string, so
``leader()`` can tell everyone who it is.

``observe()`` is a short poll of ``leader()`` (a linearizable read every ``interval`` seconds,
0.5 by default): the lock part has no push for holder changes, and a poll costs one read.

``ElectionState`` is the sans-I/O half both handles share (what to send, what the answers mean,
as ``core.LockHold`` is for locks); ``Election`` blocks, ``AsyncElection`` awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import coordination.client.operations as ops
from coordination.client.core import require_current
from coordination.client.operations import EXCLUSIVE
from coordination.errors import BAD_COMMAND, LIMIT, build
from coordination.primitives import limits

# Handles take their coordinator and session untyped (``Any``): the clients import this module.

__all__ = ["PREFIX", "AsyncElection", "Election", "ElectionState", "Leadership", "lock_name"]

PREFIX = "election:"
NAME_MAX_BYTES = limits.NAME_MAX_BYTES - len(PREFIX)
WAIT_MAX = limits.WAIT_MS[1] / 1000  # one leader-served wait; longer campaigns wait again
OBSERVE_INTERVAL = 0.5


def lock_name(name: Any) -> str:
    """The lock behind election ``name``, or the cluster's own typed error for a bad name
    (``BadRequest`` empty or with odd characters, ``LimitExceeded`` too long), raised before
    anything is sent: the prefix would otherwise make an empty name valid and blame a length
    on the lock's name."""
    if not isinstance(name, str) or not name:
        raise build(BAD_COMMAND, "election name must be a non-empty string")
    if len(name.encode()) > NAME_MAX_BYTES:
        raise build(LIMIT, f"election name longer than {NAME_MAX_BYTES} bytes")
    if not limits.NAME_PATTERN.fullmatch(name):
        raise build(
            BAD_COMMAND,
            f"election name {name[:40]!r} has characters outside {limits.NAME_PATTERN.pattern}",
        )
    return PREFIX + name


@dataclass(frozen=True)
class Leadership:
    """One term of leadership: the election, the leader's value, its fencing token (the Raft
    index of the grant) and the session it is bound to."""

    name: str
    value: str
    token: int
    session: int


class ElectionState:
    """One campaigner's view of an election: its value, its leadership (if elected through this
    handle), and the operations that campaign, resign and read the leader."""

    def __init__(self, name: str, value: str) -> None:
        self.lock = lock_name(name)
        self.name = name
        self.value = value
        self.leadership: Leadership | None = None

    def _set_value(self, value: str) -> None:
        if value and value != self.value:
            if self.leadership is not None:
                raise build(BAD_COMMAND, f"already leading election {self.name} as {self.value!r}")
            self.value = value
        if len(self.value.encode()) > limits.OWNER_MAX_BYTES:
            raise build(LIMIT, f"election value longer than {limits.OWNER_MAX_BYTES} bytes")

    @staticmethod
    def _chunk(deadline: float | None) -> float:
        """The next leader-served wait: the time left (0 = try), at most ``WAIT_MAX``."""
        if deadline is None:
            return WAIT_MAX
        return min(WAIT_MAX, max(0.0, deadline - time.monotonic()))

    def _campaign_op(self, session_id: int, wait: float) -> ops.Operation[Leadership | None]:
        def elected(result: Any) -> Leadership | None:
            if not result or not result.get("acquired"):
                return None
            self.leadership = Leadership(self.name, self.value, result["token"], session_id)
            return self.leadership

        base = ops.lock_acquire(session_id, self.lock, EXCLUSIVE, self.value, wait)
        return ops.Operation(base.body, True, elected, base.wait)

    def _resign_op(self, session_id: int) -> ops.Operation[int]:
        def released(result: Any) -> int:
            count = result.get("count", 0) if isinstance(result, dict) else 0
            if count == 0:
                self.leadership = None
            return count

        base = ops.lock_release(session_id, self.lock, self.value)
        return ops.Operation(base.body, True, released)

    def _leader_op(self) -> ops.Operation[Leadership | None]:
        def leader(result: Any) -> Leadership | None:
            holders = result.get("holders") or []
            if not holders:
                return None
            h = holders[0]
            return Leadership(self.name, h["owner"], h["token"], h["session"])

        base = ops.lock_inspect(self.lock)
        return ops.Operation(base.body, False, leader)

    def _check_op(self) -> ops.Operation[bool]:
        return ops.lock_check_token(self.lock, self.leadership.token if self.leadership else 0)


def _changed(last: Any, current: Leadership | None) -> bool:
    return last is _UNSEEN or (last.token if last else None) != (current.token if current else None)


_UNSEEN: Any = object()


class Election(ElectionState):
    """A blocking handle. ``session`` None: the thread's default session at first campaign."""

    def __init__(self, coord: Any, name: str, session: Any = None) -> None:
        super().__init__(name, coord.name)
        self.coord, self.session = coord, session

    def campaign(self, value: str = "", wait: float | None = None) -> Leadership | None:
        """Become the leader: ``wait`` None blocks until elected, 0 tries once, seconds wait up
        to that long (in the lock's FIFO queue, served by the cluster). Returns the leadership,
        or None if not elected in time. ``value`` (default: the coordinator's name) is what
        ``leader()`` shows. Already leading through this handle: the same leadership."""
        self._set_value(value)
        if self.leadership is not None:
            if self.is_leader():
                return self.leadership
            self.leadership = None
        if self.session is None or self.session.lost:
            self.session = self.coord.default_session
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            leadership = self.coord.run(self._campaign_op(self.session.id, self._chunk(deadline)))
            if leadership is not None:
                return leadership
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def resign(self) -> None:
        """Give leadership up (the next campaigner is elected); nothing if not leading."""
        if self.leadership is None or self.session is None or self.session.lost:
            self.leadership = None
            return
        while self.coord.run(self._resign_op(self.session.id)) > 0:
            pass  # the same session and value campaigned twice: the lock counted both

    def leader(self) -> Leadership | None:
        """The current leader (value, token, session), or None: a linearizable read."""
        return self.coord.run(self._leader_op())

    def is_leader(self) -> bool:
        """Whether this handle's leadership is still the cluster's current grant (linearizable
        read; False at once if its session is known lost)."""
        if self.leadership is None or (self.session is not None and self.session.lost):
            return False
        return self.coord.run(self._check_op())

    def check(self) -> Leadership:
        """The leadership if still current, else ``StaleToken`` (call before a fenced act)."""
        token = self.leadership.token if self.leadership else 0
        require_current(self.lock, token, self.is_leader())
        assert self.leadership is not None
        return self.leadership

    def observe(
        self, interval: float = OBSERVE_INTERVAL, timeout: float | None = None
    ) -> Iterator[Leadership | None]:
        """Yield the leader now and at every change (a new token, or None while nobody leads),
        polling ``leader()`` every ``interval`` seconds, for ``timeout`` seconds (None: ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Any = _UNSEEN
        while deadline is None or time.monotonic() < deadline:
            current = self.leader()
            if _changed(last, current):
                last = current
                yield current
            time.sleep(interval)


class AsyncElection(ElectionState):
    """The asyncio handle; ``session`` None: the coordinator's default session."""

    def __init__(self, coord: Any, name: str, session: Any = None) -> None:
        super().__init__(name, coord.name)
        self.coord, self.session = coord, session

    async def campaign(self, value: str = "", wait: float | None = None) -> Leadership | None:
        """As ``Election.campaign``."""
        self._set_value(value)
        if self.leadership is not None:
            if await self.is_leader():
                return self.leadership
            self.leadership = None
        if self.session is None or self.session.lost:
            self.session = await self.coord.default_session()
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            op = self._campaign_op(self.session.id, self._chunk(deadline))
            leadership = await self.coord.run(op)
            if leadership is not None:
                return leadership
            if deadline is not None and time.monotonic() >= deadline:
                return None

    async def resign(self) -> None:
        if self.leadership is None or self.session is None or self.session.lost:
            self.leadership = None
            return
        while await self.coord.run(self._resign_op(self.session.id)) > 0:
            pass

    async def leader(self) -> Leadership | None:
        return await self.coord.run(self._leader_op())

    async def is_leader(self) -> bool:
        if self.leadership is None or (self.session is not None and self.session.lost):
            return False
        return await self.coord.run(self._check_op())

    async def check(self) -> Leadership:
        token = self.leadership.token if self.leadership else 0
        require_current(self.lock, token, await self.is_leader())
        assert self.leadership is not None
        return self.leadership

    async def observe(
        self, interval: float = OBSERVE_INTERVAL, timeout: float | None = None
    ) -> AsyncIterator[Leadership | None]:
        """As ``Election.observe``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Any = _UNSEEN
        while deadline is None or time.monotonic() < deadline:
            current = await self.leader()
            if _changed(last, current):
                last = current
                yield current
            await asyncio.sleep(interval)
