"""Applies committed log entries to a ``StateMachine`` exactly once per client request.

Every client command travels in an envelope ``[client_id, seq, stamp_ms, body]``:

- ``(client_id, seq)`` makes retries safe (Raft thesis 6.3). A client numbers its requests
  1, 2, 3...; the applier remembers, per client, the highest ``seq`` applied and its result. A
  retry of that request gets the remembered result without being applied again; an older one
  gets a ``duplicate`` rejection. Clients unseen for ``client_ttl_ms`` of log time are forgotten,
  so the table stays bounded; the expiry is decided by log time, so every replica forgets the
  same clients at the same entry. ``client_id == ""`` marks a *system* command proposed by the
  leader itself (a clock tick, the new-leader grace): never deduplicated, never answered.
- ``stamp_ms`` is the proposing leader's clock. The applier keeps ``now_ms = max(now_ms,
  stamp_ms)``, a log clock that never goes backwards even if a new leader's clock is behind.

**Blocking commands.** A state machine may answer ``Pending(token)``: the request is accepted
but completes later (a lock wait, a blocking queue get). ``token`` is the state machine's own
id for the wait (use the entry index: unique and deterministic). When a later entry completes
it, the state machine reports ``(token, ok, value)`` from ``drain_completions()``; the applier
turns that into the ``Outcome`` for the original ``(client_id, seq)`` and updates its dedup
record, so a client that retries a pending request (after a leader change, or a server-side
timeout) is told "still pending" and then gets the result. The token table is replicated state
(it is in the snapshot).

Optional state machine hooks (duck-typed, all deterministic): ``drain_completions()``,
``next_deadline() -> int | None`` (log time at which a tick would change something),
``tick_command() -> bytes`` and ``leader_command() -> bytes | None`` (proposed by a new leader
before anything else, e.g. to extend sessions by one TTL, as Chubby's grace period).

Results are msgpack-able values; a rejected command (``CommandRejected``) is remembered too, so a
retried invalid request is rejected identically. ``CommandRejected`` and ``Pending`` belong to the
state machine contract (``raft_node.core.fsm``); they are imported here, so the names still
resolve from this module.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from raft_node.core.fsm import CommandRejected, Pending, StateMachine
from raft_node.core.messages import Entry, EntryType

DEFAULT_CLIENT_TTL_MS = 3_600_000
SYSTEM = ""  # client id of leader-proposed system commands


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying produced for ``(client_id, seq)``: a result, a rejection, or "pending"."""

    client_id: str
    seq: int
    ok: bool
    value: Any  # result if ok, else the rejection (code, message, details)
    pending: bool = False


_PENDING = "pending"  # marker in the dedup record's ``ok`` slot


def encode_command(client_id: str, seq: int, stamp_ms: int, body: bytes) -> bytes:
    return msgpack.packb((client_id, seq, stamp_ms, body), use_bin_type=True)


