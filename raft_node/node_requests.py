"""Client requests on a node: proposals, reads, status and leadership transfer.

- **Proposals** are accepted by any node. The leader wraps the body in the applier's envelope
  (client id, sequence number, its clock) and proposes it; the request completes when the entry
  is applied and the applier reports the outcome for that ``(client_id, seq)``. A follower
  forwards the request to the leader over one pipelined connection and relays the answer, with
  the leader's address as a hint so the client can go there directly next time.
- **Linearizable reads** use ReadIndex, batched: while one ReadIndex round is in flight, new
  reads wait for the next round (a round started before a read arrived cannot vouch for it).
  When the round's read index is applied locally, every read of the round queries the state
  machine. ``stale=True`` reads query the local state machine at once.
- When leadership is lost, waiting proposals are answered ``not_leader``: the client retries with
  the same sequence number, and the applier's dedup makes that safe even if the first copy
  commits after all.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

from raft_node import protocol as p
from raft_node.applier import CommandRejected, Outcome, encode_command
from raft_node.client import AsyncConnection
from raft_node.codec import CodecError, decode_payload, encode_payload
from raft_node.leader import ProposalDropped
from raft_node.messages import NONE, NodeId
from raft_node.read_only import ReadState

if TYPE_CHECKING:
    from raft_node.server import NodeServer

log = logging.getLogger("raft_node.server")


class RequestHandler:
    def __init__(self, server: NodeServer) -> None:
        self.server = server
        self._pending: dict[tuple[str, int], list[asyncio.Future[Outcome | None]]] = {}
        self._ctx_ids = itertools.count(1)
        self._round_ctx: bytes | None = None  # ReadIndex round in flight
        self._round_waiters: list[asyncio.Future[None]] = []
        self._next_waiters: list[asyncio.Future[None]] = []
        self._applied_waits: list[tuple[int, int, list[asyncio.Future[None]]]] = []
        self._forward: dict[NodeId, AsyncConnection] = {}

    # -- entry point from the transport --------------------------------------------------------

    async def handle_frame(self, body: bytes, respond: Any) -> None:
        req_id = 0
        try:
            obj = decode_payload(body)
            if isinstance(obj, list) and len(obj) > 1 and isinstance(obj[1], int):
                req_id = obj[1]
            req = p.parse_request(obj)
        except (CodecError, p.ProtocolError) as exc:
            respond(encode_payload(p.err(req_id, p.BAD_REQUEST, str(exc))))
            return
        try:
            response = await self._dispatch(req)
        except Exception as exc:  # never let one request take the connection down silently
            log.exception("event=request_failed node=%s", self.server.id)
            response = p.err(req.req_id, p.UNAVAILABLE, f"internal error: {exc!r}")
        respond(encode_payload(response))

    async def _dispatch(self, req: p.Request) -> list:
        if isinstance(req, p.Propose):
            return await self.propose(req)
        if isinstance(req, p.Read):
            return await self.read(req)
        if isinstance(req, p.Status):
            return p.ok(req.req_id, self.server.status(), self.server.leader_hint())
        return await self.transfer(req)

    # -- proposals -----------------------------------------------------------------------------

    async def propose(self, req: p.Propose) -> list:
        server = self.server
        if not server.is_leader:
            return await self._forward_to_leader(req)
        data = encode_command(req.client_id, req.seq, time.time_ns() // 1_000_000, req.body)
        try:
            server.raw.propose(data)
        except ProposalDropped as exc:
            return p.err(req.req_id, p.NOT_LEADER, str(exc), server.address_str(exc.leader))
        started = time.perf_counter()
        fut: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        key = (req.client_id, req.seq)
        self._pending.setdefault(key, []).append(fut)
        server.metrics.proposals.inc()
        server.kick()
        try:
            outcome = await asyncio.wait_for(fut, server.config.request_timeout)
        except TimeoutError:
            server.metrics.proposals_failed.inc()
            return p.err(req.req_id, p.TIMEOUT, "not committed in time; retry with the same seq")
        finally:
            waiters = self._pending.get(key)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._pending[key]
        hint = server.leader_hint()
        if outcome is None:
            server.metrics.proposals_failed.inc()
            return p.err(req.req_id, p.NOT_LEADER, "leadership lost; retry", hint)
        server.metrics.commit_seconds.observe(time.perf_counter() - started)
        if outcome.ok:
            return p.ok(req.req_id, outcome.value, hint)
        code, message = outcome.value
        return p.err(req.req_id, p.REJECTED, f"{code}: {message}", hint)

    def on_outcomes(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            for fut in self._pending.pop((outcome.client_id, outcome.seq), ()):
                if not fut.done():
                    fut.set_result(outcome)

    def on_lost_leadership(self) -> None:
        pending, self._pending = self._pending, {}
        for futs in pending.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)

    async def _forward_to_leader(self, req: p.Propose | p.Transfer) -> list:
        server = self.server
        lead = server.raw.raft.lead
        if lead == NONE or lead == server.id:
            return p.err(req.req_id, p.NOT_LEADER, "no leader known; retry")
        hint = server.address_str(lead)
        conn = self._forward.get(lead)
        try:
            if conn is None or conn.closed:
                conn = AsyncConnection(
                    server.config.cluster[lead],
                    server.config.secret,
                    f"{server.id}-forward",
                    ssl=server.config.ssl_client,
                    max_frame_bytes=server.config.max_frame_bytes,
                )
                await conn.open(2.0)
                self._forward[lead] = conn
            if isinstance(req, p.Propose):
                fields: list[Any] = [req.client_id, req.seq, req.body]
                resp = await conn.request(p.PROPOSE, fields, server.config.request_timeout)
            else:
                resp = await conn.request(p.TRANSFER, [req.target], server.config.request_timeout)
        except TimeoutError:
            return p.err(req.req_id, p.TIMEOUT, "leader did not answer in time", hint)
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            return p.err(req.req_id, p.UNAVAILABLE, f"leader unreachable: {exc!r}", hint)
        if resp.ok:
            return p.ok(req.req_id, resp.value, resp.leader_hint or hint)
        return p.err(req.req_id, resp.code, resp.message, resp.leader_hint or hint)

    # -- reads ---------------------------------------------------------------------------------

    async def read(self, req: p.Read) -> list:
        server = self.server
        if not req.stale:
            if server.raw.raft.lead == NONE:
                return p.err(req.req_id, p.NOT_LEADER, "no leader known; retry")
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._next_waiters.append(fut)
            self._maybe_start_round()
            try:
                await asyncio.wait_for(fut, server.config.request_timeout)
            except TimeoutError:
                return p.err(req.req_id, p.TIMEOUT, "read index not confirmed in time; retry")
        server.metrics.reads.labels(mode="stale" if req.stale else "linearizable").inc()
        try:
            value = server.applier.sm.query(req.query)
        except CommandRejected as exc:
            return p.err(req.req_id, p.REJECTED, f"{exc.code}: {exc.message}")
        return p.ok(req.req_id, value, server.leader_hint())

    def _maybe_start_round(self) -> None:
        if self._round_ctx is not None or not self._next_waiters:
            return
        self._round_ctx = f"{self.server.id}:{next(self._ctx_ids)}".encode()
        self._round_waiters, self._next_waiters = self._next_waiters, []
        self.server.raw.read_index(self._round_ctx)
        self.server.kick()
        # A round lost to a leader change would block later reads: give up on it in time.
        asyncio.get_running_loop().call_later(
            self.server.config.request_timeout, self._expire_round, self._round_ctx
        )

    def _expire_round(self, ctx: bytes) -> None:
        if self._round_ctx == ctx:
            for fut in self._round_waiters:
                if not fut.done():
                    fut.set_exception(TimeoutError())
            self._round_ctx, self._round_waiters = None, []
            self._maybe_start_round()

    def on_read_states(self, states: tuple[ReadState, ...]) -> None:
        for rs in states:
            if rs.context != self._round_ctx:
                continue
            waiters, self._round_waiters, self._round_ctx = self._round_waiters, [], None
            if self.server.applier.applied_index >= rs.index:
                _release(waiters)
            else:
                heapq.heappush(self._applied_waits, (rs.index, id(waiters), waiters))
        self._maybe_start_round()

    def on_applied(self, applied: int) -> None:
        waits = self._applied_waits
        while waits and waits[0][0] <= applied:
            _release(heapq.heappop(waits)[2])

    # -- leadership transfer -------------------------------------------------------------------

    async def transfer(self, req: p.Transfer) -> list:
        server = self.server
        if req.target not in server.config.cluster:
            return p.err(req.req_id, p.BAD_REQUEST, f"unknown node {req.target!r}")
        if not server.is_leader:
            return await self._forward_to_leader(req)
        if req.target == server.id:
            return p.ok(req.req_id, server.id, server.leader_hint())
        server.raw.transfer_leadership(req.target)
        server.kick()
        deadline = time.monotonic() + server.config.request_timeout
        tick = server.config.tick_ms / 1000
        while time.monotonic() < deadline:
            if server.raw.raft.lead == req.target:
                return p.ok(req.req_id, req.target, server.leader_hint())
            await asyncio.sleep(tick)
        return p.err(req.req_id, p.TIMEOUT, "transfer did not complete", server.leader_hint())

    def fail_all(self, code: str, message: str) -> None:
        self.on_lost_leadership()
        for fut in [*self._round_waiters, *self._next_waiters]:
            if not fut.done():
                fut.set_exception(TimeoutError(message))


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)
