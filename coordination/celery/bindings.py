"""Exchange bindings shared by every process of a ``raft://`` broker, as session-held locks.

kombu's virtual transports keep exchange -> queue bindings in process memory. That is enough for
a task queue (the producer declares the queue it publishes to), but not for messages routed to
queues another process bound: Celery's remote control broadcasts to every worker's ``pidbox``
queue through a *fanout* exchange, and workers reply to the caller's reply queue through a
direct exchange only the caller bound.

A binding is therefore also a *shared lock* in the cluster, held by the binding channel's
session, named ``kombu/<exchange>/<queue>/<routing key>``. Publishers list the locks under
``kombu/<exchange>/``. Like a ZooKeeper ephemeral node, a binding lives exactly as long as its
consumer: a worker that stops, or dies and whose session expires, stops receiving broadcasts
without anyone cleaning up. Names are escaped into the lock-name charset (``=XX`` per byte).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from coordination.client.coordinator import SHARED, Coordinator, Lock, Session
from coordination.exceptions import CoordinationError
from coordination.primitives import limits

log = logging.getLogger("coordination.celery")

PREFIX = "kombu/"
_SAFE = re.compile(r"[A-Za-z0-9_.:@+#{}\[\]-]")  # the lock-name charset without "/" and "="
_ESCAPED = re.compile(r"=([0-9A-F]{2})")


def escape(part: str) -> str:
    """``part`` in the lock-name charset; reversible, and free of the ``/`` separator."""
    return "".join(
        ch if _SAFE.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode()) for ch in part
    )


def unescape(part: str) -> str:
    raw = _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), part)
    return raw.encode("latin-1").decode("utf-8")


def lock_name(exchange: str, queue: str, routing_key: str) -> str:
    return f"{PREFIX}{escape(exchange)}/{escape(queue)}/{escape(routing_key)}"


def register(
    coord: Coordinator, session: Session, exchange: str, queue: str, routing_key: str
) -> Lock | None:
    """Hold the binding's lock in ``session`` (returned, to release it when the queue goes);
    None (and a warning) if the names are too long to fit a lock name: that binding then stays
    local to this process, as in plain kombu."""
    name = lock_name(exchange, queue, routing_key)
    if len(name.encode()) > limits.NAME_MAX_BYTES:
        log.warning(
            "event=binding_not_shared exchange=%s queue=%s reason=name_too_long", exchange, queue
        )
        return None
    lock = coord.lock(name, SHARED, wait=0, session=session, owner="binding")
    try:
        lock.acquire()
    except CoordinationError as exc:
        log.warning("event=binding_not_shared exchange=%s queue=%s error=%s", exchange, queue, exc)
        return None
    return lock


def bindings(coord: Coordinator, exchange: str) -> list[tuple[str, str, str]]:
    """Every live binding of ``exchange``: ``(routing_key, pattern, queue)`` rows as in kombu's
    exchange tables (the pattern is the routing key: only direct and fanout are supported)."""
    prefix = f"{PREFIX}{escape(exchange)}/"
    rows = []
    for lock in coord.locks(prefix, limits.BATCH_MAX):
        if not lock["holders"]:
            continue  # only waiters: not a binding
        queue, _, routing_key = lock["name"][len(prefix) :].partition("/")
        rows.append((unescape(routing_key), unescape(routing_key), unescape(queue)))
    return rows


def merge(*tables: Any) -> list[tuple[str, str, str]]:
    """Union of binding tables, order kept (kombu's rows may be lists or tuples)."""
    return list(dict.fromkeys(tuple(row) for table in tables for row in table))
