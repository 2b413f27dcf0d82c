"""The asyncio coordination client: every operation of ``Coordinator``, for async code.

    async with AsyncCoordinator(addresses, secret) as coord:
        async with coord.lock("report:42") as lock:
            await lock.renew()
        await coord.queue("emails").put(b"hi")
        msg = await coord.queue("emails").get(wait=5)
        await msg.ack()

It shares the blocking client's core: every call is an operation of ``operations`` run by
``run`` (the same commands, deadlines and decoding), and locks and sessions keep their state
with ``core``'s classes; only the waiting differs (``await`` here). One pipelined connection
serves every call (``AsyncRaftClient``); sessions keep themselves alive from a task of their own.

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
import os
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import coordination.client.operations as ops
from coordination.client.coordinator import settings_arguments
from coordination.client.core import (
    LockHold,
    SessionKeepalive,
    decoded,
    message_fields,
    require_current,
)
from coordination.client.election import AsyncElection
from coordination.client.operations import EXCLUSIVE, Operation
from coordination.client.put_batcher import PutBatcher
from coordination.client.ratelimit import AsyncRateLimit
from coordination.client.semaphores import AsyncSemaphore
from coordination.client.txn import AsyncTransactions
from coordination.client.watch import AsyncWatch, cursor_for
from coordination.errors import typed
from coordination.exceptions import LockNotAcquired
from raft_node.client import AsyncRaftClient, OutcomeUnknown, RaftError

T = TypeVar("T")


class AsyncCoordinator(AsyncTransactions):  # fenced writes and txns: ``client.txn``
    def __init__(
        self,
        addresses: Any,
        secret: bytes | str,
        *,
        timeout: float = 5.0,
        session_ttl: float = 10.0,
        ssl: Any = None,
        name: str | None = None,
    ) -> None:
        self.addresses = addresses
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.timeout = timeout
        self.session_ttl = session_ttl
        self.ssl = ssl
        self.name = name or f"coord-{os.getpid()}"
        self._client = AsyncRaftClient(
            addresses, secret, timeout=timeout, ssl=ssl, name=f"{self.name}-{os.urandom(4).hex()}"
        )
        self._defaults: dict[float, AsyncSession] = {}
        self._default_lock = asyncio.Lock()
        self._gates: dict[str, asyncio.Lock] = {}
        self._gate_holders: dict[str, list[Any]] = {}  # name -> [owner, count]
        self.put_batcher = PutBatcher(self.propose)  # concurrent puts share entries

    @classmethod
    def from_settings(
        cls, addresses: Any = None, secret: bytes | str | None = None, **overrides: Any
    ) -> AsyncCoordinator:
        """An asyncio coordinator for this Django project's cluster, as
        ``Coordinator.from_settings``."""
        addresses, secret, kwargs = settings_arguments(addresses, secret, overrides)
        return cls(addresses, secret, **kwargs)

    async def __aenter__(self) -> AsyncCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        sessions, self._defaults = list(self._defaults.values()), {}
        for session in sessions:
            await session.close()
        await self._client.close()

    # -- calls ----------------------------------------------------------------------------------

    async def run(self, op: Operation[T]) -> T:
        """Run one operation (``coordination.client.operations``) and return its result;
        errors come typed (``coordination.errors``)."""
        deadline = op.deadline(self.timeout)
        if op.write:
            # ``propose`` and ``core.remember``, inline: no coroutine and no generator of their
            # own per write (the hot path of every primitive; a few µs of the client's ~20).
            try:
                result = await self._client.propose(op.body, timeout=deadline)
            except RaftError as exc:
                error = typed(exc)
                if isinstance(error, OutcomeUnknown):
                    error.decode = op.decode  # type: ignore[attr-defined]
                raise error from None
            return op.decode(result)
        return op.decode(await self.query(op.body, stale=op.stale, timeout=deadline))

    async def resolve(self, unknown: OutcomeUnknown, timeout: float | None = None) -> Any:
        """As ``Coordinator.resolve``."""
        try:
            return decoded(unknown, await self._client.resolve(unknown, timeout=timeout))
        except RaftError as exc:
            raise typed(exc) from None

    async def propose(self, body: bytes, timeout: float | None = None) -> Any:
        """Apply a raw command (``coordination.primitives.commands``) exactly once."""
        try:
            return await self._client.propose(body, timeout=timeout)
        except RaftError as exc:
            raise typed(exc) from None

    async def query(self, body: bytes, *, stale: bool = False, timeout: float | None = None) -> Any:
        """Run a raw query; linearizable unless ``stale``."""
        try:
            return await self._client.read(body, stale=stale, timeout=timeout)
        except RaftError as exc:
            raise typed(exc) from None

    async def transfer_leadership(self, target: str) -> str:
        """Hand leadership to node ``target``; returns the new leader's id."""
        try:
            return await self._client.transfer_leadership(target)
        except RaftError as exc:
            raise typed(exc) from None

    # -- sessions -------------------------------------------------------------------------------

    async def session(self, ttl: float | None = None, label: str = "") -> AsyncSession:
        """Open a new session (kept alive by a task until ``close``)."""
        session = AsyncSession(self, self.session_ttl if ttl is None else ttl)
        await session.open(label or self.name)
        return session

    async def default_session(self, ttl: float | None = None) -> AsyncSession:
        """The coordinator's session with that TTL (default ``session_ttl``), opened on first
        use and reopened if it was lost."""
        ttl = self.session_ttl if ttl is None else ttl
        async with self._default_lock:
            session = self._defaults.get(ttl)
            if session is None or session.lost:
                session = self._defaults[ttl] = await self.session(ttl)
            return session

    async def sessions(self) -> list[dict[str, Any]]:
        return await self.run(ops.session_list())

    async def session_info(self, session_id: int) -> dict[str, Any] | None:
        return await self.run(ops.session_get(session_id))

    # -- locks ----------------------------------------------------------------------------------

    def lock(
        self,
        name: str,
        mode: str = EXCLUSIVE,
        *,
        wait: float | None = None,
        owner: str | None = None,
        session: AsyncSession | None = None,
    ) -> AsyncLock:
        """A lock handle (not yet acquired): ``async with`` or ``acquire()``/``release()``.
        ``owner`` defaults to the calling task."""
        return AsyncLock(self, name, mode, session, owner, wait)

    async def check_token(self, name: str, token: int) -> bool:
        return await self.run(ops.lock_check_token(name, token))

    async def require_token(self, name: str, token: int) -> None:
        require_current(name, token, await self.check_token(name, token))

    async def inspect_lock(self, name: str) -> dict[str, Any]:
        return await self.run(ops.lock_inspect(name))

    async def locks(self, prefix: str = "", limit: int | None = None) -> Any:
        return await self.run(ops.lock_list(prefix, limit))

    async def deadlocks(self) -> Any:
        return await self.run(ops.lock_deadlocks())

    # -- elections (``coordination.client.election``) ------------------------------------------

    def election(self, name: str, *, session: AsyncSession | None = None) -> AsyncElection:
        """As ``Coordinator.election``; without a session, the coordinator's default one."""
        return AsyncElection(self, name, session)

    # -- semaphores (``coordination.client.semaphores``) ---------------------------------------

    def watch(
        self, key_or_prefix: str = "", since_version: int | None = None, **options: Any
    ) -> AsyncWatch:
        """``Coordinator.watch`` as an async iterator (call it with the loop running)."""
        return AsyncWatch(self, cursor_for(key_or_prefix, since_version, **options))

    def semaphore(
        self,
        name: str,
        limit: int,
        *,
        wait: float | None = None,
        owner: str | None = None,
        session: AsyncSession | None = None,
    ) -> AsyncSemaphore:
        """As ``Coordinator.semaphore``; ``owner`` defaults to the calling task."""
        return AsyncSemaphore(self, name, limit, session, owner, wait)

    async def inspect_semaphore(self, name: str) -> dict[str, Any]:
        return await self.run(ops.sem_inspect(name))

    async def semaphores(self, prefix: str = "", limit: int | None = None) -> Any:
        return await self.run(ops.sem_list(prefix, limit))

    async def check_semaphore_token(self, name: str, token: int) -> bool:
        return await self.run(ops.sem_check_token(name, token))

    # -- queues ---------------------------------------------------------------------------------

    def queue(self, name: str) -> AsyncQueue:
        return AsyncQueue(self, name)

    async def queues(self) -> Any:
        return await self.run(ops.queue_list())

    async def get_any(
        self,
        queues: list[str],
        max_count: int = 1,
        *,
        wait: float = 0.0,
        visibility: float | None = 30.0,
        session: AsyncSession | None = None,
    ) -> list[AsyncMessage]:
        """As ``Coordinator.get_any``: the first of ``queues`` with any ready, in one entry."""
        session = session or await self.default_session()
        rows = await self.run(ops.queue_get_any(session.id, queues, max_count, wait, visibility))
        return [self.queue(row["queue"])._message(row, session) for row in rows]

    async def propose_ack(self, session: AsyncSession, queue: str, msg_id: int) -> None:
        await self.run(ops.queue_ack(session.id, queue, msg_id))

    async def propose_ack_many(
        self, session: AsyncSession, queue: str, msg_ids: list[int]
    ) -> list[int]:
        return await self.run(ops.queue_ack_many(session.id, queue, msg_ids))

    async def propose_nack(
        self, session: AsyncSession, queue: str, msg_id: int, *, requeue: bool = True
    ) -> None:
        await self.run(ops.queue_nack(session.id, queue, msg_id, requeue))

    # -- rate limits ----------------------------------------------------------------------------

    def rate_limit(self, key: str, rate: Any, burst: int | None = None) -> AsyncRateLimit:
        """As ``Coordinator.rate_limit``; the handle's calls are awaited."""
        return AsyncRateLimit(self, key, rate, burst)

    # -- cache ----------------------------------------------------------------------------------

    async def cache_keys(self, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        return await self.run(ops.cache_keys(prefix, limit))

    async def cache_stats(self) -> dict[str, Any]:
        return await self.run(ops.cache_stats())

    async def cache_get_versioned(self, key: str) -> tuple[bytes, int] | None:
        """As ``Coordinator.cache_get_versioned``."""
        return await self.run(ops.cache_get_versioned(key))

    async def cache_cas(
        self, key: str, expected_version: int | None, value: bytes, ttl: float | None = None
    ) -> int | bool:
        """As ``Coordinator.cache_cas``."""
        return await self.run(ops.cache_cas(key, expected_version, value, ttl))

    # -- the default session's local turns ------------------------------------------------------

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


class AsyncSession(SessionKeepalive):
    """A session kept alive by a task (policy: ``SessionKeepalive``)."""

    def __init__(self, coord: AsyncCoordinator, ttl: float) -> None:
        super().__init__(ttl)
        self.coord = coord
        self._lost = False
        self._task: asyncio.Task[None] | None = None

    @property
    def lost(self) -> bool:
        """True once the cluster may have expired this session (locks must be presumed gone)."""
        return self._lost

    async def open(self, label: str = "") -> None:
        self.id = (await self.coord.run(ops.session_open(self.ttl, label)))["session"]
        self._renewed()
        self._task = asyncio.get_running_loop().create_task(self._keepalive())

    async def _keepalive(self) -> None:
        keepalive = ops.session_keepalive(self.id)
        delay = self.keepalive_interval
        while True:
            await asyncio.sleep(delay)
            delay = self._keepalive_wait()
            if delay:
                continue  # a lock acquire renewed the session meanwhile
            delay = self.keepalive_interval
            error: RaftError | None = None
            sent = time.monotonic()
            try:
                await self.coord._client.propose(keepalive.body)
            except RaftError as exc:
                error = exc
            if self._keepalive_lost(error, sent):
                self._lost = True
                return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if not self._lost:
            with contextlib.suppress(RaftError):
                await self.coord.run(ops.session_close(self.id))
        self._lost = True

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncLock(LockHold):
    """A handle on a named lock for one (session, owner). Reentrant: nested acquires count.
    Without a session it uses the default one, taking its turn locally first (module doc)."""

    def __init__(
        self,
        coord: AsyncCoordinator,
        name: str,
        mode: str,
        session: AsyncSession | None,
        owner: str | None,
        wait: float | None,
    ) -> None:
        owner = owner if owner is not None else f"task-{id(asyncio.current_task())}"
        super().__init__(name, mode, owner, wait)
        self.coord, self.session = coord, session
        self._gated = session is None  # on the default session: take turns locally
        self._turns = 0  # local turns taken (one per acquire held)

    @property
    def lost(self) -> bool:
        return self.session is not None and self.session.lost

    async def acquire(self, wait: float | None = None) -> bool:
        if self.session is None:
            self.session = await self.coord.default_session()
        wait = self._wait_for(wait)
        if self._gated:
            started = time.monotonic()
            if not await self.coord._enter_gate(self.name, self.owner, wait):
                return False
            self._turns += 1
            wait = max(0.0, wait - (time.monotonic() - started))
        try:
            sent = time.monotonic()
            acquired = await self.coord.run(self._acquire_op(self.session.id, wait))
            self.session._confirmed(sent)  # the acquire's entry renewed the session
            if acquired and self.session.lease_in_doubt:  # as ``BlockingHold.acquire``
                acquired = self._confirm(await self.coord.run(self._check_op()))
        except BaseException:
            self._end_turn()
            raise
        if not acquired:
            self._end_turn()
        return acquired

    def _end_turn(self) -> None:
        if self._turns:
            self._turns -= 1
            self.coord._leave_gate(self.name)

    async def release(self) -> None:
        assert self.session is not None, "release of a lock never acquired"
        try:
            await self.coord.run(self._release_op(self.session.id))
        finally:
            self._end_turn()

    async def renew(self) -> int:
        """Check the hold is still ours (``NotHolder`` otherwise) and keep the session alive."""
        assert self.session is not None, "renew of a lock never acquired"
        token = await self.coord.run(self._renew_op(self.session.id))
        self.session._renewed()
        return token

    async def __aenter__(self) -> AsyncLock:
        if not await self.acquire():
            raise LockNotAcquired(self.name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.lost:
            await self.release()
        else:
            self._end_turn()  # released by the cluster already


@dataclass
class AsyncMessage:
    """A leased message (as ``coordination.client.Message``): ``await msg.ack()``.

    Indexing (``msg["payload"]``, ``msg["session"]``) reads the row the asyncio client used to
    return as a plain dict, so code written against that keeps working."""

    id: int
    payload: bytes
    priority: int
    delivery_count: int
    queue: AsyncQueue = field(repr=False)
    session: AsyncSession = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    async def ack(self) -> None:
        await self.queue.ack(self)

    async def nack(self, requeue: bool = True, delay: float = 0.0) -> None:
        await self.queue.nack(self, requeue=requeue, delay=delay)

    async def touch(self, visibility: float) -> None:
        """Keep the lease for ``visibility`` more seconds (a long-running task)."""
        await self.queue.touch(self, visibility)

    def __getitem__(self, key: str) -> Any:
        if key in ("id", "payload", "priority", "delivery_count"):
            return getattr(self, key)
        if key == "session":
            return self.session.id
        return self.meta[key]


class AsyncQueue:
    """A named priority queue (0..9, higher first; FIFO within a priority)."""

    def __init__(self, coord: AsyncCoordinator, name: str) -> None:
        self.coord, self.name = coord, name

    async def declare(
        self, max_deliveries: int = 5, dedup_window: float = 300.0, max_depth: int = 100_000
    ) -> dict[str, Any]:
        op = ops.queue_declare(self.name, max_deliveries, dedup_window, max_depth)
        return await self.coord.run(op)

    async def put(
        self,
        payload: bytes,
        *,
        priority: int = 0,
        dedup_id: str | None = None,
        delay: float = 0.0,
        hold_key: str | None = None,
        tag: str = "",
    ) -> ops.PutResult:
        """As ``Queue.put``. Puts that coroutines of this coordinator start in the same
        event-loop turn share one log entry (``client.put_batcher``); each is still answered
        on its own."""
        row = ops.put_row(payload, priority, dedup_id, delay, hold_key, tag)
        return await self.coord.put_batcher.put(self.name, row)

    async def put_many(
        self, payloads: list[bytes], *, priority: int = 0, delay: float = 0.0
    ) -> list[ops.PutResult | Exception]:
        """As ``Queue.put_many``."""
        rows = [ops.put_row(p, priority, None, delay) for p in payloads]
        return await self.coord.run(ops.queue_put_many(self.name, rows))

    async def get(
        self,
        *,
        wait: float = 0.0,
        visibility: float | None = 30.0,
        session: AsyncSession | None = None,
    ) -> AsyncMessage | None:
        session = session or await self.coord.default_session()
        row = await self.coord.run(ops.queue_get(session.id, self.name, wait, visibility))
        return self._message(row, session) if row else None

    async def get_many(
        self,
        max_count: int,
        *,
        wait: float = 0.0,
        visibility: float | None = 30.0,
        session: AsyncSession | None = None,
    ) -> list[AsyncMessage]:
        session = session or await self.coord.default_session()
        op = ops.queue_get_many(session.id, self.name, max_count, wait, visibility)
        return [self._message(row, session) for row in await self.coord.run(op)]

    def _message(self, row: dict[str, Any], session: AsyncSession) -> AsyncMessage:
        msg_id, payload, priority, delivery_count, meta = message_fields(row)
        return AsyncMessage(msg_id, payload, priority, delivery_count, self, session, meta)

    async def ack(self, message: AsyncMessage) -> None:
        await self.coord.run(ops.queue_ack(message.session.id, self.name, message.id))

    async def ack_many(self, messages: list[AsyncMessage]) -> list[int]:
        if not messages:
            return []
        if len({m.session.id for m in messages}) != 1:
            raise ValueError("ack_many takes messages leased to one session")
        op = ops.queue_ack_many(messages[0].session.id, self.name, [m.id for m in messages])
        return await self.coord.run(op)

    async def nack(self, message: AsyncMessage, requeue: bool = True, delay: float = 0.0) -> None:
        op = ops.queue_nack(message.session.id, self.name, message.id, requeue, delay)
        await self.coord.run(op)

    async def touch(self, message: AsyncMessage, visibility: float) -> None:
        op = ops.queue_touch(message.session.id, self.name, message.id, visibility)
        await self.coord.run(op)

    async def stats(self) -> dict[str, Any]:
        return await self.coord.run(ops.queue_stats(self.name))

    async def purge(self) -> int:
        return await self.coord.run(ops.queue_purge(self.name))

    async def delete(self) -> bool:
        return await self.coord.run(ops.queue_delete(self.name))

    async def peek(self, limit: int = 20) -> list[dict[str, Any]]:
        return await self.coord.run(ops.queue_peek(self.name, limit))

    async def dead_letters(self, limit: int = 20) -> list[dict[str, Any]]:
        return await self.coord.run(ops.queue_dead_letters(self.name, limit))

    async def requeue_dead(self, max_count: int = 1000) -> int:
        return await self.coord.run(ops.queue_requeue_dead(self.name, max_count))
