"""BACKUP requests on a node: a linearizable snapshot of the state, pulled in chunks.

The request shapes are ``raft_node.transport.backup_protocol``'s. ``begin`` runs a ReadIndex
barrier (``NodeHost.read(None, wait)``: the same rounds as a linearizable read), and when this
node has applied the read index, takes ``backup_image(host)`` in that same step, so the
image holds every write acknowledged before the request and its index is exact. The image and
its SHA-256 stay in memory under a random token until the client has read the last chunk, says
``end``, or is silent for ``IDLE_S``; ``MAX_HELD`` bounds how many a node holds.

Costs, stated so operators can plan: taking the image is synchronous on the node's loop (one
``snapshot()`` of the state machine, proportional to the state: the node answers nothing else
meanwhile, as when it takes its own log snapshots), and the image is held in memory while it is
read (up to ``MAX_HELD`` x the state size). Hashing runs on the loop too.

Authorization is the connection's: only a client that passed the cluster-secret handshake (and,
with TLS, presented a certificate the node accepts) can send a request at all. Every client has
that secret, and a backup holds all the data (lock owners, queued messages, cached values), so
the file must be guarded like the secret itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raft_node.core.messages import Snapshot, SnapshotMeta
from raft_node.host import waiters as w
from raft_node.host.events import event
from raft_node.host.node_host import NodeHost
from raft_node.transport import backup_protocol as bp
from raft_node.transport import client_protocol as p
from raft_node.transport.codec import encode_payload

Respond = Callable[[bytes], None]
CHUNK_BYTES = 2 << 20
_WIRE_CODE = {w.NOT_LEADER: p.NOT_LEADER, w.TIMEOUT: p.TIMEOUT, w.UNAVAILABLE: p.UNAVAILABLE}


def backup_image(host: NodeHost) -> Snapshot:
    """The state at ``host``'s applied index, for a backup: the same bytes a log snapshot holds,
    with the configuration in force at that index, taken now on this thread; neither stored nor
    compacted into the log. It costs one ``Applier.snapshot()`` (the state machine's
    ``snapshot()``, proportional to its state), during which the node serves nothing else."""
    applied = host.applier.applied_index
    raft = host.raw.raft
    term = raft.log.term(applied)
    if not applied or term is None:
        raise ValueError(f"nothing to back up at applied index {applied}")
    conf = raft.conf_log.at(applied)
    meta = SnapshotMeta(applied, term, conf.voters, conf.learners, conf.context)
    return Snapshot(meta, host.applier.snapshot())


@dataclass(slots=True)
class _Held:
    data: bytes
    timer: asyncio.TimerHandle | None = None


class _Barrier(w.Wait):
    """The ReadIndex barrier of one ``begin``: snapshots when it passes."""

    __slots__ = ("req", "respond", "service")

    def __init__(self, service: BackupService, req: bp.Backup, respond: Respond) -> None:
        self.service, self.req, self.respond = service, req, respond

    def done(self, ok: bool, value: Any) -> None:
        self.service.snapshot_now(self.req, self.respond)

    def failed(self, reason: str, message: str) -> None:
        hint = self.service.hint() if reason == w.NOT_LEADER else ""
        kind = _WIRE_CODE[reason]
        self.respond(encode_payload(p.err(self.req.req_id, kind, message, hint)))


def chunk_bytes_for(max_frame_bytes: int) -> int:
    """Image bytes per chunk answer: ``CHUNK_BYTES``, or less so that the answer (the bytes
    plus an envelope of well under 4 KiB: request id, status, leader hint) fits a frame."""
    return max(1024, min(CHUNK_BYTES, max_frame_bytes - 4096))


class BackupService:
    """Serves BACKUP requests for one node (``RequestHandler`` hands them over)."""

    def __init__(self, host: NodeHost, hint: Callable[[], str], chunk_bytes: int) -> None:
        """``hint``: the known leader's ``host:port``; ``chunk_bytes``: the data per answer,
        which must fit, with its envelope, in the client frame limit."""
        self.host = host
        self.hint = hint
        self.chunk_bytes = chunk_bytes
        self._held: dict[str, _Held] = {}

    def handle(self, obj: Any, respond: Respond) -> None:
        try:
            req = bp.parse_backup(obj)
        except bp.BackupRequestError as exc:
            req_id = obj[1] if isinstance(obj[1], int) and obj[1] >= 0 else 0
            respond(encode_payload(p.err(req_id, p.BAD_REQUEST, str(exc))))
            return
        if req.op == bp.BEGIN:
            self._begin(req, respond)
        elif req.op == bp.CHUNK:
            self._chunk(req, respond)
        else:
            self._drop(req.token)
            respond(encode_payload(p.ok(req.req_id, True, self.hint())))

    def _begin(self, req: bp.Backup, respond: Respond) -> None:
        if req.leader and not self.host.is_leader:
            message = "backups are taken on the leader"
            respond(encode_payload(p.err(req.req_id, p.NOT_LEADER, message, self.hint())))
            return
        if len(self._held) >= bp.MAX_HELD:
            message = f"{len(self._held)} backups are being read from this node; retry later"
            respond(encode_payload(p.err(req.req_id, p.UNAVAILABLE, message)))
            return
        self.host.read(None, _Barrier(self, req, respond))

    def snapshot_now(self, req: bp.Backup, respond: Respond) -> None:
        """The barrier passed: image the state at the applied index, hold it, describe it."""
        host = self.host
        started = time.perf_counter()
        try:
            snap = backup_image(host)
        except ValueError as exc:
            respond(encode_payload(p.err(req.req_id, p.UNAVAILABLE, str(exc))))
            return
        digest = hashlib.sha256(snap.data).hexdigest()
        token = secrets.token_hex(16)
        self._held[token] = _Held(snap.data)
        self._touch(token)
        meta = snap.meta
        machine = type(host.state_machine)
        answer = {
            "token": token,
            "node": host.id,
            "index": meta.index,
            "term": meta.term,
            "size": len(snap.data),
            "sha256": digest,
            "chunk_bytes": self.chunk_bytes,
            "voters": list(meta.voters),
            "learners": list(meta.learners),
            "context": meta.context,
            "state_machine": f"{machine.__module__}.{machine.__qualname__}",
            "log_time_ms": host.log_time_ms,
        }
        event(
            logging.INFO,
            "backup_taken",
            node=host.id,
            index=meta.index,
            bytes=len(snap.data),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        respond(encode_payload(p.ok(req.req_id, answer, self.hint())))

    def _chunk(self, req: bp.Backup, respond: Respond) -> None:
        held = self._held.get(req.token)
        if held is None:
            message = f"no backup {req.token} on this node (finished, expired or another node's)"
            respond(encode_payload(p.err(req.req_id, p.BAD_REQUEST, message)))
            return
        end = min(len(held.data), req.offset + self.chunk_bytes)
        chunk = held.data[req.offset : end] if req.offset < end else b""
        if end >= len(held.data):
            self._drop(req.token)  # the last chunk: the client has everything
        else:
            self._touch(req.token)
        respond(encode_payload(p.ok(req.req_id, chunk, self.hint())))

    def _touch(self, token: str) -> None:
        """(Re)arm the idle timer that drops an abandoned image."""
        held = self._held[token]
        if held.timer is not None:
            held.timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven without a loop (tests): only end/last chunk drop it
            return
        held.timer = loop.call_later(bp.IDLE_S, self._drop, token)

    def _drop(self, token: str) -> None:
        held = self._held.pop(token, None)
        if held is not None and held.timer is not None:
            held.timer.cancel()

    def close(self) -> None:
        for token in list(self._held):
            self._drop(token)
