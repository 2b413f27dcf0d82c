"""Named work queues: priority 0..9 then FIFO, leases, redelivery, dead letters, blocking gets.

Design notes (the contract the clients and the kombu transport rely on):

- **Ids and order.** A message's id comes from the position of its put in the log (the entry's
  index; once batches are in use, ``queues_put``): unique, increasing, never reused, and the
  same after a move to or from the dead-letter queue. Ready messages are delivered highest
  priority first (9 before 0), lowest id first within a priority. A message
  requeued by ``nack``, a lease expiry or its consumer's session ending goes back under its own
  id, so it is retried before newer messages; a delayed message becomes ready in id order too.
- **One place at a time.** Until it is acked, purged or dropped, a message is in exactly one
  queue and there in exactly one of ready, delayed or in flight (leased to one session until a
  deadline). So no message is ever delivered to two consumers at once; duplicates happen only as
  redeliveries, each counted by ``delivery_count`` (1 on the first delivery).
- **Leases end** by ``ack`` (gone), ``nack`` (requeue, optionally delayed, or dead-letter), the
  lease deadline passing (tick) or the session ending. A get with ``visibility_ms`` None takes a
  *session-held* lease: it has no deadline and ends only by ack, nack or the session ending, so a
  consumer that lives (keeps its session alive) is never redelivered a message it is still
  working on, however long the work takes (the ``raft://`` transport's default; celery#5935).
  A lease ending without an ack is a redelivery, except that a message whose
  ``delivery_count`` reached ``max_deliveries`` goes to the dead-letter queue instead (reason
  ``max_deliveries``; ``nack(requeue=False)`` gives ``rejected``). This includes
  ``nack(requeue=True)``, so a poison message that is always nacked cannot loop forever.
- **Dead-letter queue** ``name + ".dlq"``: an ordinary queue, created on first use, whose
  messages carry ``dead_letter = {"reason", "from_queue", "delivery_count", "original_id"}`` and
  restart at ``delivery_count`` 0. A queue whose name ends in ``.dlq`` has no DLQ of its own
  (its default ``max_deliveries`` is the maximum): what it would dead-letter is dropped and
  counted in ``dropped``; so is a dead letter arriving at a full DLQ. Memory stays bounded.
- **Depth** (ready + delayed + in flight) is limited per queue by ``max_depth``; a put beyond it
  is rejected, ``requeue_dead`` stops at it. Requeues never need room (the message is already
  counted).
- **Dedup and held keys** (``queues_keys``): a put repeating a ``dedup_id`` within the queue's
  ``dedup_window_ms``, or a *held* key whose message is still in the queue (until the entry that
  acks, dead-letters, purges or drops it), returns the first id with ``duplicate: True`` and
  changes nothing. The ``queue.held`` query lists the held keys with their messages' state.
- **Batches.** ``put_many`` enqueues up to ``BATCH_MAX`` messages in one entry, each checked
  and answered on its own (``queues_put``). ``get_many`` leases up to ``max_count`` ready
  messages in one entry (a consumer with room for several pays one commit), answering a list;
  ``get_any`` does the same from the first of several queues with messages, and blocked, waits
  in all of them at once;
  ``ack_many`` acks a list of ids of one session, reporting the ids no longer leased to it
  instead of failing the batch.
- **Blocking gets.** ``get`` on an empty queue with ``wait_ms > 0`` returns ``Pending(index)``.
  Waiters of a queue are served FIFO as soon as a message is ready (a put, a delayed message
  becoming visible, a requeue), completed with ``None`` when the wait runs out, failed with
  ``session_expired`` when their session ends. Invariant between entries: a queue never has both
  ready messages and waiters (every entry point ends with ``_flush``).
- **Subscriptions** (``queue_consumers``): a consumer's standing request with a window; what a
  blocked get does not take is leased to a subscription with room in the entry that made it
  ready, and pushed on the subscription's stream (no get entry per message). Invariant between
  entries: no queue has ready messages while a subscription on it has room.
- **Time.** One ``Deadlines`` heap, keys ``("d", queue, id)`` delayed message visible,
  ``("l", queue, id)`` lease expiry, ``("w", token)`` wait timeout, ``("x", queue, dedup_id)``
  dedup expiry. A tick handles due keys in deadline order (ties: d, l, w, x) and serves waiters
  before timing any out, so a message that became visible before a wait's deadline is delivered
  even if the tick comes late.
- **Determinism.** No iteration over hash order that matters: dicts iterate in insertion order
  (restored in the same order), and session cleanup sorts what it releases.
"""

