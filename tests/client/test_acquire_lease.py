"""``acquire()`` never returns a token that is already superseded (issue 15): when the answer
comes back after the session's lease may have run out (a pause inside the call, a slow
network), the client checks the token with a linearizable read before returning it, and answers
False with ``lapsed`` set if it is gone. While the lease is sure, no extra read is made. Both
clients, locks and semaphores, without a cluster (a fake ``run``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import pytest

import coordination.client.core as core_module
from coordination.client.aio import AsyncLock
from coordination.client.coordinator import Lock
from coordination.client.core import SessionKeepalive
from coordination.client.semaphores import AsyncSemaphore, Semaphore


class FakeSession(SessionKeepalive):
    def __init__(self, ttl: float = 1.0) -> None:
        super().__init__(ttl)
        self.id = 7

    @property
    def lost(self) -> bool:
        return False


class Clock:
    """``time.monotonic`` for the handles, which a fake call moves on (a pause in the call)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return _real_monotonic() + self.offset


_real_monotonic = time.monotonic
CLOCK = Clock()


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    CLOCK.offset = 0.0
    monkeypatch.setattr(core_module.time, "monotonic", CLOCK)


class FakeCoord:
    """Answers an acquire with a grant (pausing ``pause`` seconds "inside the call": the clock
    moves on, as if the process had been stopped between sending and reading the answer), and
    a token check with ``still_current``."""

    def __init__(self, session: FakeSession, pause: float, still_current: bool) -> None:
        self.session, self.pause, self.still_current = session, pause, still_current
        self.sent: list[str] = []

    def run(self, op: Any) -> Any:
        name = msgpack.unpackb(op.body)[0]
        self.sent.append(name)
        if name.endswith("acquire"):
            CLOCK.offset += self.pause
            return op.decode({"acquired": True, "token": 42, "count": 1, "mode": "exclusive"})
        assert name.endswith("check_token")
        return op.decode(self.still_current)


class AsyncFakeCoord(FakeCoord):
    async def run(self, op: Any) -> Any:  # type: ignore[override]
        return FakeCoord.run(self, op)

    async def default_session(self) -> FakeSession:
        return self.session

    async def _enter_gate(self, name: str, owner: str, wait: float) -> bool:
        return True

    def _leave_gate(self, name: str) -> None:
        pass


def _sync_handle(kind: str, coord: FakeCoord) -> Any:
    if kind == "lock":
        return Lock(coord, "L", "exclusive", coord.session, "me", None)  # type: ignore[arg-type]
    return Semaphore(coord, "S", 2, coord.session, "me", None)


@pytest.mark.parametrize("kind", ["lock", "semaphore"])
def test_a_grant_answered_within_the_lease_is_returned_without_a_check(kind: str) -> None:
    coord = FakeCoord(FakeSession(), pause=0.0, still_current=False)
    handle = _sync_handle(kind, coord)
    assert handle.acquire() is True and handle.token == 42
    assert len(coord.sent) == 1


@pytest.mark.parametrize("kind", ["lock", "semaphore"])
def test_a_grant_answered_after_the_lease_is_checked_and_kept_if_current(kind: str) -> None:
    coord = FakeCoord(FakeSession(), pause=5.0, still_current=True)
    handle = _sync_handle(kind, coord)
    assert handle.acquire() is True and handle.token == 42 and not handle.lapsed
    assert coord.sent[1].endswith("check_token")


@pytest.mark.parametrize("kind", ["lock", "semaphore"])
def test_a_superseded_grant_is_not_returned(kind: str) -> None:
    coord = FakeCoord(FakeSession(), pause=5.0, still_current=False)
    handle = _sync_handle(kind, coord)
    assert handle.acquire() is False
    assert handle.lapsed and handle.token is None and handle.count == 0


def test_the_asyncio_handles_check_too() -> None:
    async def main() -> None:
        for cls, args in ((AsyncLock, ("L", "exclusive")), (AsyncSemaphore, ("S", 2))):
            coord = AsyncFakeCoord(FakeSession(), pause=5.0, still_current=False)
            handle = cls(coord, *args, None, "me", None)
            assert await handle.acquire() is False and handle.lapsed
            coord = AsyncFakeCoord(FakeSession(), pause=5.0, still_current=True)
            handle = cls(coord, *args, None, "me", None)
            assert await handle.acquire() is True and handle.token == 42

    asyncio.run(main())


def test_the_lease_counts_from_when_the_last_confirmed_keepalive_was_sent() -> None:
    session = FakeSession(ttl=1.0)
    assert not session.lease_in_doubt
    sent = time.monotonic() - 0.95  # sent long ago, answered just now
    session.confirmed_at = time.monotonic() - 5
    assert session.lease_in_doubt
    assert session._keepalive_lost(None, sent) is False
    assert session.lease_in_doubt  # 0.95 s of a 1 s TTL (less the margin) are gone
    assert session._keepalive_lost(None, time.monotonic()) is False
    assert not session.lease_in_doubt


def test_a_lock_acquire_confirms_the_lease_and_puts_off_the_next_keepalive() -> None:
    """The acquire's entry renews the session (``Locks.acquire``), so its answer confirms the
    lease from when it was sent; a semaphore acquire does not renew, so it still checks."""
    session = FakeSession(ttl=1.0)
    session.confirmed_at = session.last_renewed = time.monotonic() - 5  # in doubt, keepalive due
    assert session.lease_in_doubt and session._keepalive_wait() == 0.0
    coord = FakeCoord(session, pause=0.0, still_current=False)
    assert _sync_handle("lock", coord).acquire() is True
    assert coord.sent == ["lock.acquire"]  # no check: the acquire itself renewed the lease
    assert not session.lease_in_doubt
    assert 0.25 < session._keepalive_wait() <= session.keepalive_interval

    session = FakeSession(ttl=1.0)
    session.confirmed_at = time.monotonic() - 5
    coord = FakeCoord(session, pause=0.0, still_current=True)
    assert _sync_handle("semaphore", coord).acquire() is True
    assert coord.sent[1].endswith("check_token") and session.lease_in_doubt