def decode_command(data: bytes) -> tuple[str, int, int, bytes]:
    client_id, seq, stamp_ms, body = msgpack.unpackb(data, raw=False, use_list=False)
    return client_id, seq, stamp_ms, body


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_resume = False


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Hold off CPython's cyclic garbage collector for the block (reference counting still
    frees everything that is not in a cycle).

    Why: serialising a state of N records, or rebuilding one from a snapshot, allocates about N
    containers in one burst. The collector is triggered by allocation counts, so during that
    burst it runs hundreds of young collections and, as the survivors pile up, full collections
    over the whole heap, and none of them can find garbage: a snapshot's temporaries are freed by
    reference counting, and the state has no cycles to collect. Both run on the node's event
    loop, so that is time in which the node answers nothing and sends no heartbeat. Measured with
    ``bench/gc_state.py`` (1M cache keys, one process): a restore 2.0 -> 1.3 s of CPU (the new
    objects still get their young collections once the collector is back: about 0.1 s). The
    serialisation gains little there since cache records are tuples (``cache_store``), but other
    parts' rows (queued messages, history events) are lists, and a node's heap holds more.

    Nested and concurrent uses are counted: the collector comes back when the last one ends, and
    only if it was enabled when the first began."""
    global _gc_pausers, _gc_resume
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_resume:
                gc.enable()


class Applier:
    def __init__(self, sm: StateMachine, client_ttl_ms: int = DEFAULT_CLIENT_TTL_MS) -> None:
        self.sm = sm
        self.client_ttl_ms = client_ttl_ms
        self.now_ms = 0
        self.applied_index = 0
        # client_id -> (seq, ok | "pending", value, last_seen_ms); oldest first
        self.clients: dict[str, tuple[int, Any, Any, int]] = {}
        self.waits: dict[int, tuple[str, int]] = {}  # pending token -> (client_id, seq)
        self._drain = getattr(sm, "drain_completions", None)

    def apply(self, entry: Entry) -> list[Outcome]:
        """Apply one committed entry; returns the outcomes it produced (its own, and those of
        earlier pending requests it completed)."""
        self.applied_index = entry.index
        if entry.type != EntryType.NORMAL or not entry.data:
            return []
        client_id, seq, stamp_ms, body = decode_command(entry.data)
        self.now_ms = max(self.now_ms, stamp_ms)
        self._expire_clients()
        if client_id == SYSTEM:
            # A system command may be moot by now (e.g. nothing left to expire): ignore refusal.
            with contextlib.suppress(CommandRejected):
                self.sm.apply(entry.index, body, self.now_ms)
            return self._completions()
        last = self.clients.get(client_id)
        if last is not None and seq <= last[0]:
            if seq < last[0]:
                superseded = ("duplicate", "request superseded", {"seq": last[0]})
                return [Outcome(client_id, seq, False, superseded)]
            if last[1] == _PENDING:
                return [Outcome(client_id, seq, True, None, pending=True)]
            return [Outcome(client_id, seq, last[1], last[2])]
        try:
            value, ok = self.sm.apply(entry.index, body, self.now_ms), True
        except CommandRejected as exc:
            value, ok = exc.record(), False
        self.clients.pop(client_id, None)
        if isinstance(value, Pending):
            self.clients[client_id] = (seq, _PENDING, value.token, self.now_ms)
            self.waits[value.token] = (client_id, seq)
            outcome = Outcome(client_id, seq, True, None, pending=True)
        else:
            self.clients[client_id] = (seq, ok, value, self.now_ms)
            outcome = Outcome(client_id, seq, ok, value)
        return [outcome, *self._completions()]

    def _completions(self) -> list[Outcome]:
        if self._drain is None:
            return []
        out = []
        for token, ok, value in self._drain():
            origin = self.waits.pop(token, None)
            if origin is None:
                continue
            client_id, seq = origin
            if not ok:
                value = rejection(value)
            record = self.clients.get(client_id)
            if record is not None and record[0] == seq:
                self.clients[client_id] = (seq, ok, value, record[3])
            out.append(Outcome(client_id, seq, ok, value))
        return out

    def _expire_clients(self) -> None:
        horizon = self.now_ms - self.client_ttl_ms
        while self.clients:
            oldest = next(iter(self.clients))
            record = self.clients[oldest]
            if record[3] >= horizon or record[1] == _PENDING:
                break
            del self.clients[oldest]

    # -- hooks for the leader ------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        hook = getattr(self.sm, "next_deadline", None)
        return hook() if hook is not None else None

    def tick_command(self) -> bytes | None:
        hook = getattr(self.sm, "tick_command", None)
        return hook() if hook is not None else None

    def leader_command(self) -> bytes | None:
        hook = getattr(self.sm, "leader_command", None)
        return hook() if hook is not None else None

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The applier's tables and the state machine's snapshot, as one msgpack value; taken
        with the cyclic collector held off (``cyclic_gc_paused``)."""
        with cyclic_gc_paused():
            clients = [[c, *v] for c, v in self.clients.items()]
            waits = [[t, c, s] for t, (c, s) in self.waits.items()]
            state = (2, self.applied_index, self.now_ms, clients, waits, self.sm.snapshot())
            return msgpack.packb(state, use_bin_type=True)

    def restore(self, data: bytes) -> None:
        """Replace everything with a snapshot's contents (``cyclic_gc_paused`` as well)."""
        with cyclic_gc_paused():
            self._restore(data)

    def _restore(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False)
        if state[0] == 1:  # before blocking commands existed: no wait table
            _, applied, now_ms, clients, inner = state
            waits = []
        elif state[0] == 2:
            _, applied, now_ms, clients, waits, inner = state
        else:
            raise ValueError(f"unknown snapshot version {state[0]}")
        self.applied_index, self.now_ms = applied, now_ms
        self.clients = {
            c[0]: (c[1], c[2], _freeze(c[3]) if c[2] is not False else rejection(c[3]), c[4])
            for c in clients
        }
        self.waits = {t: (c, s) for t, c, s in waits}
        self.sm.restore(inner)


def rejection(value: Any) -> tuple[str, str, dict[str, Any]]:
    """A failed completion (or a remembered rejection) as ``(code, message, details)``: state
    machines may report ``(code, message)``, and snapshots taken before rejections had
    details hold that shape."""
    code, message, *rest = value
    details = rest[0] if rest and isinstance(rest[0], dict) else {}
    return (code, message, details)


def _freeze(value: Any) -> Any:
    """msgpack gives lists back; results are compared and re-sent, so normalise to tuples."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