from __future__ import annotations

from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Check, Ctx, Deadlines, Op, Pending
from coordination.primitives.errors import (
    BAD_COMMAND,
    SESSION_EXPIRED,
    UNKNOWN_MESSAGE,
    UNKNOWN_QUEUE,
    reject,
)
from coordination.primitives.queue_consumers import Consumers, Subscription
from coordination.primitives.queues_keys import DEDUP_MAX_ENTRIES, DEFAULT_DEDUP_WINDOW_MS
from coordination.primitives.queues_put import QueuePuts, put_arity, put_many_arity
from coordination.primitives.queues_state import DLQ_SUFFIX, QueueState, is_dlq
from coordination.primitives.queues_state import MAX_QUEUES_PER_WAIT as MAX_GET_ANY_QUEUES
from coordination.primitives.queues_state import queue_name as _queue_name
from coordination.primitives.queues_views import QueueViews
from coordination.primitives.sessions import Sessions

DEFAULT_MAX_DELIVERIES = 5
REASON_MAX_DELIVERIES = "max_deliveries"
REASON_REJECTED = "rejected"

__all__ = [
    "DEDUP_MAX_ENTRIES",
    "DEFAULT_DEDUP_WINDOW_MS",
    "DEFAULT_MAX_DELIVERIES",
    "MAX_GET_ANY_QUEUES",
    "Queues",
]


