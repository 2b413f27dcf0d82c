"""Duplicate suppression for ``queue.put``: time-windowed dedup ids and *held* keys.

Two different promises, kept apart on purpose:

- **Dedup id** (``dedup_id`` + the queue's ``dedup_window_ms``): a put whose id was seen in the
  same queue less than the window ago (log time) is a duplicate, even if that message is gone
  already. Entries are forgotten when the window passes (the queue Part's tick, deadline key
  ``("x", queue, dedup_id)``) and at most ``DEDUP_MAX_ENTRIES`` per queue are kept (oldest
  first). A window of 0 disables it. Good for "the same request retried by a network client".
- **Held key** (``hold = [key, tag]``): a put is a duplicate while a message put with that key
  is still *in the queue* (ready, delayed or in flight, across redeliveries). The key is freed
  in the very entry that removes the message (``QueueState.remove``: ack, ``ack_many``, dead
  lettering or dropping, purge; a deleted queue takes its keys with it). No time is involved, so
  no TTL can be guessed wrong: a worker killed mid-task leaves the key held by a message that
  will be redelivered, and a task that ends frees it at once. The duplicate answer carries the
  first put's ``tag`` (a short string, e.g. the Celery task id, so a duplicate ``delay()`` can
  return the existing ``AsyncResult``). This is what celery-once needs a Redis TTL for.

A held-key duplicate is checked before the dedup window: either way nothing changes.
"""

from __future__ import annotations

from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Deadlines
from coordination.primitives.errors import BAD_COMMAND, LIMIT, reject
from coordination.primitives.queues_state import QueueState

DEFAULT_DEDUP_WINDOW_MS = 300_000
DEDUP_MAX_ENTRIES = 100_000  # per queue
TAG_MAX_BYTES = limits.OWNER_MAX_BYTES  # a Celery task id is 36


def dedup_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        reject(BAD_COMMAND, "dedup_id must be a non-empty string or null")
    if len(value.encode()) > limits.NAME_MAX_BYTES:
        reject(LIMIT, f"dedup_id longer than {limits.NAME_MAX_BYTES} bytes")
    return value


def hold(value: Any) -> tuple[str, str] | None:
    """The optional trailing ``queue.put`` argument: ``None`` or ``[key, tag]``."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        reject(BAD_COMMAND, "hold must be null or [key, tag]")
    key, tag = value
    if not isinstance(key, str) or not key:
        reject(BAD_COMMAND, "hold key must be a non-empty string")
    if len(key.encode()) > limits.NAME_MAX_BYTES:
        reject(LIMIT, f"hold key longer than {limits.NAME_MAX_BYTES} bytes")
    if not isinstance(tag, str):
        reject(BAD_COMMAND, "hold tag must be a string")
    if len(tag.encode()) > TAG_MAX_BYTES:
        reject(LIMIT, f"hold tag longer than {TAG_MAX_BYTES} bytes")
    return key, tag


def duplicate_of(
    q: QueueState, dedup: str | None, held: tuple[str, str] | None, now_ms: int
) -> dict[str, Any] | None:
    """The answer to a put that must change nothing, or None if it is not a duplicate."""
    if held is not None:
        entry = q.held.get(held[0])
        if entry is not None:
            return {"id": entry[0], "duplicate": True, "tag": entry[1]}
    if dedup is not None:
        seen = q.dedup.get(dedup)
        if seen is not None and seen[1] > now_ms:
            return {"id": seen[0], "duplicate": True}
    return None


def remember(
    q: QueueState,
    mid: int,
    dedup: str | None,
    held: tuple[str, str] | None,
    now_ms: int,
    deadlines: Deadlines,
) -> None:
    """Record the keys of the message ``mid`` just put (after ``duplicate_of`` said no)."""
    if held is not None:
        q.hold(held[0], mid, held[1])
    if dedup is not None and q.dedup_window_ms > 0:
        q.dedup.pop(dedup, None)
        expires = now_ms + q.dedup_window_ms
        q.dedup[dedup] = [mid, expires]
        deadlines.push(expires, ("x", q.name, dedup))
        while len(q.dedup) > DEDUP_MAX_ENTRIES:
            del q.dedup[next(iter(q.dedup))]
