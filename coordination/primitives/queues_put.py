"""Enqueueing (``queue.put`` and ``queue.put_many``): a mixin of ``Queues``, kept apart so the
part's module stays about leases and delivery.

**Message ids.** A message's id is the position of its put in the log: the entry's index while
no ``put_many`` was ever applied (so a log written before batches existed replays to the same
ids), and ``index * MSG_ID_STRIDE + position in the batch`` from the first ``put_many`` on, for
single puts too. The switch is part of the replicated state (snapshotted), so every replica
makes it at the same entry. Ids stay unique and increasing in log order across it: an id made
after the switch at entry ``s`` is at least ``s * MSG_ID_STRIDE``, above every id made before it
(at most ``s - 1``).

**Why a batch.** A producer that enqueues many messages (64 coroutines on one client, a Celery
publisher under load) paid one log entry each: the request, the entry's encoding, its
replication and fsync, the reply. ``put_many`` carries up to ``limits.BATCH_MAX`` messages of one
queue in one entry. Each message is still its own put: checked on its own, answered on its own
(a full queue or a duplicate refuses that message, not the batch), applied in order (a dedup id
repeated inside the batch is a duplicate of its first use).
"""

from __future__ import annotations

from typing import Any

from coordination.primitives import limits
from coordination.primitives import queues_keys as keys
from coordination.primitives.base import Ctx, Deadlines
from coordination.primitives.errors import BAD_COMMAND, LIMIT, reject
from coordination.primitives.queues_state import QueueState
from coordination.primitives.queues_state import queue_name as _queue_name
from raft_node.core.fsm import CommandRejected

# Ids per entry once batches are in use; above limits.BATCH_MAX, and small enough that ids stay
# exact in JSON and JavaScript (below 2**53) until index 2**43.
MSG_ID_STRIDE = 1024
PUT_FIELDS = 5  # payload, priority, dedup_id, delay_ms, hold


class QueuePuts:
    """``put`` and ``put_many``. Needs the part's ``queues``, ``_deadlines``, ``_create``,
    ``_enqueue`` and ``_flush``; keeps ``batched_ids`` (the id switch above)."""

    queues: dict[str, QueueState]
    _deadlines: Deadlines
    batched_ids = False

    def _create(self, name: str) -> QueueState:
        raise NotImplementedError

    def _enqueue(self, q: QueueState, mid: int, now_ms: int, delay: int) -> None:
        raise NotImplementedError

    def _flush(self, ctx: Ctx) -> None:
        raise NotImplementedError

    def put(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        """``[name, payload, priority, dedup_id, delay_ms(, hold)]`` -> ``{"id", "duplicate"}``
        (a held-key duplicate adds the first put's ``"tag"``). ``hold`` is ``None`` or
        ``[key, tag]``; commands without it (5 arguments) are as valid as ever."""
        name, *item = put_arity(args)
        mid = ctx.index * MSG_ID_STRIDE if self.batched_ids else ctx.index
        result = self._put_one(ctx, _queue_name(name), item, mid)
        self._flush(ctx)
        return result

    def put_many(self, ctx: Ctx, args: list[Any]) -> list[dict[str, Any]]:
        """``[name, [[payload, priority, dedup_id, delay_ms, hold], ...]]`` -> one answer per
        message, in order: what ``put`` answers, or ``{"error": code, "message", "details"}``
        for a message refused on its own (the others still go in)."""
        name, items = put_many_arity(args)
        name = _queue_name(name)
        self.batched_ids = True
        base = ctx.index * MSG_ID_STRIDE
        results: list[dict[str, Any]] = []
        q = self.queues.get(name)
        plain = 0  # messages enqueued by the plain path
        for position, item in enumerate(items):
            if q is not None and _plain(item) and len(q.messages) < q.max_depth:
                mid = base + position
                q.messages[mid] = [item[0], item[1], 0, None]
                q.push_ready(mid)
                plain += 1
                results.append({"id": mid, "duplicate": False})
                continue
            try:
                if not isinstance(item, list) or len(item) != PUT_FIELDS:
                    reject(BAD_COMMAND, f"a put_many message is [{PUT_FIELDS} fields]")
                results.append(self._put_one(ctx, name, item, base + position))
            except CommandRejected as exc:
                results.append({"error": exc.code, "message": exc.message, "details": exc.details})
            q = self.queues.get(name)  # a first put creates the queue
        if plain:
            assert q is not None
            q.total_put += plain
            self._dirty[q.name] = None
        self._flush(ctx)
        return results

    def _put_one(self, ctx: Ctx, name: str, item: list[Any], mid: int) -> dict[str, Any]:
        """Check one message, then enqueue it under ``mid`` (or answer its duplicate)."""
        payload, priority, dedup_id, delay, hold = item
        payload = limits.blob(payload, limits.PAYLOAD_MAX_BYTES, "payload")
        priority = limits.integer(priority, (limits.PRIORITY_MIN, limits.PRIORITY_MAX), "priority")
        dedup_id = keys.dedup_id(dedup_id)
        delay = limits.integer(delay, limits.DELAY_MS, "delay_ms")
        hold = keys.hold(hold)
        q = self.queues.get(name)
        if q is not None:
            duplicate = keys.duplicate_of(q, dedup_id, hold, ctx.now_ms)
            if duplicate is not None:
                return duplicate
            if len(q.messages) >= q.max_depth:
                reject(LIMIT, f"queue {name!r} is full ({q.max_depth} messages)")
        else:
            q = self._create(name)
        q.messages[mid] = [payload, priority, 0, None]
        q.total_put += 1
        self._enqueue(q, mid, ctx.now_ms, delay)
        keys.remember(q, mid, dedup_id, hold, ctx.now_ms, self._deadlines)
        return {"id": mid, "duplicate": False}


def _plain(item: Any) -> bool:
    """A message with nothing to check but its payload and priority, and nothing to remember:
    no dedup id, no delay, no held key (what Celery's tasks and most producers put). Such a
    message skips ``_put_one``'s general checks (a 64-message entry validates and applies in
    0.72x the time, ``bench/apply_cost.py``); the outcome is the same: ``_put_one`` would
    enqueue it just so."""
    return (
        type(item) is list
        and len(item) == PUT_FIELDS
        and type(item[0]) is bytes
        and len(item[0]) <= limits.PAYLOAD_MAX_BYTES
        and type(item[1]) is int
        and limits.PRIORITY_MIN <= item[1] <= limits.PRIORITY_MAX
        and item[2] is None
        and type(item[3]) is int
        and item[3] == 0
        and item[4] is None
    )


def put_arity(args: list[Any]) -> list[Any]:
    """``queue.put`` takes 6 arguments, or 5 (from before ``hold``)."""
    return limits.args([*args, None] if len(args) == 5 else args, 6, "queue.put")


def put_many_arity(args: list[Any]) -> list[Any]:
    """``queue.put_many``: a name and 1..``BATCH_MAX`` messages (each checked when applied)."""
    name, items = limits.args(args, 2, "queue.put_many")
    if not isinstance(items, list) or not 1 <= len(items) <= limits.BATCH_MAX:
        reject(BAD_COMMAND, f"messages must be a list of 1..{limits.BATCH_MAX} puts")
    return [name, items]
