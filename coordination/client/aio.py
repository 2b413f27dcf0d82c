"""The asyncio coordination client: same model as ``coordination.client``, for async code.

    async with AsyncCoordinator(addresses, secret) as coord:
        async with coord.lock("report:42"):
            ...
        await coord.queue("emails").put(b"hi")

One pipelined connection serves every call (``AsyncRaftClient``); sessions keep themselves
alive from a task of their own.

All tasks share the coordinator's default session. The cluster's deadlock detector reasons about
sessions, so two tasks of one session contending for a lock would look like a session waiting
for itself; instead, tasks using the default session take turns per lock name locally (an
``asyncio.Lock`` per name, reentrant per owner) before asking the cluster. Tasks that need
independent liveness, or shared-mode locks held concurrently within the process, open their
own sessions with ``session()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from coordination.client.coordinator import EXCLUSIVE, SHARED, WAIT_MARGIN, _ms
from coordination.errors import typed
from coordination.exceptions import LockNotAcquired, StaleToken
from coordination.primitives import commands as c
from raft_node.client import AsyncRaftClient, ClusterUnavailable, Rejected, Timeout


class AsyncCoordinator:
    def __init__(
        self,
        addresses: Any,
        secret: bytes | str,
        *,
        timeout: float = 5.0,
        session_ttl: float = 10.0,
        ssl: Any = None,
    ) -> None:
        self.timeout = timeout
        self.session_ttl = session_ttl
        self._client = AsyncRaftClient(addresses, secret, timeout=timeout, ssl=ssl)
        self._default: AsyncSession | None = None
        self._default_lock = asyncio.Lock()
        self._gates: dict[str, asyncio.Lock] = {}
        self._gate_holders: dict[str, list[Any]] = {}  # name -> [owner, count]

    async def __aenter__(self) -> AsyncCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._default is not None:
            await self._default.close()
        await self._client.close()

    async def propose(self, body: bytes, timeout: float | None = None) -> Any:
        try:
            return await self._client.propose(body, timeout=timeout)
        except Rejected as exc:
            raise typed(exc) from None

    async def query(self, body: bytes, *, stale: bool = False) -> Any:
        try:
            return await self._client.read(body, stale=stale)
        except Rejected as exc:
            raise typed(exc) from None

    async def session(self, ttl: float | None = None, label: str = "") -> AsyncSession:
        session = AsyncSession(self, self.session_ttl if ttl is None else ttl)
        await session.open(label)
        return session

    async def default_session(self) -> AsyncSession:
        async with self._default_lock:
            if self._default is None or self._default.lost:
                self._default = await self.session()
            return self._default

    def lock(
        self,
        name: str,
        mode: str = EXCLUSIVE,
        *,
        wait: float | None = None,
        owner: str | None = None,
        session: AsyncSession | None = None,
    ) -> AsyncLock:
        return AsyncLock(self, name, mode, session, owner, wait)

    async def check_token(self, name: str, token: int) -> bool:
        return bool(await self.query(c.lock_check_token(name, token)))

    async def require_token(self, name: str, token: int) -> None:
        if not await self.check_token(name, token):
            raise StaleToken(name, token)

    def queue(self, name: str) -> AsyncQueue:
        return AsyncQueue(self, name)

    async def _enter_gate(self, name: str, owner: str, wait: float) -> bool:
        """Take this process's turn for ``name`` on the default session (see module doc)."""
        holder = self._gate_holders.get(name)
        if holder is not None and holder[0] == owner:
            holder[1] += 1  # reentrant
            return True
        gate = self._gates.setdefault(name, asyncio.Lock())
        if wait <= 0:
            if gate.locked():
                return False
            await gate.acquire()
        else:
            try:
                async with asyncio.timeout(wait):
                    await gate.acquire()
            except TimeoutError:
                return False
        self._gate_holders[name] = [owner, 1]
        return True

    def _leave_gate(self, name: str) -> None:
        holder = self._gate_holders[name]
        holder[1] -= 1
        if holder[1] == 0:
            del self._gate_holders[name]
            self._gates[name].release()


