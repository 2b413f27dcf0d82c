"""``raft://``: a kombu transport on the replicated queue, so Celery needs no external broker.

    CELERY_BROKER_URL = "raft://127.0.0.1:7001;raft://127.0.0.1:7002;raft://127.0.0.1:7003"
    CELERY_BROKER_TRANSPORT_OPTIONS = {"session_ttl": 30}

Messages are kombu's JSON envelopes stored in the queue primitive, so every guarantee of the
queue holds: a message is leased to the consuming channel's session for as long as that
session lives; an ack removes it; a worker that dies (or whose session expires: it is not
renewed for ``session_ttl`` seconds, default 30) without acking gets its messages redelivered
with ``delivery_count + 1``; ``basic_reject(requeue=True)`` is a nack. So an ``acks_late`` task
that runs for hours is never delivered a second time while its worker lives (on Redis and SQS
it is, once it outlives ``visibility_timeout``: celery#5935). Setting ``visibility_timeout``
(seconds) bounds each lease as those brokers do, for a consumer that wants a live but stuck
worker's messages back; it is off by default.
Unacked messages are deliberately *not* re-published when a channel closes (kombu's default for
virtual transports): their leases return them, exactly once each.

**Delivery is pushed.** A consuming channel holds a *subscription* in the cluster
(``coordination.primitives.queue_consumers``): its queues and a window, kombu's prefetch count
(``max_fetch``, default 16, when kombu sets none). The entry that makes a message ready (the
put itself, a countdown coming due, a requeue) also leases it to a subscription with room, and
the connection's push stream (``coordination.client.push``, one leader-served WATCH per
connection) brings it, with no get entry and no polling. Acks go out from a background thread
in batches (``queue.ack_many``: while one commits, the next gathers), and each one gives the
subscription its room back, so the next message goes out in the ack's own entry: a busy worker
costs its tasks' puts plus a share of an ack batch. A stream that breaks (leader change,
reconnect) resumes at the leader with a replay of what was leased to it meanwhile; leases never
depend on the stream. Publishing is one ``queue.put`` request and one entry: ``delay()`` returns
once it is committed. With ``transport_options={"confirm_publish": False}`` it returns at once
and a background thread sends the puts in order, batched (``client.put_pipeline``: RabbitMQ's
unconfirmed publishing, with its price: a put that fails afterwards is only logged).

The transport is asynchronous: in a worker's event loop (Celery's ``asynloop``, as with
kombu's Redis transport) the push stream's thread wakes the loop through a file descriptor
(``delivery.Inbox``); a blocking ``drain_events`` (``synloop``, ``SimpleQueue``) waits on the
same descriptor. ``transport_options={"asynchronous": False}`` makes Celery use its blocking
loop instead.

Priorities: Celery's ``priority`` 0..9 maps to the queue's priority 0..9, and **higher is served
first** (as with RabbitMQ; the opposite of kombu's Redis transport); like AMQP's, the order
applies to what is waiting, not to what a worker has already prefetched. ETA and countdown tasks
are stored as delayed messages and handed out only when due (up to 7 days ahead), so a long
countdown is never redelivered while a worker waits on it.

Remote control works (``celery inspect``, ``control.ping``, ``revoke``): bindings are shared
through the cluster as session-held locks (``celery_bindings``), so a broadcast reaches every
live worker's control queue and replies reach the caller's reply queue. Queues consumed with
``no_ack`` (a worker's control queue, reply queues) have their own subscription, and the
messages are acked as they arrive (at most once, as AMQP's ``no_ack``). Both subscriptions of a
connection share its push stream, which carries deliveries in log order: a broadcast committed
before a task (a ``revoke`` sent before its task) reaches the worker before it.

The cluster addresses come from the URL (``;``-separated alternates), or
``transport_options["addresses"]``; a bare ``raft://`` means the ``COORDINATION`` cluster
(``connect``). The secret comes from ``transport_options["secret"]``, else the settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Collection
from datetime import datetime
from queue import Empty
from typing import Any

from kombu.transport import virtual
from kombu.utils.url import maybe_sanitize_url

import coordination.client.operations as ops
from coordination.celery import bindings as celery_bindings
from coordination.celery import connect
from coordination.celery.delivery import AckBatcher, Inbox
from coordination.celery.once import held_key, report_duplicate
from coordination.client.coordinator import Coordinator, Session
from coordination.client.push import PushStream
from coordination.client.put_combiner import combiner_for
from coordination.client.put_pipeline import PutPipeline
from coordination.exceptions import (
    AlreadyQueued,
    NotHolder,
    SessionExpired,
    UnknownMessage,
    UnknownQueue,
    UnknownSession,
)
from coordination.primitives import limits
from coordination.primitives.queue_consumers import WINDOW
from coordination.primitives.queues import MAX_GET_ANY_QUEUES
from raft_node.client import ClusterUnavailable, Timeout

log = logging.getLogger("coordination.celery")
# Best-effort clean-up: the queue or binding may be gone already, or our session with it.
CLEANUP_ERRORS = (UnknownQueue, UnknownSession, SessionExpired, NotHolder)
MAX_ETA = limits.DELAY_MS[1] / 1000  # the queue's longest delayed delivery (7 days)
SESSION_CHECK = 1.0  # seconds a blocking drain waits between checks of the sessions


class Subscription:
    """One of a channel's subscriptions as last sent to the cluster: its id and what it asked
    for (the queues and the window)."""

    __slots__ = ("id", "sent")

    def __init__(self) -> None:
        self.id: int | None = None
        self.sent: tuple[tuple[str, ...], int] | None = None


class Channel(virtual.Channel):
    do_restore = False  # leases bring unacked messages back; re-publishing would duplicate them
    supports_fanout = True  # bindings are shared through the cluster (celery_bindings)

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        options = connection.client.transport_options or {}
        # None: session-held leases (module docstring); a number bounds each lease.
        visibility = options.get("visibility_timeout")
        self.visibility = None if visibility is None else float(visibility)
        # basic_get (kombu's polling Queue.get): a blocking get served by the leader.
        self.wait = float(options.get("polling_wait", 1.0))
        self.coord = _coordinator(connection.client, options)
        self._cluster = (tuple(map(str, self.coord.addresses)), self.coord.secret)  # put_combiner
        self.session: Session = self.coord.session(float(options.get("session_ttl", 30.0)))
        # confirm_publish=False: a publish returns before its put commits (``put_pipeline``).
        confirm = options.get("confirm_publish", True)
        self._pipeline = None if confirm else PutPipeline(self.coord.propose)
        self._leases: dict[str, tuple[str, int]] = {}  # delivery tag -> (queue, message id)
        # The window when kombu sets no prefetch limit, and the most one basic_get leases.
        self.max_fetch = int(options.get("max_fetch", 16))
        # How long a first ack waits for others to share its entry (``AckBatcher``).
        self._acks = AckBatcher(self.coord, self.session, float(options.get("ack_linger", 0.02)))
        # Queues consumed with no_ack (a worker's control queue, a caller's reply queue): their
        # own subscription, acked as they arrive.
        self._no_ack: set[str] = set()
        self._fanout: set[str] = set()  # queues bound to a fanout exchange (broadcasts)
        self._bindings: dict[str, list[Any]] = {}  # queue -> the binding locks this channel holds
        self.tasks_sub, self.no_ack_sub = Subscription(), Subscription()
        # Subscriptions ended while messages they were leased may still be on their way: those
        # go back to the queue when they arrive (not to a consumer, not left to the session).
        self._retired: set[int] = set()

    # -- virtual transport hooks ----------------------------------------------------------------

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self.coord.queue(queue).declare()

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        try:
            self.coord.queue(queue).stats()
        except UnknownQueue:
            return False
        return True

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        priority = message.get("properties", {}).get("priority") or 0
        priority = max(0, min(9, int(priority)))
        headers = message.get("headers") or {}
        delay = eta_delay(headers)
        hold = held_key(headers)  # a @once task: its key is held while the message is queued
        body = json.dumps(message).encode()
        row = ops.put_row(body, priority, None, delay, *(hold or (None, "")))
        if hold is None and self._pipeline is not None:  # confirm_publish=False: do not wait
            self._pipeline.put(queue, row)
            return
        # Puts of this process's other publishing threads, made while one is in flight, share
        # its next entry (``put_combiner``); a lone publisher's put goes out at once.
        result = combiner_for(self._cluster).put(self.coord.propose, queue, row)
        if hold is None:
            return
        # Same tag: this very task's publish retried after its first put landed. Else tell
        # the apply_async hook; with no hook to tell (send_task), raise.
        duplicate = result.duplicate and result.tag != hold[1]
        if duplicate and not report_duplicate(hold[0], result.tag or ""):
            raise AlreadyQueued(hold[0], result.tag or "")

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """kombu's polling get (``Queue.get``, ``basic_get``); consumers are pushed to."""
        try:
            batch = self.coord.queue(queue).get_many(
                1, wait=self.wait, visibility=self.visibility, session=self.session
            )
        except UnknownQueue:
            raise Empty() from None
        if not batch:
            raise Empty()
        return self._to_kombu([_row(msg) for msg in batch])[0][1]

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> None:
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if no_ack:
            self._no_ack.add(queue)
        else:
            self._no_ack.discard(queue)
        self.connection.changed()

    def basic_cancel(self, consumer_tag: str) -> None:
        super().basic_cancel(consumer_tag)
        self._no_ack.intersection_update(self._active_queues)
        if self.connection is not None:
            self.connection.changed()

    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0, *args: Any) -> None:
        super().basic_qos(prefetch_size, prefetch_count, *args)
        self.connection.changed()  # the window follows at the next turn of the loop

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """kombu's ``basic_get``; with ``no_ack`` the message is acked at once (nothing else
        ever would: its lease would run out and deliver it again)."""
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            lease = self._leases.pop(message.delivery_tag, None)
            if lease is not None:
                self._acks.add(*lease)
        return message

    def task_queues(self) -> list[str]:
        """The consumed queues whose messages this channel leases until acked."""
        return [q for q in self._active_queues if q not in self._no_ack]

    def no_ack_queues(self) -> list[str]:
        """The consumed ``no_ack`` queues, fanout-bound ones (broadcasts) first."""
        queues = [q for q in self._active_queues if q in self._no_ack]
        return sorted(queues, key=lambda q: q not in self._fanout)

    def window(self) -> int:
        """How many messages the task subscription may hold: kombu's prefetch count."""
        prefetch = self.qos.prefetch_count or self.max_fetch
        return max(WINDOW[0], min(WINDOW[1], prefetch))

    # -- push subscriptions -------------------------------------------------------------------

    def sync_subscriptions(self, stream: str) -> list[int]:
        """Make this channel's subscriptions in the cluster match what kombu consumes (one
        entry per change: consuming, cancelling, a new prefetch count); their ids."""
        self._acks.flush_at = max(1, self.window() // 2)
        wanted = [
            (self.tasks_sub, self.task_queues(), self.window()),
            (self.no_ack_sub, self.no_ack_queues(), self.max_fetch),
        ]
        for sub, queues, window in wanted:
            want = (tuple(queues[:MAX_GET_ANY_QUEUES]), window) if queues else None
            if want == sub.sent:
                continue
            if want is None:
                assert sub.id is not None
                with contextlib.suppress(*CLEANUP_ERRORS):
                    self.coord.run(ops.queue_unsubscribe(self.session.id, sub.id))
                self._retired.add(sub.id)
                sub.id = None
            else:
                no_ack = sub is self.no_ack_sub
                vis = None if no_ack else self.visibility
                # A no_ack queue has one consumer (a worker's control queue, a reply queue):
                # taking it over leaves nothing to a dead predecessor of the same name.
                op = ops.queue_subscribe(
                    self.session.id, stream, list(want[0]), want[1], vis, sub.id, no_ack
                )
                sub.id = self.coord.run(op)
            sub.sent = want
        return [sub.id for sub in (self.tasks_sub, self.no_ack_sub) if sub.id is not None]

    def consumes(self, row: dict[str, Any]) -> bool:
        """Whether a pushed row is for one of this channel's subscriptions (or ended ones)."""
        sub = row["sub"]
        return sub in (self.tasks_sub.id, self.no_ack_sub.id) or sub in self._retired

    def consumes_now(self, row: dict[str, Any]) -> bool:
        """Whether a row's subscription is a current one: a row of an ended one goes back even
        if its queue is consumed again meanwhile (it was leased under the old terms)."""
        return row["sub"] in (self.tasks_sub.id, self.no_ack_sub.id)

    def from_push(self, row: dict[str, Any]) -> dict[str, Any]:
        """A pushed row as kombu's message; a ``no_ack`` one is acked now."""
        acked = (row["queue"],) if row["sub"] == self.no_ack_sub.id else ()
        return self._to_kombu([row], acked)[0][1]

    def _to_kombu(
        self, rows: list[dict[str, Any]], acked: Collection[str] = ()
    ) -> list[tuple[str, dict[str, Any]]]:
        """(queue, kombu message) per leased row. A message of a queue in ``acked`` (no_ack)
        is acked now; any other's lease is remembered for its ack. A redelivery carries
        ``delivery_info["redelivered"]``, where kombu's transports put it and Celery reads it
        (``Reject(requeue=True)``, ``worker_deduplicate_successful_tasks``)."""
        messages = []
        for row in rows:
            queue, mid = row["queue"], row["id"]
            message = json.loads(row["payload"])
            props = message.setdefault("properties", {})
            if row["delivery_count"] > 1:
                info = props.get("delivery_info")
                if not isinstance(info, dict):
                    info = props["delivery_info"] = {}
                info["redelivered"] = True
                message["redelivered"] = True  # as kombu's virtual ``_restore`` marks it
            if queue in acked:
                self._acks.add(queue, mid)
            else:
                self._leases[props["delivery_tag"]] = (queue, mid)
            messages.append((queue, message))
        return messages

    def give_back(self, message: dict[str, Any]) -> None:
        """A pushed message with no consumer left for it (cancelled meanwhile): requeued."""
        with contextlib.suppress(SessionExpired, UnknownSession):
            self._nack(message["properties"]["delivery_tag"], requeue=True)

    def _nack(self, delivery_tag: str, requeue: bool) -> None:
        """Give a leased message back (or dead-letter it); UnknownMessage: the lease ran out
        first, and it is (or was) delivered again anyway."""
        lease = self._leases.pop(delivery_tag, None)
        if lease is not None:
            with contextlib.suppress(UnknownMessage):
                self.coord.propose_nack(self.session, *lease, requeue=requeue)

    def _size(self, queue: str) -> int:
        try:
            stats = self.coord.queue(queue).stats()
        except UnknownQueue:
            return 0
        return stats["ready"] + stats["delayed"]

    # -- bindings shared through the cluster (fanout, replies to another process's queue) --------

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        lock = celery_bindings.register(self.coord, self.session, exchange, queue, routing_key)
        if lock is not None:
            self._bindings.setdefault(queue, []).append(lock)
        if self.typeof(exchange).type == "fanout":
            self._fanout.add(queue)

    def get_table(self, exchange: str) -> list[tuple[str, str, str]]:
        """This process's bindings, plus the cluster's when they matter: always for a fanout
        exchange, and for another exchange this process has no binding of (a reply queue)."""
        try:
            local = super().get_table(exchange)
        except KeyError:
            local = []
        if local and self.typeof(exchange).type != "fanout":
            return local
        return celery_bindings.merge(local, celery_bindings.bindings(self.coord, exchange))

    def _put_fanout(
        self, exchange: str, message: dict[str, Any], routing_key: str, **kw: Any
    ) -> None:
        for queue in sorted({row[2] for row in self.get_table(exchange)}):
            self._put(queue, message)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        """``queue_delete`` (kombu calls it for a reply queue once the replies are in): the
        queue leaves the cluster, and so do this channel's bindings of it."""
        for lock in self._bindings.pop(queue, []):
            with contextlib.suppress(*CLEANUP_ERRORS):
                lock.release()
        self._fanout.discard(queue)
        with contextlib.suppress(*CLEANUP_ERRORS):
            self.coord.queue(queue).delete()

    def _purge(self, queue: str) -> int:
        try:
            return self.coord.queue(queue).purge()
        except UnknownQueue:
            return 0

    # -- acknowledgements -----------------------------------------------------------------------

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        lease = self._leases.pop(delivery_tag, None)
        if lease is not None:
            self._acks.add(*lease)
        super().basic_ack(delivery_tag, multiple)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._nack(delivery_tag, requeue)
        self.qos._quick_ack(delivery_tag)  # our nack did the requeue: no local re-publish

    def close(self) -> None:
        if self._pipeline is not None:  # puts handed over so far reach the cluster first
            self._pipeline.close(timeout=2 * self.coord.timeout)
        super().close()
        self._acks.close(timeout=2 * self.coord.timeout)  # acks given so far reach the cluster
        self.session.close()  # its subscriptions end; unacked leases come back


class Transport(virtual.Transport):
    Channel = Channel
    default_port = 7001
    driver_type = "raftsync"
    driver_name = "raftsync"
    # kombu keeps the URL whole (``conninfo.hostname``) instead of parsing it into one host:
    # a URL may name several members (``raft://h1:7001,h2:7001``), or none (``raft://``: the
    # COORDINATION cluster), which kombu's clones would otherwise turn into ``localhost``.
    can_parse_url = True
    polling_interval = None  # nothing polls: deliveries are pushed
    # The cluster being unreachable is a connection problem: Celery reconnects, with backoff.
    # So is losing the channel's session (e.g. cut off for longer than its TTL): reconnecting
    # opens a new one and subscribes again.
    connection_errors = (
        *virtual.Transport.connection_errors,
        ClusterUnavailable,
        Timeout,
        OSError,
        SessionExpired,
        UnknownSession,
    )
    implements = virtual.Transport.implements.extend(
        asynchronous=True, exchange_type={"direct", "fanout"}
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = client.transport_options or {}
        if not options.get("asynchronous", True):  # Celery then runs its blocking loop
            self.implements = Transport.implements.extend(asynchronous=False)
        self.inbox = Inbox()
        # One push stream per connection: its channels' deliveries, in log order.
        self.stream_name = f"k{os.getpid()}-{os.urandom(8).hex()}"
        self._stream: PushStream | None = None
        self._stream_error: BaseException | None = None
        self._changed = True  # consumers or prefetch changed: subscriptions to sync
        self._loop: Any = None
        self._lock = threading.Lock()  # one sync at a time (drain_events may run on threads)

    def changed(self) -> None:
        """A channel's consumers or prefetch changed (kombu calls this on the channel's
        ``connection``, which is this transport)."""
        self._changed = True

    # -- delivery -------------------------------------------------------------------------------

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver what has been pushed, waiting up to ``timeout`` for something (else
        ``socket.timeout``, as kombu raises)."""
        start = time.monotonic()
        while True:
            self._prepare()
            if self._deliver_pushed():
                return
            left = None if timeout is None else timeout - (time.monotonic() - start)
            if left is not None and left <= 0:
                raise TimeoutError()
            self.inbox.wait(SESSION_CHECK if left is None else min(left, SESSION_CHECK))

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Worker event loop (``asynloop``): the inbox's descriptor is polled with the rest; each
        turn of the loop first brings the subscriptions up to date."""
        self._loop = loop
        loop.add_reader(self.inbox.fileno(), self._deliver_pushed)
        loop.on_tick.add(self._on_tick)

    def _on_tick(self) -> None:
        if self.inbox.closed:
            return
        self._prepare()

    def _prepare(self) -> None:
        """Subscriptions as kombu consumes, the push stream running; a consuming channel's
        lost session (or a stream refused for good) is a connection error, as in the blocking
        path, so Celery reconnects."""
        if self._stream_error is not None:
            raise self._stream_error
        channels = [ch for ch in self.channels if ch.connection is not None]
        for ch in channels:
            if ch.session.lost and (ch.tasks_sub.id or ch.no_ack_sub.id or ch._consumers):
                raise SessionExpired("session_expired", f"session {ch.session.id} was lost")
        if not self._changed:
            return
        with self._lock:
            self._changed = False
            try:
                subscribed = [
                    sub for ch in channels for sub in ch.sync_subscriptions(self.stream_name)
                ]
            except BaseException:
                self._changed = True
                raise
            if subscribed and self._stream is None:
                self._stream = PushStream(
                    channels[0].coord, self.stream_name, self.inbox.put, self._refused
                )

    def _refused(self, exc: BaseException) -> None:
        self._stream_error = exc
        self.inbox.put([])  # wake the loop: it raises the error

    def _deliver_pushed(self) -> bool:
        """Hand every pushed message to its consumer; whether there was any."""
        rows = self.inbox.take()
        if not rows:
            if self._stream_error is not None:
                raise self._stream_error
            return False
        for i, row in enumerate(rows):
            try:
                self._deliver_row(row)
            except BaseException:
                self.inbox.give_back(rows[i + 1 :])
                raise
        return True

    def _deliver_row(self, row: dict[str, Any]) -> None:
        channel = next((ch for ch in self.channels if ch.consumes(row)), None)
        if channel is None:
            return  # its channel closed: the session's end returns the lease
        message = channel.from_push(row)
        callback = self._callbacks.get(row["queue"])
        if callback is None or not channel.consumes_now(row):
            channel.give_back(message)  # cancelled meanwhile
        else:
            callback(message)

    def close_connection(self, connection: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.inbox.fileno())
            self._loop.on_tick.discard(self._on_tick)
        if self._stream is not None:
            self._stream.close()
        super().close_connection(connection)
        self.inbox.close()

    def driver_version(self) -> str:
        return "2"

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        """The URL as configured (a worker's banner); a bare one says where it leads."""
        if uri.rstrip("/") == "raft:":
            return "raft:// (the COORDINATION cluster)"
        return uri if include_password else maybe_sanitize_url(uri, mask)


def _row(msg: Any) -> dict[str, Any]:
    """A client ``Message`` (``get_many``) as the row shape pushes arrive in."""
    return {
        "queue": msg.queue.name,
        "id": msg.id,
        "payload": msg.payload,
        "delivery_count": msg.delivery_count,
    }


def eta_delay(headers: dict[str, Any], now: float | None = None) -> float:
    """Seconds until a task's ``eta`` (Celery's ``countdown`` is sent as an eta), else 0.

    The queue holds the message as *delayed* until then, so no worker reserves it early. A
    worker holding an ETA task would otherwise keep it leased past ``visibility_timeout`` and
    the cluster would deliver it a second time (the duplicate-ETA problem of Redis brokers).
    A naive eta is local time, as Celery sends it with ``enable_utc = False``.
    """
    eta = headers.get("eta")
    if not eta:
        return 0.0
    try:
        moment = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
        seconds = moment.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"task eta {eta!r} is not an ISO 8601 time") from None
    if seconds > MAX_ETA:
        raise ValueError(f"task eta {eta} is more than {MAX_ETA / 86400:.0f} days away")
    return max(0.0, seconds)


def _coordinator(conninfo: Any, options: dict[str, Any]) -> Coordinator:
    """The channel's coordinator: the members the URL names (``conninfo.alt`` holds kombu's
    ``;``-separated alternates), or the settings' cluster for a bare ``raft://``."""
    urls = list(getattr(conninfo, "alt", None) or []) or [conninfo.hostname]
    return connect.coordinator_for(connect.hosts_from_urls(urls), options)


def register() -> None:
    """Make ``raft://`` URLs resolve to this transport (idempotent). Importing ``coordination``
    already does it; kept for code that called it explicitly."""
    from coordination import register_transport

    register_transport()
