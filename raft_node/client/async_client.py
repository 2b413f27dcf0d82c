"""``AsyncRaftClient``: the asyncio client, pipelined over one connection.

Writes carry ``(client_id, seq)``: each lane (a client id with its own sequence counter) has at
most one write outstanding, so the cluster applies each write once however often it is retried.
The client keeps a pool of lanes so many coroutines can write concurrently. A write that ends
``OutcomeUnknown`` takes its lane out of the pool for good (see ``Lanes``), so ``resolve`` can
re-send it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from raft_node.client.connection import AsyncConnection, NotSent
from raft_node.client.errors import AuthenticationFailed, OutcomeUnknown, PendingWrite
from raft_node.client.policy import Attempts, ClientConfig, Lanes
from raft_node.transport import client_protocol as p


class AsyncRaftClient(ClientConfig):
    def _init_connection_state(self) -> None:
        self._conn: AsyncConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._lanes = Lanes(self.name)

    async def __aenter__(self) -> AsyncRaftClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # -- public calls ---------------------------------------------------------------------------

    async def propose(self, body: bytes, *, timeout: float | None = None) -> Any:
        """Apply ``body`` through the log exactly once; returns the state machine's result."""
        lane = self._lanes.take()
        write = PendingWrite(lane.client_id, lane.next(), body, time.monotonic())
        try:  # inline, not through a helper: one coroutine fewer per write
            fields = [write.client_id, write.seq, body]
            result = await self._call(p.PROPOSE, fields, timeout, write=write)
        except OutcomeUnknown:
            raise  # the lane is retired: its id keeps this write as its latest
        except BaseException:
            self._lanes.give(lane)
            raise
        self._lanes.give(lane)
        return result

    async def resolve(self, unknown: OutcomeUnknown, *, timeout: float | None = None) -> Any:
        """The final outcome of the write ``unknown`` is about (as ``RaftClient.resolve``)."""
        write = unknown.resend()
        fields = [write.client_id, write.seq, write.body]
        return await self._call(p.PROPOSE, fields, timeout, write=write, in_doubt=True)

    async def read(self, query: bytes, *, stale: bool = False, timeout: float | None = None) -> Any:
        """Query the state machine; linearizable (ReadIndex) unless ``stale``."""
        return await self._call(p.READ, [query, stale], timeout)

    async def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Status of the node currently connected to (not necessarily the leader)."""
        return await self._call(p.STATUS, [], timeout, follow_leader=False)

    async def members(
        self, op: str = "list", node: str = "", address: str = "", *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The membership (``op="list"``), or one change: ``add_learner`` (with the node's
        ``host:port``), ``promote``, ``remove``; answered by the leader once committed."""
        return await self._call(p.MEMBERS, [op, node, address], timeout)

    async def transfer_leadership(self, target: str, *, timeout: float | None = None) -> Any:
        return await self._call(p.TRANSFER, [target], timeout)

    # -- machinery ------------------------------------------------------------------------------

    async def _connection(self, budget: float) -> AsyncConnection:
        conn = self._conn  # the usual case, without taking the lock
        if conn is not None and not conn.closed and conn.addr == self._targets.current:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            conn = self._conn
            if conn is not None and not conn.closed and conn.addr == self._targets.current:
                return conn
            if conn is not None:
                await conn.close()
            self._conn = None
            conn = AsyncConnection(
                self._targets.current,
                self._secret,
                self.name,
                ssl=self._ssl,
                max_frame_bytes=self._max,
            )
            await conn.open(budget)
            self._conn = conn
            return conn

    async def _call(
        self,
        kind: int,
        fields: list[Any],
        timeout: float | None,
        follow_leader: bool = True,
        write: PendingWrite | None = None,
        in_doubt: bool = False,
    ) -> Any:
        call_timeout = self.timeout if timeout is None else timeout
        tries = Attempts(self._targets, call_timeout, follow_leader, self.timeout, write, in_doubt)
        while (budget := tries.budget()) > 0:
            try:
                conn = self._conn  # the usual case without a coroutine of its own
                if conn is None or conn.closed or conn.addr != self._targets.current:
                    conn = await self._connection(tries.connect_wait(budget))
            except AuthenticationFailed as exc:
                if "tls" not in exc.details:
                    raise tries.fatal(exc) from None  # the cluster secret: the same everywhere
                tries.refused(exc)
            except (OSError, EOFError, asyncio.IncompleteReadError, p.ProtocolError) as exc:
                tries.unreachable(exc)  # nothing sent (a connect or handshake timeout, too)
            else:
                tries.reached = True
                try:
                    resp = await conn.request(kind, fields, tries.answer_wait(budget))
                except TimeoutError:  # first: it is an OSError too
                    tries.no_answer()
                    continue  # re-send at once elsewhere (the loop ends at the deadline)
                except NotSent as exc:
                    tries.unreachable(exc)
                except (OSError, EOFError, asyncio.IncompleteReadError, p.ProtocolError) as exc:
                    tries.lost(exc)  # perhaps sent: a write may be in a log
                else:
                    if tries.answered(resp):
                        return resp.value
            await asyncio.sleep(tries.pause())
        raise tries.give_up()