class AsyncSession:
    def __init__(self, coord: AsyncCoordinator, ttl: float) -> None:
        self.coord, self.ttl = coord, ttl
        self.id = 0
        self.lost = False
        self.last_renewed = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def open(self, label: str) -> None:
        result = await self.coord.propose(c.session_open(_ms(self.ttl), label))
        self.id = result["session"]
        self._task = asyncio.get_running_loop().create_task(self._keepalive())

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.coord._client.propose(c.session_keepalive(self.id))
                self.last_renewed = time.monotonic()
            except Rejected:
                self.lost = True
                return
            except (Timeout, ClusterUnavailable):
                pass
            if time.monotonic() - self.last_renewed >= self.ttl:
                self.lost = True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await self.coord.propose(c.session_close(self.id))
        self.lost = True

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncLock:
    def __init__(
        self,
        coord: AsyncCoordinator,
        name: str,
        mode: str,
        session: AsyncSession | None,
        owner: str | None,
        wait: float | None,
    ) -> None:
        if mode not in (EXCLUSIVE, SHARED):
            raise ValueError(f"mode must be {EXCLUSIVE!r} or {SHARED!r}")
        self.coord, self.name, self.mode = coord, name, mode
        self.session = session
        task = asyncio.current_task()
        self.owner = owner if owner is not None else f"task-{id(task)}"
        self.wait = wait
        self.token: int | None = None
        self._gated = False

    @property
    def lost(self) -> bool:
        return self.session is not None and self.session.lost

    async def acquire(self, wait: float | None = None) -> bool:
        gated = self.session is None
        if gated:
            self.session = await self.coord.default_session()
        wait = (self.wait if wait is None else wait) or 0.0
        started = time.monotonic()
        if gated and not await self.coord._enter_gate(self.name, self.owner, wait):
            return False
        self._gated = gated
        wait = max(0.0, wait - (time.monotonic() - started))
        assert self.session is not None
        try:
            result = await self.coord.propose(
                c.lock_acquire(self.session.id, self.name, self.mode, self.owner, _ms(wait)),
                timeout=max(self.coord.timeout, wait + WAIT_MARGIN),
            )
        except BaseException:
            if gated:
                self.coord._leave_gate(self.name)
            raise
        if not result or not result.get("acquired"):
            if gated:
                self.coord._leave_gate(self.name)
            return False
        self.token = result["token"]
        return True

    async def release(self) -> None:
        assert self.session is not None
        try:
            await self.coord.propose(c.lock_release(self.session.id, self.name, self.owner))
        finally:
            self.token = None
            if self._gated:
                self._gated = False
                self.coord._leave_gate(self.name)

    async def __aenter__(self) -> AsyncLock:
        if not await self.acquire():
            raise LockNotAcquired(self.name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.lost:
            await self.release()
        elif self._gated:
            self._gated = False
            self.coord._leave_gate(self.name)


class AsyncQueue:
    def __init__(self, coord: AsyncCoordinator, name: str) -> None:
        self.coord, self.name = coord, name

    async def declare(
        self, max_deliveries: int = 5, dedup_window: float = 300.0, max_depth: int = 100_000
    ) -> dict[str, Any]:
        return await self.coord.propose(
            c.queue_declare(self.name, max_deliveries, _ms(dedup_window), max_depth)
        )

    async def put(
        self, payload: bytes, *, priority: int = 0, dedup_id: str | None = None, delay: float = 0.0
    ) -> int:
        result = await self.coord.propose(
            c.queue_put(self.name, payload, priority, dedup_id, _ms(delay))
        )
        return result["id"]

    async def get(
        self, *, wait: float = 0.0, visibility: float = 30.0, session: AsyncSession | None = None
    ) -> dict[str, Any] | None:
        session = session or await self.coord.default_session()
        result = await self.coord.propose(
            c.queue_get(session.id, self.name, _ms(wait), _ms(visibility)),
            timeout=max(self.coord.timeout, wait + WAIT_MARGIN),
        )
        if result:
            result["session"] = session.id
        return result

    async def ack(self, message: dict[str, Any]) -> None:
        await self.coord.propose(c.queue_ack(message["session"], self.name, message["id"]))

    async def nack(self, message: dict[str, Any], requeue: bool = True, delay: float = 0.0) -> None:
        await self.coord.propose(
            c.queue_nack(message["session"], self.name, message["id"], requeue, _ms(delay))
        )

    async def stats(self) -> dict[str, Any]:
        return await self.coord.query(c.queue_stats(self.name))
