"""Client requests on a node, from wire frames to ``NodeHost`` calls and back.

- **Proposals** are accepted by any node. On the leader, ``NodeHost.propose`` wraps the body in
  the applier's envelope (client id, sequence number, its clock) and the request is answered
  when the host reports the outcome for that ``(client_id, seq)``. A follower forwards the
  request to the leader over one pipelined connection (``raft_node.host.forwarding``) and
  relays the answer, with the leader's address as a hint so the client can go there directly
  next time.
- **Reads**: linearizable ones go to ``NodeHost.read`` (ReadIndex rounds); ``stale=True`` reads
  query the local state machine at once.
- **Watch** subscribes the connection to a topic of the host's event stream; **transfer** asks
  the leader's host to hand over and waits until it has.
- **Backup** requests (a snapshot pulled in chunks) go to ``raft_node.host.backup``.

Waiting, batching and expiry are the host's (``raft_node.host.waiters``), shared with the
simulator; this module only parses frames, encodes answers (``_Reply``) and does what needs the
network (forwarding, which is a coroutine). It talks to the node only through ``NodeHost``'s
public methods and reads addresses and timeouts from ``NodeConfig``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from raft_node.core.messages import NONE, NodeId
from raft_node.host import waiters as w
from raft_node.host.backup import BackupService, chunk_bytes_for
from raft_node.host.config import NodeConfig
from raft_node.host.forwarding import LeaderForwarder
from raft_node.host.members import MembershipService
from raft_node.host.node_host import NodeHost, ProposalDropped
from raft_node.transport import backup_protocol as bp
from raft_node.transport import client_protocol as p
from raft_node.transport.codec import CodecError, decode_payload, encode_payload

log = logging.getLogger("raft_node.server")

Respond = Callable[[bytes], None]
MAX_PENDING = 20_000  # waiting proposals + reads per node; beyond it: "unavailable" (overload)
_WIRE_CODE = {w.NOT_LEADER: p.NOT_LEADER, w.TIMEOUT: p.TIMEOUT, w.UNAVAILABLE: p.UNAVAILABLE}


class _Reply(w.Wait):
    """A client request waiting on the host; its answer is encoded onto the connection."""

    __slots__ = ("handler", "req_id", "respond")

    def __init__(self, handler: RequestHandler, req_id: int, respond: Respond) -> None:
        self.handler = handler
        self.req_id = req_id
        self.respond = respond

    def done(self, ok: bool, value: Any) -> None:
        hint = self.handler.leader_hint()
        if ok:
            self.respond(encode_payload(p.ok(self.req_id, value, hint)))
        else:
            self.respond(encode_payload(p.rejected(self.req_id, *value, hint)))

    def failed(self, reason: str, message: str) -> None:
        hint = self.handler.leader_hint() if reason == w.NOT_LEADER else ""
        self.respond(encode_payload(p.err(self.req_id, _WIRE_CODE[reason], message, hint)))


class RequestHandler:
    def __init__(self, host: NodeHost, config: NodeConfig) -> None:
        self.host = host
        self.config = config
        self.forwarder = LeaderForwarder(host.id, config)
        host.leader_listeners.append(self.forwarder.leader_changed)
        self._hint: tuple[NodeId, str] = (NONE, "")
        self.members = MembershipService(host, config)
        chunk = chunk_bytes_for(config.max_frame_bytes)
        self.backups = BackupService(host, self.leader_hint, chunk)

    # -- addresses -----------------------------------------------------------------------------

    def address_str(self, node: NodeId) -> str:
        if node == NONE or node not in self.config.cluster:
            return ""
        host, port = self.config.cluster[node]
        return f"{host}:{port}"

    def leader_hint(self) -> str:
        """The known leader's ``host:port`` ("" if none); cached while the leader stays."""
        lead = self.host.leader
        if self._hint[0] != lead:
            self._hint = (lead, self.address_str(lead))
        return self._hint[1]

    def status(self) -> dict[str, Any]:
        status = self.host.status(self.address_str)
        status["fsync"] = self.config.fsync  # False: this node may lose acknowledged writes
        return status

    # -- entry point from the transport --------------------------------------------------------

    def handle_frame(self, body: bytes, respond: Respond) -> Awaitable[None] | None:
        req_id = 0
        try:
            obj = decode_payload(body)
            if isinstance(obj, list) and len(obj) > 1 and isinstance(obj[1], int):
                req_id = obj[1]
            if bp.is_backup(obj):  # its own module: raft_node.host.backup
                self.backups.handle(obj, respond)
                return None
            req = p.parse_request(obj)
        except (CodecError, p.ProtocolError) as exc:
            respond(encode_payload(p.err(req_id, p.BAD_REQUEST, str(exc))))
            return None
        if isinstance(req, p.Status):
            respond(encode_payload(p.ok(req.req_id, self.status(), self.leader_hint())))
            return None
        if self.host.waiting >= MAX_PENDING:
            overloaded = p.err(req.req_id, p.UNAVAILABLE, "node overloaded; retry", definite=True)
            respond(encode_payload(overloaded))
            return None
        if isinstance(req, p.Read):
            self.read(req, respond)
            return None
        if isinstance(req, p.Propose) and self.host.is_leader:
            self.propose(req, respond)
            return None
        return self._slow(req, respond)

    async def _slow(self, req: p.Request, respond: Respond) -> None:
        if isinstance(req, p.Watch):
            await self._watch(req, respond)
            return
        try:
            if isinstance(req, p.Members):
                response = await self.members.handle(req, self.leader_hint())
            elif isinstance(req, p.Propose):
                response = await self._forward_to_leader(req)
            else:
                assert isinstance(req, p.Transfer)
                response = await self.transfer(req)
        except Exception as exc:  # never let one request take the connection down silently
            log.exception("event=request_failed node=%s", self.host.id)
            response = p.err(req.req_id, p.UNAVAILABLE, f"internal error: {exc!r}")
        respond(encode_payload(response))

    # -- proposals -----------------------------------------------------------------------------

    def propose(self, req: p.Propose, respond: Respond) -> None:
        try:
            self.host.propose(req.client_id, req.seq, req.body, _Reply(self, req.req_id, respond))
        except ProposalDropped as exc:
            hint = self.address_str(exc.leader)
            # Refused before anything was appended: the client may say "not applied".
            dropped = p.err(req.req_id, p.NOT_LEADER, str(exc), hint, definite=True)
            respond(encode_payload(dropped))

    def drop_forward_connections(self) -> None:
        """Close the connections that forward proposals to the leader (reopened on the next
        proposal, with the config's current TLS context). A forwarded request in flight on one
        answers ``unavailable``; its client retries it (same id and sequence: applied once)."""
        self.forwarder.drop_connections()

    async def _forward_to_leader(self, req: p.Propose | p.Transfer) -> list:
        lead = self.host.leader
        return await self.forwarder.forward(lead, req, self.address_str(lead))

    # -- reads ---------------------------------------------------------------------------------

    def read(self, req: p.Read, respond: Respond) -> None:
        if req.stale:
            self.host.metrics.reads.labels(mode="stale").inc()
            ok, value = self.host.query(req.query)
            if ok:
                respond(encode_payload(p.ok(req.req_id, value, self.leader_hint())))
            else:
                respond(encode_payload(p.rejected(req.req_id, *value)))
            return
        self.host.read(req.query, _Reply(self, req.req_id, respond))

    # -- event streams -------------------------------------------------------------------------

    async def _watch(self, req: p.Watch, respond: Respond) -> None:
        """Subscribe until the connection closes (the transport then cancels this task), or
        until a bound the watcher asked for no longer holds (see ``client_protocol``)."""
        host = self.host
        if req.leader and not host.is_leader:
            message = "this watch is served by the leader"
            respond(encode_payload(p.err(req.req_id, p.NOT_LEADER, message, self.leader_hint())))
            return
        last_sent = [time.monotonic()]

        def push(index: int, payload: Any) -> None:
            last_sent[0] = time.monotonic()
            respond(encode_payload(p.ok(req.req_id, ["event", index, payload])))

        # Subscribe and replay in one step of the loop: no entry is applied in between, so the
        # replay and the stream neither overlap nor leave a gap.
        cancel = host.subscribe(req.topic, push)
        try:
            subscribed: list[Any] = ["subscribed", host.applied_index]
            if req.replay is not None:
                ok, value = host.query(req.replay)
                if not ok:
                    respond(encode_payload(p.rejected(req.req_id, *value)))
                    return
                subscribed.append(value)
            respond(encode_payload(p.ok(req.req_id, subscribed, self.leader_hint())))
            if req.leader or req.max_lag_ms or req.progress_ms:
                await self._guard_watch(req, respond, last_sent)
            else:
                await asyncio.Event().wait()  # forever: events are pushed by the host
        finally:
            cancel()

    async def _guard_watch(self, req: p.Watch, respond: Respond, last_sent: list[float]) -> None:
        """Check the watch's bounds every 50 ms; return (ending the watch) once one fails."""
        host = self.host
        while True:
            await asyncio.sleep(0.05)
            if req.leader and not host.is_leader:
                error = p.err(req.req_id, p.NOT_LEADER, "leadership lost", self.leader_hint())
                respond(encode_payload(error))
                return
            if req.max_lag_ms and not host.is_leader:
                silence = host.leader_silence()
                if silence is None or silence * 1000 > req.max_lag_ms:
                    message = (
                        f"this node has not heard from a leader within {req.max_lag_ms} ms; "
                        "its stream may be stale"
                    )
                    respond(encode_payload(p.err(req.req_id, p.UNAVAILABLE, message)))
                    return
            if req.progress_ms and (time.monotonic() - last_sent[0]) * 1000 >= req.progress_ms:
                last_sent[0] = time.monotonic()
                progress = ["progress", host.applied_index]
                respond(encode_payload(p.ok(req.req_id, progress, self.leader_hint())))

    # -- leadership transfer -------------------------------------------------------------------

    async def transfer(self, req: p.Transfer) -> list:
        host, config = self.host, self.config
        if req.target not in config.cluster:
            return p.err(req.req_id, p.BAD_REQUEST, f"unknown node {req.target!r}")
        if not host.is_leader:
            return await self._forward_to_leader(req)
        if req.target == host.id:
            return p.ok(req.req_id, host.id, self.leader_hint())
        host.transfer(req.target)
        deadline = time.monotonic() + config.request_timeout
        tick = config.tick_ms / 1000
        while time.monotonic() < deadline:
            if host.leader == req.target:
                return p.ok(req.req_id, req.target, self.leader_hint())
            await asyncio.sleep(tick)
        return p.err(req.req_id, p.TIMEOUT, "transfer did not complete", self.leader_hint())
