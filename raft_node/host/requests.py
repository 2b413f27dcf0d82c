"""Client requests on a node: proposals, reads, status and leadership transfer.

- **Proposals** are accepted by any node. The leader wraps the body in the applier's envelope
  (client id, sequence number, its clock) and proposes it; the request is answered when the
  entry is applied and the applier reports the outcome for that ``(client_id, seq)``. A follower
  forwards the request to the leader over one pipelined connection and relays the answer, with
  the leader's address as a hint so the client can go there directly next time.
- **Linearizable reads** use ReadIndex, batched: while one ReadIndex round is in flight, new
  reads wait for the next round (a round started before a read arrived cannot vouch for it).
  When the round's read index is applied locally, every read of the round queries the state
  machine. ``stale=True`` reads query the local state machine at once.
- When leadership is lost, waiting proposals are answered ``not_leader``: the client retries with
  the same sequence number, and the applier's dedup makes that safe even if the first copy
  commits after all.

The hot paths (proposal and read on the leader) are callbacks, not tasks: a waiting request is a
small record answered from ``on_outcomes``/``on_applied``, and one sweeper expires them all, so
a request costs no task, future or timer of its own. Forwarding and transfer, which wait on the
network, are coroutines.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from raft_node.client import AsyncConnection
from raft_node.core.leader import ProposalDropped
from raft_node.core.messages import NONE, NodeId
from raft_node.core.read_only import ReadState
from raft_node.host.applier import CommandRejected, Outcome, encode_command
from raft_node.transport import client_protocol as p
from raft_node.transport.codec import CodecError, decode_payload, encode_payload

if TYPE_CHECKING:
    from raft_node.server import NodeServer

log = logging.getLogger("raft_node.server")

Respond = Callable[[bytes], None]
MAX_PENDING = 20_000  # waiting proposals + reads per node; beyond it: "unavailable" (overload)


class _Waiter:
    """A request waiting for the log (proposal) or for a read index to be applied (read)."""

    __slots__ = ("deadline", "done", "query", "req_id", "respond", "started")

    def __init__(self, req_id: int, respond: Respond, deadline: float, query: bytes = b"") -> None:
        self.req_id = req_id
        self.respond = respond
        self.deadline = deadline
        self.started = time.perf_counter()
        self.query = query
        self.done = False

    def answer(self, response: list) -> None:
        if not self.done:
            self.done = True
            self.respond(encode_payload(response))


class RequestHandler:
    def __init__(self, server: NodeServer) -> None:
        self.server = server
        self._pending: dict[tuple[str, int], list[_Waiter]] = {}
        self._expiry: deque[_Waiter] = deque()  # every waiter, in deadline order
        self._ctx_ids = itertools.count(1)
        self._round_ctx: bytes | None = None  # ReadIndex round in flight
        self._round_started = 0.0
        self._round_waiters: list[_Waiter] = []
        self._next_waiters: list[_Waiter] = []
        self._applied_waits: list[tuple[int, int, list[_Waiter]]] = []
        self._forward: dict[NodeId, AsyncConnection] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._watchers: dict[str, list[tuple[int, Respond]]] = {}

    # -- entry point from the transport --------------------------------------------------------

    def handle_frame(self, body: bytes, respond: Respond) -> Awaitable[None] | None:
        req_id = 0
        try:
            obj = decode_payload(body)
            if isinstance(obj, list) and len(obj) > 1 and isinstance(obj[1], int):
                req_id = obj[1]
            req = p.parse_request(obj)
        except (CodecError, p.ProtocolError) as exc:
            respond(encode_payload(p.err(req_id, p.BAD_REQUEST, str(exc))))
            return None
        server = self.server
        if isinstance(req, p.Status):
            respond(encode_payload(p.ok(req.req_id, server.status(), server.leader_hint())))
            return None
        if len(self._expiry) >= MAX_PENDING:
            respond(encode_payload(p.err(req.req_id, p.UNAVAILABLE, "node overloaded; retry")))
            return None
        if isinstance(req, p.Read):
            self.read(req, respond)
            return None
        if isinstance(req, p.Propose) and server.is_leader:
            self.propose(req, respond)
            return None
        return self._slow(req, respond)

    async def _slow(self, req: p.Request, respond: Respond) -> None:
        if isinstance(req, p.Watch):
            await self._watch(req, respond)
            return
        try:
            if isinstance(req, p.Propose):
                response = await self._forward_to_leader(req)
            else:
                assert isinstance(req, p.Transfer)
                response = await self.transfer(req)
        except Exception as exc:  # never let one request take the connection down silently
            log.exception("event=request_failed node=%s", self.server.id)
            response = p.err(req.req_id, p.UNAVAILABLE, f"internal error: {exc!r}")
        respond(encode_payload(response))

    def _wait(self, req_id: int, respond: Respond, query: bytes = b"") -> _Waiter:
        deadline = time.monotonic() + self.server.config.request_timeout
        waiter = _Waiter(req_id, respond, deadline, query)
        self._expiry.append(waiter)
        if self._sweeper is None:
            self._schedule_sweep()
        return waiter

    def _schedule_sweep(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(0.05, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        expiry = self._expiry
        while expiry and (expiry[0].done or expiry[0].deadline <= now):
            waiter = expiry.popleft()
            if not waiter.done:
                self.server.metrics.proposals_failed.inc()
                waiter.answer(p.err(waiter.req_id, p.TIMEOUT, "no result in time; retry"))
        if self._round_ctx is not None and now - self._round_started > 1.0:
            self._restart_round()  # the round was lost (leader change): ask again
        self._sweeper = None
        if expiry:
            self._schedule_sweep()

    # -- proposals -----------------------------------------------------------------------------

    def propose(self, req: p.Propose, respond: Respond) -> None:
        server = self.server
        data = encode_command(req.client_id, req.seq, time.time_ns() // 1_000_000, req.body)
        try:
            server.raw.propose(data)
        except ProposalDropped as exc:
            hint = server.address_str(exc.leader)
            respond(encode_payload(p.err(req.req_id, p.NOT_LEADER, str(exc), hint)))
            return
        waiter = self._wait(req.req_id, respond)
        self._pending.setdefault((req.client_id, req.seq), []).append(waiter)
        server.metrics.proposals.inc()
        server.kick()

    def on_outcomes(self, outcomes: list[Outcome]) -> None:
        if not self._pending:
            return
        hint = self.server.leader_hint()
        observe = self.server.metrics.commit_seconds.observe
        now = time.perf_counter()
        for outcome in outcomes:
            if outcome.pending:
                continue  # accepted; answered when the state machine completes it
            for waiter in self._pending.pop((outcome.client_id, outcome.seq), ()):
                if waiter.done:
                    continue
                observe(now - waiter.started)
                if outcome.ok:
                    waiter.answer(p.ok(waiter.req_id, outcome.value, hint))
                else:
                    waiter.answer(p.rejected(waiter.req_id, *outcome.value, hint))

    def on_lost_leadership(self) -> None:
        pending, self._pending = self._pending, {}
        hint = self.server.leader_hint()
        for waiters in pending.values():
            for waiter in waiters:
                waiter.answer(p.err(waiter.req_id, p.NOT_LEADER, "leadership lost; retry", hint))

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
            timeout = server.config.request_timeout
            if isinstance(req, p.Propose):
                resp = await conn.request(p.PROPOSE, [req.client_id, req.seq, req.body], timeout)
            else:
                resp = await conn.request(p.TRANSFER, [req.target], timeout)
        except TimeoutError:
            return p.err(req.req_id, p.TIMEOUT, "leader did not answer in time", hint)
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            return p.err(req.req_id, p.UNAVAILABLE, f"leader unreachable: {exc!r}", hint)
        if resp.ok:
            return p.ok(req.req_id, resp.value, resp.leader_hint or hint)
        assert resp.error is not None
        return p.error(req.req_id, resp.kind, resp.error, resp.leader_hint or hint)

    # -- reads ---------------------------------------------------------------------------------

    def read(self, req: p.Read, respond: Respond) -> None:
        server = self.server
        if req.stale:
            server.metrics.reads.labels(mode="stale").inc()
            respond(encode_payload(self._query(req.req_id, req.query)))
            return
        if server.raw.raft.lead == NONE:
            respond(encode_payload(p.err(req.req_id, p.NOT_LEADER, "no leader known; retry")))
            return
        self._next_waiters.append(self._wait(req.req_id, respond, req.query))
        self._maybe_start_round()

    def _query(self, req_id: int, query: bytes) -> list:
        try:
            value = self.server.applier.sm.query(query)
        except CommandRejected as exc:
            return p.rejected(req_id, exc.code, exc.message, exc.details)
        return p.ok(req_id, value, self.server.leader_hint())

    def _maybe_start_round(self) -> None:
        if self._round_ctx is not None or not self._next_waiters:
            return
        self._round_waiters, self._next_waiters = self._next_waiters, []
        self._send_round()

    def _send_round(self) -> None:
        self._round_ctx = f"{self.server.id}:{next(self._ctx_ids)}".encode()
        self._round_started = time.monotonic()
        self.server.raw.read_index(self._round_ctx)
        self.server.kick()

    def _restart_round(self) -> None:
        self._round_waiters = [w for w in self._round_waiters if not w.done]
        if self._round_waiters:
            self._send_round()
        else:
            self._round_ctx = None
            self._maybe_start_round()

    def on_read_states(self, states: tuple[ReadState, ...]) -> None:
        for rs in states:
            if rs.context != self._round_ctx:
                continue
            waiters, self._round_waiters, self._round_ctx = self._round_waiters, [], None
            if self.server.applier.applied_index >= rs.index:
                self._serve_reads(waiters)
            else:
                heapq.heappush(self._applied_waits, (rs.index, id(waiters), waiters))
        self._maybe_start_round()

    def on_applied(self, applied: int) -> None:
        waits = self._applied_waits
        while waits and waits[0][0] <= applied:
            self._serve_reads(heapq.heappop(waits)[2])

    def _serve_reads(self, waiters: list[_Waiter]) -> None:
        reads = self.server.metrics.reads.labels(mode="linearizable")
        for waiter in waiters:
            if not waiter.done:
                reads.inc()
                waiter.answer(self._query(waiter.req_id, waiter.query))

    # -- event streams -------------------------------------------------------------------------

    async def _watch(self, req: p.Watch, respond: Respond) -> None:
        """Subscribe until the connection closes (the transport then cancels this task)."""
        entry = (req.req_id, respond)
        self._watchers.setdefault(req.topic, []).append(entry)
        respond(encode_payload(p.ok(req.req_id, ["subscribed", self.server.applier.applied_index])))
        try:
            await asyncio.Event().wait()  # forever: events are pushed by publish()
        finally:
            watchers = self._watchers.get(req.topic, [])
            if entry in watchers:
                watchers.remove(entry)
            if not watchers:
                self._watchers.pop(req.topic, None)

    def publish(self, index: int, topic: str, payload: Any) -> None:
        for req_id, respond in self._watchers.get(topic, ()):
            respond(encode_payload(p.ok(req_id, ["event", index, payload])))

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
        for waiter in self._expiry:
            waiter.answer(p.err(waiter.req_id, code, message))
        self._expiry.clear()
        self._pending.clear()
