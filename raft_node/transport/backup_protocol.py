"""The BACKUP client request: a consistent state machine snapshot, pulled in chunks.

A backup is too big for one client frame (``MAX_FRAME_BYTES``, 4 MiB by default), and a node
that pushed it in one burst would overrun the client's output buffer (a connection with more than
``max_client_out_bytes`` unread is dropped). So the client *pulls*: one request starts a backup,
then one request per chunk, each answered by one frame. A node keeps the image it took in memory
until the last chunk is read or the client goes quiet for ``IDLE_S``.

Requests (``[BACKUP, req_id, spec]`` on a CLIENT frame; ``spec`` is a map)::

    {"op": "begin", "leader": bool}     take a snapshot now (after a ReadIndex round)
    {"op": "chunk", "token": str, "offset": int}       bytes of the image from ``offset``
    {"op": "end", "token": str}                        drop the image (the client is done)

``begin`` with ``leader`` is served by the leader only (``not_leader`` with a hint elsewhere, so
a client follows it there); without, by whichever node gets it. Either way the node first runs a
ReadIndex round and waits until it has applied the read index, so the image holds every write
acknowledged before the request: the backup is linearizable, like a read. Its answer::

    {"token", "node", "index", "term", "size", "sha256", "chunk_bytes",
     "voters", "learners", "context", "state_machine", "log_time_ms"}

``index``/``term`` are the log position the image covers; ``voters``/``learners``/``context``
the configuration in force there; ``sha256`` (hex) is over the ``size`` bytes of the image (the
host's ``Applier.snapshot()``: dedup table, log clock and the state machine's own snapshot).
A ``chunk`` is answered with ``bytes`` (at most ``chunk_bytes``; empty at the end); an unknown or
expired token is ``bad_request``, and the client starts again.

Kept apart from ``client_protocol`` (which this extends with one kind) so the request shapes of
other features change independently. Kinds 6 and 7 are left for the membership requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKUP = 8
IDLE_S = 60.0
MAX_TOKEN = 64
MAX_HELD = 2  # images a node holds at once (each is the whole state, in memory)
BEGIN, CHUNK, END = "begin", "chunk", "end"


class BackupRequestError(ValueError):
    """A BACKUP request that does not follow the shapes above."""


@dataclass(frozen=True, slots=True)
class Backup:
    req_id: int
    op: str
    leader: bool = True
    token: str = ""
    offset: int = 0


def is_backup(obj: Any) -> bool:
    """Whether a decoded CLIENT frame is a BACKUP request (checked before ``parse_request``)."""
    return isinstance(obj, list) and len(obj) >= 2 and obj[0] == BACKUP


def parse_backup(obj: Any) -> Backup:
    """Validate ``[BACKUP, req_id, spec]``; ``BackupRequestError`` with a useful message."""
    if not is_backup(obj) or len(obj) != 3:
        raise BackupRequestError("backup request must be [8, req_id, spec]")
    req_id, spec = obj[1], obj[2]
    if not isinstance(req_id, int) or isinstance(req_id, bool) or req_id < 0:
        raise BackupRequestError("req_id must be a non-negative integer")
    if not isinstance(spec, dict):
        raise BackupRequestError("backup spec must be a map")
    op = spec.get("op")
    if op == BEGIN and set(spec) <= {"op", "leader"}:
        leader = spec.get("leader", True)
        if not isinstance(leader, bool):
            raise BackupRequestError("backup option leader must be a boolean")
        return Backup(req_id, BEGIN, leader=leader)
    if op in (CHUNK, END):
        token = spec.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN:
            raise BackupRequestError(f"backup token must be a string of 1..{MAX_TOKEN} chars")
        if op == END and set(spec) == {"op", "token"}:
            return Backup(req_id, END, token=token)
        offset = spec.get("offset")
        if set(spec) == {"op", "token", "offset"} and _non_negative(offset):
            return Backup(req_id, CHUNK, token=token, offset=offset)
        raise BackupRequestError(f"backup {op} takes a token (and a chunk a byte offset)")
    raise BackupRequestError(f"unknown backup request {spec!r:.100}")


def _non_negative(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
