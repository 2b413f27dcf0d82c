"""Applies committed log entries to a ``StateMachine`` exactly once per client request.

Every client command travels in an envelope ``[client_id, seq, stamp_ms, body]``:

- ``(client_id, seq)`` makes retries safe (Raft thesis 6.3). A client numbers its requests
  1, 2, 3...; the applier remembers, per client, the highest ``seq`` applied and its result. A
  retry of that request gets the remembered result without being applied again; an older one
  gets ``DuplicateRequest``. Clients unseen for ``client_ttl_ms`` of log time are forgotten,
  so the table stays bounded; the expiry is decided by log time, so every replica forgets the
  same clients at the same entry.
- ``stamp_ms`` is the proposing leader's clock. The applier keeps ``now_ms = max(now_ms,
  stamp_ms)``, a log clock that never goes backwards even if a new leader's clock is behind.

Results are msgpack-able values; a rejected command (``CommandRejected``) is remembered too, so a
retried invalid request is rejected identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from raft_node.fsm import StateMachine
from raft_node.messages import Entry, EntryType

DEFAULT_CLIENT_TTL_MS = 3_600_000


class CommandRejected(Exception):
    """A well-formed command that the state machine refuses (state unchanged)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DuplicateRequest(Exception):
    """An older request of a client that has since moved on."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one entry produced: a result or a rejection, for ``(client_id, seq)``."""

    client_id: str
    seq: int
    ok: bool
    value: Any  # result if ok, else (code, message)


def encode_command(client_id: str, seq: int, stamp_ms: int, body: bytes) -> bytes:
    return msgpack.packb((client_id, seq, stamp_ms, body), use_bin_type=True)


def decode_command(data: bytes) -> tuple[str, int, int, bytes]:
    client_id, seq, stamp_ms, body = msgpack.unpackb(data, raw=False, use_list=False)
    return client_id, seq, stamp_ms, body


class Applier:
    def __init__(self, sm: StateMachine, client_ttl_ms: int = DEFAULT_CLIENT_TTL_MS) -> None:
        self.sm = sm
        self.client_ttl_ms = client_ttl_ms
        self.now_ms = 0
        self.applied_index = 0
        # client_id -> (seq, ok, value, last_seen_ms); insertion order = least recently seen first
        self.clients: dict[str, tuple[int, bool, Any, int]] = {}

    def apply(self, entry: Entry) -> Outcome | None:
        """Apply one committed entry. Returns the outcome for the proposing client, if any."""
        self.applied_index = entry.index
        if entry.type != EntryType.NORMAL or not entry.data:
            return None
        client_id, seq, stamp_ms, body = decode_command(entry.data)
        self.now_ms = max(self.now_ms, stamp_ms)
        self._expire_clients()
        last = self.clients.get(client_id)
        if last is not None and seq <= last[0]:
            if seq < last[0]:
                return Outcome(client_id, seq, False, ("duplicate", "request superseded"))
            return Outcome(client_id, seq, last[1], last[2])
        try:
            value, ok = self.sm.apply(entry.index, body, self.now_ms), True
        except CommandRejected as exc:
            value, ok = (exc.code, exc.message), False
        self.clients.pop(client_id, None)
        self.clients[client_id] = (seq, ok, value, self.now_ms)
        return Outcome(client_id, seq, ok, value)

    def _expire_clients(self) -> None:
        horizon = self.now_ms - self.client_ttl_ms
        while self.clients:
            oldest = next(iter(self.clients))
            if self.clients[oldest][3] >= horizon:
                break
            del self.clients[oldest]

    def snapshot(self) -> bytes:
        clients = [[c, *v] for c, v in self.clients.items()]
        state = (1, self.applied_index, self.now_ms, clients, self.sm.snapshot())
        return msgpack.packb(state, use_bin_type=True)

    def restore(self, data: bytes) -> None:
        version, applied, now_ms, clients, inner = msgpack.unpackb(data, raw=False)
        if version != 1:
            raise ValueError(f"unknown snapshot version {version}")
        self.applied_index, self.now_ms = applied, now_ms
        self.clients = {c[0]: (c[1], c[2], _freeze(c[3]), c[4]) for c in clients}
        self.sm.restore(inner)


def _freeze(value: Any) -> Any:
    """msgpack gives lists back; results are compared and re-sent, so normalise to tuples."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