def _msg_id(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        reject(BAD_COMMAND, "message id must be an integer")
    return value


def _defaults(name: str) -> tuple[int, int, int]:
    """(max_deliveries, dedup_window_ms, max_depth) of a queue created implicitly."""
    deliveries = limits.MAX_DELIVERIES[1] if is_dlq(name) else DEFAULT_MAX_DELIVERIES
    return deliveries, DEFAULT_DEDUP_WINDOW_MS, limits.QUEUE_DEPTH_MAX


class Queues(QueueViews, QueuePuts):
    name = "queues"

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions
        self.queues: dict[str, QueueState] = {}  # creation order
        # token -> [session, queue, deadline, visibility, max_count]; max_count None: a ``get``
        # (answered with one message or None), else a ``get_many`` (answered with a list).
        # ``queue`` is a list of names for a ``get_any`` (it waits in each of those queues).
        self.waiters: dict[int, list[Any]] = {}
        self._leases_by_session: dict[int, dict[tuple[str, int], None]] = {}
        self._waits_by_session: dict[int, dict[int, None]] = {}
        self._deadlines = Deadlines()
        self._dirty: dict[str, None] = {}  # queues that may have both ready messages and waiters
        self.consumers = Consumers(sessions, self._flush, self._lease_to)

    def ops(self) -> dict[str, Op]:
        return {
            "queue.declare": self.declare,
            "queue.put": self.put,
            "queue.put_many": self.put_many,
            "queue.get": self.get,
            "queue.get_many": self.get_many,
            "queue.get_any": self.get_any,
            "queue.ack": self.ack,
            "queue.ack_many": self.ack_many,
            "queue.nack": self.nack,
            "queue.touch": self.touch,
            "queue.purge": self.purge,
            "queue.delete": self.delete,
            "queue.requeue_dead": self.requeue_dead,
            "queue.subscribe": self.consumers.subscribe,
            "queue.unsubscribe": self.consumers.unsubscribe,
        }

    def checks(self) -> dict[str, Check]:
        """Arity only: the next checks are cheap but not worth a second copy."""
        return {
            **limits.arities(
                {
                    "queue.declare": 4,
                    "queue.get": 4,
                    "queue.get_many": 5,
                    "queue.get_any": 5,
                    "queue.ack": 3,
                    "queue.ack_many": 3,
                    "queue.nack": 5,
                    "queue.touch": 4,
                    "queue.purge": 1,
                    "queue.delete": 1,
                    "queue.requeue_dead": 2,
                    "queue.subscribe": 7,
                    "queue.unsubscribe": 2,
                }
            ),
            "queue.put": put_arity,
            "queue.put_many": put_many_arity,
        }

    # -- ops ------------------------------------------------------------------------------------

    def declare(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        """``[name, max_deliveries, dedup_window_ms, max_depth]`` -> config. Creates or updates;
        a ``None`` setting keeps the current value (the default for a new queue)."""
        name, deliveries, window, depth = limits.args(args, 4, "queue.declare")
        name = _queue_name(name)
        deliveries = limits.optional_integer(deliveries, limits.MAX_DELIVERIES, "max_deliveries")
        window = limits.optional_integer(window, limits.DEDUP_WINDOW_MS, "dedup_window_ms")
        depth = limits.optional_integer(depth, (1, limits.QUEUE_DEPTH_MAX), "max_depth")
        q = self.queues.get(name) or self._create(name)
        if deliveries is not None:
            q.max_deliveries = deliveries
        if window is not None:
            q.dedup_window_ms = window
        if depth is not None:
            q.max_depth = depth
        return q.config()

    def get(self, ctx: Ctx, args: list[Any]) -> dict[str, Any] | Pending | None:
        """``[session, name, wait_ms, visibility_ms]`` -> message dict, ``None`` (empty, no
        wait) or ``Pending`` (completed later with a message dict or ``None``)."""
        sid, name, wait, visibility = limits.args(args, 4, "queue.get")
        return self._get(ctx, sid, name, wait, visibility, None)

    def get_many(self, ctx: Ctx, args: list[Any]) -> list[dict[str, Any]] | Pending:
        """``[session, name, wait_ms, visibility_ms, max_count]`` -> up to ``max_count``
        messages, each leased as by ``get`` (in delivery order); ``[]`` if the queue is empty
        and there is no wait (or it ran out). One entry fetches a batch: a consumer with room
        for several messages (kombu's prefetch) pays one commit, not one per message."""
        sid, name, wait, visibility, count = limits.args(args, 5, "queue.get_many")
        count = limits.integer(count, (1, limits.BATCH_MAX), "max_count")
        return self._get(ctx, sid, name, wait, visibility, count)

    def get_any(self, ctx: Ctx, args: list[Any]) -> list[dict[str, Any]] | Pending:
        """``[session, [name, ...], wait_ms, visibility_ms, max_count]`` -> up to ``max_count``
        messages of the first listed queue that has any ready (each message names its queue),
        ``[]`` or ``Pending`` as ``get_many``. A blocked ``get_any`` waits in every listed
        queue and is served by whichever gets a message first: one wait for a consumer of
        several queues (a Celery worker with ``-Q a,b``) instead of one wait per queue in turn.
        The caller rotates the list for fairness."""
        sid, names, wait, visibility, count = limits.args(args, 5, "queue.get_any")
        if not isinstance(names, list) or not 1 <= len(names) <= MAX_GET_ANY_QUEUES:
            reject(BAD_COMMAND, f"queues must be a list of 1..{MAX_GET_ANY_QUEUES} names")
        names = list(dict.fromkeys(_queue_name(n) for n in names))
        count = limits.integer(count, (1, limits.BATCH_MAX), "max_count")
        return self._get(ctx, sid, names, wait, visibility, count)

    def _get(
        self, ctx: Ctx, sid: Any, name: Any, wait: Any, visibility: Any, count: int | None
    ) -> Any:
        """``name``: one queue (get, get_many) or a list of validated names (get_any)."""
        names = name if isinstance(name, list) else [_queue_name(name)]
        wait = limits.integer(wait, limits.WAIT_MS, "wait_ms")
        visibility = limits.optional_integer(visibility, limits.VISIBILITY_MS, "visibility_ms")
        sid = self._sessions.require(sid)
        queues = [self._require(n) for n in names]
        for q in queues:
            if q.ready:
                return self._lease_batch(ctx, q, sid, visibility, count)
        if wait == 0:
            return None if count is None else []
        token, deadline = ctx.index, ctx.now_ms + wait
        waits_in = names if isinstance(name, list) else names[0]
        self.waiters[token] = [sid, waits_in, deadline, visibility, count]
        for q in queues:
            q.waiters[token] = None
        self._waits_by_session.setdefault(sid, {})[token] = None
        self._deadlines.push(deadline, ("w", token))
        return Pending(token)

    def ack(self, ctx: Ctx, args: list[Any]) -> bool:
        """``[session, name, id]`` -> True; the message is gone."""
        sid, name, mid = limits.args(args, 3, "queue.ack")
        q, mid = self._leased(sid, name, mid)
        self._unlease(q, mid)
        q.remove(mid)
        q.total_acked += 1
        self._flush(ctx)  # the room it leaves in a subscription is filled in this entry
        return True

    def ack_many(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        """``[session, name, [id, ...]]`` -> ``{"acked": n, "unknown": [id, ...]}``. Acks every
        listed message leased to the session; an id that is not (its lease ended, or it was
        acked already) is reported rather than failing the batch: it is, or will be, delivered
        again, exactly as after a single ``ack`` that came too late."""
        sid, name, ids = limits.args(args, 3, "queue.ack_many")
        if not isinstance(ids, list) or not 1 <= len(ids) <= limits.BATCH_MAX:
            reject(BAD_COMMAND, f"ids must be a list of 1..{limits.BATCH_MAX} message ids")
        name = _queue_name(name)
        sid = self._sessions.require(sid)
        q = self._require(name)
        acked, unknown = 0, []
        for mid in dict.fromkeys(_msg_id(raw) for raw in ids):  # an id listed twice acks once
            lease = q.inflight.get(mid)
            if lease is None or lease[0] != sid:
                unknown.append(mid)
                continue
            self._unlease(q, mid)
            q.remove(mid)
            q.total_acked += 1
            acked += 1
        self._flush(ctx)
        return {"acked": acked, "unknown": unknown}

    def nack(self, ctx: Ctx, args: list[Any]) -> bool:
        """``[session, name, id, requeue, delay_ms]`` -> True. ``requeue`` puts it back (after
        ``delay_ms``), or dead-letters it if it has had ``max_deliveries``; ``requeue=False``
        dead-letters it now."""
        sid, name, mid, requeue, delay = limits.args(args, 5, "queue.nack")
        requeue = limits.boolean(requeue, "requeue")
        delay = limits.integer(delay, limits.DELAY_MS, "delay_ms")
        q, mid = self._leased(sid, name, mid)
        self._unlease(q, mid)
        if requeue:
            self._redeliver(ctx, q, mid, delay)
        else:
            self._dead_letter(q, mid, REASON_REJECTED)
        self._flush(ctx)
        return True

    def touch(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        """``[session, name, id, visibility_ms]`` -> ``{"id", "lease_expires_ms"}``: the lease
        now ends ``visibility_ms`` from now (a long-running consumer extends it). A
        session-held lease touched this way gets that deadline."""
        sid, name, mid, visibility = limits.args(args, 4, "queue.touch")
        visibility = limits.integer(visibility, limits.VISIBILITY_MS, "visibility_ms")
        q, mid = self._leased(sid, name, mid)
        lease = q.inflight[mid]
        lease[1] = ctx.now_ms + visibility
        self._deadlines.push(lease[1], ("l", q.name, mid))
        return {"id": mid, "lease_expires_ms": lease[1]}

    def purge(self, ctx: Ctx, args: list[Any]) -> int:
        """``[name]`` -> how many ready and delayed messages were removed (leases stay)."""
        (name,) = limits.args(args, 1, "queue.purge")
        q = self._require(_queue_name(name))
        removed = [*q.clear_ready(), *q.delayed]
        q.delayed = {}
        for mid in removed:
            q.remove(mid)
        return len(removed)

    def delete(self, ctx: Ctx, args: list[Any]) -> bool:
        """``[name]`` -> whether it existed. The queue goes with every message in it (ready,
        delayed, or in flight: those leases just end), its blocked gets fail with
        ``unknown_queue``, and its dedup memory is forgotten; its dead-letter queue stays. What
        kombu's auto-delete queues need (a Celery ``inspect`` call's reply queue)."""
        (name,) = limits.args(args, 1, "queue.delete")
        name = _queue_name(name)
        q = self.queues.pop(name, None)
        if q is None:
            return False
        for token in list(q.waiters):
            self._drop_waiter(token)  # also from the other queues a get_any waits in
            ctx.fail(token, UNKNOWN_QUEUE, f"queue {name!r} was deleted")
        for mid, (sid, _) in q.inflight.items():
            self._forget(self._leases_by_session, sid, (name, mid))
            self.consumers.released(name, mid)
        self._dirty.pop(name, None)
        self._flush(ctx)  # subscriptions that held its messages take from their other queues
        return True  # stale deadlines of its messages are skipped: ids are never reused

    @staticmethod
    def _forget(index: dict[int, dict[Any, None]], sid: int, key: Any) -> None:
        entries = index[sid]
        del entries[key]
        if not entries:
            del index[sid]

    def requeue_dead(self, ctx: Ctx, args: list[Any]) -> int:
        """``[name, max_count]`` -> how many ready messages of ``name.dlq`` moved back to
        ``name`` (in the DLQ's delivery order, ``delivery_count`` reset to 0, stopping when
        ``name`` is full)."""
        name, max_count = limits.args(args, 2, "queue.requeue_dead")
        q = self._require(_queue_name(name))
        max_count = limits.integer(max_count, (1, limits.QUEUE_DEPTH_MAX), "max_count")
        dlq = self.queues.get(name + DLQ_SUFFIX)
        moved = 0
        while dlq is not None and dlq.ready and moved < max_count and len(q.messages) < q.max_depth:
            mid = dlq.pop_ready()
            payload, priority, _, _ = dlq.remove(mid)
            q.messages[mid] = [payload, priority, 0, None]
            q.push_ready(mid)
            moved += 1
        if moved:
            self._dirty[q.name] = None
        self._flush(ctx)
        return moved

    # -- time and sessions ----------------------------------------------------------------------

    def _deadline_of(self, key: tuple[Any, ...]) -> int | None:
        if key[0] == "w":
            waiter = self.waiters.get(key[1])
            return waiter[2] if waiter is not None else None
        q = self.queues.get(key[1])
        if q is None:
            return None
        if key[0] == "d":
            return q.delayed.get(key[2])
        record = (q.inflight if key[0] == "l" else q.dedup).get(key[2])
        return record[1] if record is not None else None

    def next_deadline(self) -> int | None:
        return self._deadlines.next(self._deadline_of)

    def tick(self, ctx: Ctx) -> None:
        now = ctx.now_ms
        for key in self._deadlines.due(now, self._deadline_of):
            kind = key[0]
            if kind == "w":
                self._flush(ctx)  # what became ready before this deadline goes to waiters first
                waiter = self.waiters.get(key[1])
                if waiter is not None and waiter[2] <= now:
                    self._drop_waiter(key[1])
                    ctx.complete(key[1], None if waiter[4] is None else [])
                continue
            q, mid = self.queues[key[1]], key[2]
            if kind == "d":
                at = q.delayed.get(mid)
                if at is not None and at <= now:
                    del q.delayed[mid]
                    q.push_ready(mid)
                    self._dirty[q.name] = None
            elif kind == "l":
                lease = q.inflight.get(mid)
                if lease is not None and lease[1] is not None and lease[1] <= now:
                    self._unlease(q, mid)
                    self._redeliver(ctx, q, mid, 0)
            else:  # "x": mid is the dedup id
                seen = q.dedup.get(mid)
                if seen is not None and seen[1] <= now:
                    del q.dedup[mid]
        self._flush(ctx)

    def session_ended(self, ctx: Ctx, session_id: int) -> None:
        self.consumers.session_ended(session_id)  # first: its subscriptions take nothing back
        for token in sorted(self._waits_by_session.get(session_id, ())):
            queue = self.waiters[token][1]
            self._drop_waiter(token)
            ctx.fail(token, SESSION_EXPIRED, f"session {session_id} ended waiting on {queue!r}")
        for name, mid in sorted(self._leases_by_session.get(session_id, ())):
            q = self.queues[name]
            self._unlease(q, mid)
            self._redeliver(ctx, q, mid, 0)
        self._flush(ctx)

    # -- internals ------------------------------------------------------------------------------

    def _create(self, name: str) -> QueueState:
        q = self.queues[name] = QueueState(name, *_defaults(name))
        return q

    def _require(self, name: str) -> QueueState:
        q = self.queues.get(name)
        if q is None:
            reject(UNKNOWN_QUEUE, f"no queue {name!r} (declare it or put to it first)")
        return q

    def _leased(self, sid: Any, name: Any, mid: Any) -> tuple[QueueState, int]:
        """The queue and id of a message leased to the live session ``sid``, or a rejection."""
        name, mid = _queue_name(name), _msg_id(mid)
        sid = self._sessions.require(sid)
        q = self._require(name)
        lease = q.inflight.get(mid)
        if lease is None or lease[0] != sid:
            reject(UNKNOWN_MESSAGE, f"message {mid} of {name!r} is not leased to session {sid}")
        return q, mid

    def _enqueue(self, q: QueueState, mid: int, now_ms: int, delay: int) -> None:
        if delay > 0:
            q.delayed[mid] = now_ms + delay
            self._deadlines.push(now_ms + delay, ("d", q.name, mid))
        else:
            q.push_ready(mid)
            self._dirty[q.name] = None

    def _lease_batch(
        self, ctx: Ctx, q: QueueState, sid: int, visibility: int | None, count: int | None
    ) -> Any:
        """One leased message (``count`` None: a plain get) or a list of up to ``count``."""
        if count is None:
            return self._lease(ctx, q, sid, visibility)
        batch = []
        while q.ready and len(batch) < count:
            batch.append(self._lease(ctx, q, sid, visibility))
        return batch

    def _lease(self, ctx: Ctx, q: QueueState, sid: int, visibility: int | None) -> dict[str, Any]:
        """Lease the next ready message to ``sid``; ``visibility`` None: session-held."""
        mid = q.pop_ready()
        q.messages[mid][2] += 1
        deadline = None if visibility is None else ctx.now_ms + visibility
        q.inflight[mid] = [sid, deadline]
        self._leases_by_session.setdefault(sid, {})[(q.name, mid)] = None
        if deadline is not None:
            self._deadlines.push(deadline, ("l", q.name, mid))
        return q.view(mid)

    def _lease_to(self, ctx: Ctx, q: QueueState, sub: Subscription) -> dict[str, Any]:
        row = self._lease(ctx, q, sub.session, sub.visibility)
        self.consumers.leased(ctx, sub, row)
        return row

    def _unlease(self, q: QueueState, mid: int) -> None:
        sid = q.inflight.pop(mid)[0]
        self._forget(self._leases_by_session, sid, (q.name, mid))
        self.consumers.released(q.name, mid)

    def _redeliver(self, ctx: Ctx, q: QueueState, mid: int, delay: int) -> None:
        """A message whose lease ended without an ack: back to the queue, or dead-lettered."""
        if q.messages[mid][2] >= q.max_deliveries:
            self._dead_letter(q, mid, REASON_MAX_DELIVERIES)
        else:
            self._enqueue(q, mid, ctx.now_ms, delay)

    def _dead_letter(self, q: QueueState, mid: int, reason: str) -> None:
        payload, priority, count, _ = q.remove(mid)
        q.total_dead_lettered += 1
        if q.is_dlq:
            q.dropped += 1
            return
        dlq_name = q.name + DLQ_SUFFIX
        dlq = self.queues.get(dlq_name) or self._create(dlq_name)
        if len(dlq.messages) >= dlq.max_depth:
            q.dropped += 1
            return
        dead = {"reason": reason, "from_queue": q.name, "delivery_count": count, "original_id": mid}
        dlq.messages[mid] = [payload, priority, 0, dead]
        dlq.push_ready(mid)
        self._dirty[dlq_name] = None

    def _drop_waiter(self, token: int) -> None:
        sid, names = self.waiters.pop(token)[:2]
        for name in names if isinstance(names, list) else [names]:
            q = self.queues.get(name)  # None: the queue is being deleted
            if q is not None:
                del q.waiters[token]
        self._forget(self._waits_by_session, sid, token)

    def _flush(self, ctx: Ctx) -> None:
        """Serve blocked gets of every queue that got ready messages (FIFO among waiters), then
        subscriptions with room (``Consumers.feed``)."""
        dirty, self._dirty = self._dirty, {}
        names = sorted(dirty)
        for name in names:
            q = self.queues[name]
            while q.waiters and q.ready:
                token = next(iter(q.waiters))
                sid, _, _, visibility, count = self.waiters[token]
                self._drop_waiter(token)
                ctx.complete(token, self._lease_batch(ctx, q, sid, visibility, count))
        self.consumers.feed(ctx, names, self.queues)

    def drain_events(self) -> list[tuple[str, Any]]:
        """Deliveries to subscriptions, for their streams' WATCH (``queue_consumers``)."""
        return self.consumers.drain_events()

    # -- snapshots ------------------------------------------------------------------------------

    def to_state(self) -> Any:
        return [
            [q.to_state() for q in self.queues.values()],
            [[token, *waiter] for token, waiter in self.waiters.items()],
            self.consumers.to_state(),
            self.batched_ids,
        ]

    def from_state(self, state: Any) -> None:
        queues, waiters = state[:2]
        self.consumers.from_state(state[2] if len(state) > 2 else None)
        self.batched_ids = bool(state[3]) if len(state) > 3 else False  # before put_many: False
        self.queues = {}
        for row in queues:
            q = QueueState.from_state(row)
            self.queues[q.name] = q
        # Rows of snapshots taken before get_many have no max_count: plain gets.
        self.waiters = {row[0]: [*row[1:6], None][:5] for row in waiters}
        self._leases_by_session, self._waits_by_session, self._dirty = {}, {}, {}
        deadlines: list[tuple[int, Any]] = []
        for q in self.queues.values():
            for mid, at in q.delayed.items():
                deadlines.append((at, ("d", q.name, mid)))
            for mid, (sid, until) in q.inflight.items():
                self._leases_by_session.setdefault(sid, {})[(q.name, mid)] = None
                if until is not None:  # a session-held lease has no deadline
                    deadlines.append((until, ("l", q.name, mid)))
            for dedup_id, (_, expires) in q.dedup.items():
                deadlines.append((expires, ("x", q.name, dedup_id)))
        for token, (sid, _, until, _, _) in self.waiters.items():
            self._waits_by_session.setdefault(sid, {})[token] = None
            deadlines.append((until, ("w", token)))
        self._deadlines.rebuild(deadlines)
