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

A fetch leases as many messages as the consumer has prefetch room for (``queue.get_many``,
at most ``max_fetch``, default 16) in one log entry, and acks are sent from a background thread
in batches (``queue.ack_many``: while one commits, the next gathers), so a busy worker costs
about one entry per several tasks on top of each task's put.

An empty queue is not polled: each fetch is a blocking get served by the leader for up to
``polling_wait`` seconds (default 1), so an idle worker costs about two log entries per second
(the get, and the tick that ends its wait) instead of a stream of empty polls.

Priorities: Celery's ``priority`` 0..9 maps to the queue's priority 0..9, and **higher is served
first** (as with RabbitMQ; the opposite of kombu's Redis transport). ETA and countdown tasks
are stored as delayed messages and handed out only when due (up to 7 days ahead), so a long
countdown is never redelivered while a worker waits on it.

Remote control works (``celery inspect``, ``control.ping``, ``revoke``): bindings are shared
through the cluster as session-held locks (``celery_bindings``), so a broadcast reaches every
live worker's control queue and replies reach the caller's reply queue.

Broadcasts are pushed, like tasks: one blocking ``queue.get_any`` per wait covers the queues
every channel of the connection consumes with ``no_ack`` (a worker's control queue, listed
first, and reply queues) together with the task queues of the channel that has prefetch room.
So a broadcast wakes a waiting worker at once, and one committed before a task (a ``revoke``
sent before the task) is delivered before it: the leader serves the first listed queue with a
message. While every task channel's prefetch window is full (no task can be fetched) the
``no_ack`` queues are checked without blocking, at most every ``broadcast_poll_interval``
seconds (default 0.5): a wait there would hold up the next fetch when a slot frees.
``no_ack`` messages are acked as they are fetched (at most once, as AMQP's ``no_ack``), so a
control message is never delivered again when its lease would have run out.

The cluster addresses come from the URL (``;``-separated alternates), or
``transport_options["addresses"]``; a bare ``raft://`` means the ``COORDINATION`` cluster
(``connect``). The secret comes from ``transport_options["secret"]``, else the settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Collection
from datetime import datetime
from queue import Empty
from typing import Any

from kombu.transport import virtual
from kombu.utils.url import maybe_sanitize_url

from coordination.celery import bindings as celery_bindings
from coordination.celery import connect
from coordination.celery.once import held_key, report_duplicate
from coordination.client.coordinator import Coordinator, Session
from coordination.exceptions import (
    AlreadyQueued,
    NotHolder,
    SessionExpired,
    UnknownMessage,
    UnknownQueue,
    UnknownSession,
)
from coordination.primitives import limits
from coordination.primitives.queues import MAX_GET_ANY_QUEUES
from raft_node.client import ClusterUnavailable, Timeout

log = logging.getLogger("coordination.celery")
# Best-effort clean-up: the queue or binding may be gone already, or our session with it.
CLEANUP_ERRORS = (UnknownQueue, UnknownSession, SessionExpired, NotHolder)
MAX_ETA = limits.DELAY_MS[1] / 1000  # the queue's longest delayed delivery (7 days)


class Channel(virtual.Channel):
    do_restore = False  # leases bring unacked messages back; re-publishing would duplicate them
    supports_fanout = True  # bindings are shared through the cluster (celery_bindings)

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        options = connection.client.transport_options or {}
        # None: session-held leases (module docstring); a number bounds each lease.
        visibility = options.get("visibility_timeout")
        self.visibility = None if visibility is None else float(visibility)
        # A get is a log entry (it leases): wait for a message on the leader rather than poll.
        self.wait = float(options.get("polling_wait", 1.0))
        self.coord = _coordinator(connection.client, options)
        self.session: Session = self.coord.session(float(options.get("session_ttl", 30.0)))
        self._leases: dict[str, tuple[str, int]] = {}  # delivery tag -> (queue, message id)
        # Most messages a fetch leases at once (never more than kombu's prefetch room).
        self.max_fetch = int(options.get("max_fetch", 16))
        self._acks = AckBatcher(self.coord, self.session)
        # Queues consumed with no_ack (a worker's control queue, a caller's reply queue): acked
        # when fetched, so any channel of the connection may fetch them (Transport.drain_events
        # waits on them together with the task queues).
        self._no_ack: set[str] = set()
        self._fanout: set[str] = set()  # queues bound to a fanout exchange (broadcasts)
        self._bindings: dict[str, list[Any]] = {}  # queue -> the binding locks this channel holds
        self._turn = 0  # rotates the order get_any tries the consumed queues in

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
        if hold is None:
            self.coord.queue(queue).put(body, priority=priority, delay=delay)
            return
        put = self.coord.queue(queue).put
        result = put(body, priority=priority, delay=delay, hold_key=hold[0], tag=hold[1])
        # Same tag: this very task's publish retried after its first put landed. Else tell
        # the apply_async hook; with no hook to tell (send_task), raise.
        duplicate = result.duplicate and result.tag != hold[1]
        if duplicate and not report_duplicate(hold[0], result.tag or ""):
            raise AlreadyQueued(hold[0], result.tag or "")

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        return self._fetch(queue, 1)[0][1]

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> None:
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if no_ack:
            self._no_ack.add(queue)
        else:
            self._no_ack.discard(queue)

    def basic_cancel(self, consumer_tag: str) -> None:
        super().basic_cancel(consumer_tag)
        self._no_ack.intersection_update(self._active_queues)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """kombu's ``basic_get``; with ``no_ack`` the message is acked at once (nothing else
        ever would: its lease would run out and deliver it again)."""
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            lease = self._leases.pop(message.delivery_tag, None)
            if lease is not None:
                self._acks.add(*lease)
        return message

    def shared_queues(self) -> list[str]:
        """The consumed queues any channel of the connection may fetch (``no_ack``: acked when
        fetched), fanout-bound ones (broadcasts) first."""
        queues = [q for q in self._active_queues if q in self._no_ack]
        return sorted(queues, key=lambda q: q not in self._fanout)

    def task_queues(self) -> list[str]:
        """The consumed queues whose messages this channel leases until acked."""
        return [q for q in self._active_queues if q not in self._no_ack]

    def _poll(self, cycle: Any, callback: Any, timeout: float | None = None) -> None:
        """kombu's per-channel drain (``Channel.drain_events``): the connection-wide wait of
        ``Transport.drain_events`` restricted to this channel's queues."""
        self.wait_and_deliver(self.shared_queues(), self.wait, callback)

    def wait_and_deliver(
        self, shared: list[str], wait: float, callback: Any, *, take: bool = True
    ) -> None:
        """One ``queue.get_any`` over ``shared`` (no_ack queues of any channel, listed first so
        a broadcast is served before a task committed after it) and, with ``take``, this
        channel's task queues (rotated each time for fairness; a worker of ``-Q a,b`` does not
        wait out an empty ``a`` before looking at ``b``). Blocks up to ``wait`` seconds at the
        leader; ``Empty`` if nothing came."""
        tasks = self.task_queues() if take else []
        if len(tasks) > 1:
            self._turn = (self._turn + 1) % len(tasks)
            tasks = tasks[self._turn :] + tasks[: self._turn]
        queues = list(dict.fromkeys(shared + tasks))[:MAX_GET_ANY_QUEUES]
        if not queues:
            raise Empty()
        try:
            batch = self.coord.get_any(
                queues,
                self._room() if tasks else self.max_fetch,
                wait=wait,
                visibility=self.visibility,
                session=self.session,
            )
        except UnknownQueue:
            raise Empty() from None
        self._deliver(self._to_kombu(batch, set(shared)), callback)

    def _room(self) -> int:
        room = self.qos.can_consume_max_estimate()  # None: no prefetch limit
        return max(1, min(self.max_fetch, self.max_fetch if room is None else room))

    def _deliver(self, batch: list[tuple[str, dict[str, Any]]], callback: Any) -> None:
        for i, (queue, message) in enumerate(batch):
            try:
                callback(message, queue)
            except BaseException:
                for _, rest in batch[i + 1 :]:  # leased but never handed over: give them back
                    with contextlib.suppress(SessionExpired, UnknownSession):
                        self._nack(rest["properties"]["delivery_tag"], requeue=True)
                raise

    def _fetch(self, queue: str, count: int) -> list[tuple[str, dict[str, Any]]]:
        try:
            batch = self.coord.queue(queue).get_many(
                count, wait=self.wait, visibility=self.visibility, session=self.session
            )
        except UnknownQueue:
            raise Empty() from None
        return self._to_kombu(batch)

    def _to_kombu(
        self, batch: list[Any], acked: Collection[str] = ()
    ) -> list[tuple[str, dict[str, Any]]]:
        """(queue, kombu message) per leased message. A message of a queue in ``acked`` (no_ack)
        is acked now; any other's lease is remembered for its ack. A redelivery carries
        ``delivery_info["redelivered"]``, where kombu's transports put it and Celery reads it
        (``Reject(requeue=True)``, ``worker_deduplicate_successful_tasks``)."""
        if not batch:
            raise Empty()
        messages = []
        for msg in batch:
            message = json.loads(msg.payload)
            props = message.setdefault("properties", {})
            if msg.delivery_count > 1:
                info = props.get("delivery_info")
                if not isinstance(info, dict):
                    info = props["delivery_info"] = {}
                info["redelivered"] = True
                message["redelivered"] = True  # as kombu's virtual ``_restore`` marks it
            if msg.queue.name in acked:
                self._acks.add(msg.queue.name, msg.id)
            else:
                self._leases[props["delivery_tag"]] = (msg.queue.name, msg.id)
            messages.append((msg.queue.name, message))
        return messages

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
        super().close()
        self._acks.close(timeout=2 * self.coord.timeout)  # acks given so far reach the cluster
        self.session.close()  # leases of anything still unacked expire and redeliver


class AckBatcher:
    """Acks go to the cluster from a background thread, batched: while one ``ack_many`` entry
    commits, the acks that arrive meanwhile gather for the next (group commit). The worker never
    waits for an ack, and a busy worker pays about one entry per several tasks instead of one
    per task. An ack is a promise that may still be lost (a crash before it commits): the
    message is then delivered again, which ``acks_late`` already allows for.
    """

    def __init__(self, coord: Coordinator, session: Session) -> None:
        self.coord, self.session = coord, session
        self._pending: dict[str, list[int]] = {}
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, queue: str, msg_id: int) -> None:
        with self._cv:
            self._pending.setdefault(queue, []).append(msg_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name=f"raftsync-acks-{self.session.id}"
                )
                self._thread.start()
            self._cv.notify()

    def close(self, timeout: float) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, {}
            for queue, ids in batch.items():
                for start in range(0, len(ids), limits.BATCH_MAX):
                    self._send(queue, ids[start : start + limits.BATCH_MAX])

    def _send(self, queue: str, ids: list[int]) -> None:
        try:
            self.coord.propose_ack_many(self.session, queue, ids)
        except (SessionExpired, UnknownSession, UnknownQueue):
            pass  # the leases ended with the session: those messages are delivered again
        except (ClusterUnavailable, Timeout) as exc:
            log.warning("event=acks_not_sent queue=%s count=%d error=%s", queue, len(ids), exc)


class Transport(virtual.Transport):
    Channel = Channel
    default_port = 7001
    driver_type = "raftsync"
    driver_name = "raftsync"
    # kombu keeps the URL whole (``conninfo.hostname``) instead of parsing it into one host:
    # a URL may name several members (``raft://h1:7001,h2:7001``), or none (``raft://``: the
    # COORDINATION cluster), which kombu's clones would otherwise turn into ``localhost``.
    can_parse_url = True
    # The blocking get is the wait for messages; this short sleep only paces the loop while
    # the consumer's prefetch window is full (kombu does not fetch then, and would spin).
    polling_interval = 0.001
    # The cluster being unreachable is a connection problem: Celery reconnects, with backoff.
    # So is losing the channel's session (e.g. cut off for longer than its TTL): reconnecting
    # opens a new one and binds again.
    connection_errors = (
        *virtual.Transport.connection_errors,
        ClusterUnavailable,
        Timeout,
        OSError,
        SessionExpired,
        UnknownSession,
    )
    implements = virtual.Transport.implements.extend(
        asynchronous=False, exchange_type={"direct", "fanout"}
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = client.transport_options or {}
        self.broadcast_poll = float(options.get("broadcast_poll_interval", 0.5))
        self._next_shared_check = 0.0  # when the no_ack queues are next checked, windows full
        self._turn = 0  # rotates which channel with prefetch room waits (several task channels)

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver what the next wait brings, else ``socket.timeout`` once ``timeout`` ran out.

        kombu's virtual transport drains channels in turn, each with its own wait: a worker's
        control channel waited (or was polled) apart from its task channel, so a ``revoke``
        sent before a task could reach the worker after it. Here one wait covers both (see
        ``Channel.wait_and_deliver``): the ``no_ack`` queues of every channel, broadcasts
        first, then the task queues of one channel with prefetch room (rotating among such
        channels). With no room anywhere, the ``no_ack`` queues are checked without blocking,
        at most every ``broadcast_poll_interval``; with no task consumer at all (a caller
        collecting replies) the wait is on them alone.
        """
        start = time.monotonic()
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - start)
            try:
                return self._drain_once(left)
            except Empty:
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise TimeoutError() from None  # socket.timeout, as kombu raises
                time.sleep(self.polling_interval)

    def _drain_once(self, left: float | None) -> None:
        channels = [ch for ch in self.channels if ch.connection is not None and ch._consumers]
        shared = list(dict.fromkeys(q for ch in channels for q in ch.shared_queues()))
        fanout = {q for ch in channels for q in ch._fanout}
        shared.sort(key=lambda q: q not in fanout)  # broadcasts before replies
        takers = [ch for ch in channels if ch.task_queues() and ch.qos.can_consume()]
        if takers:
            self._turn = (self._turn + 1) % len(takers)
            channel = takers[self._turn]
            return channel.wait_and_deliver(shared, _wait(channel.wait, left), self._deliver)
        if not shared:
            raise Empty()
        owner = next(ch for ch in channels if ch.shared_queues())
        wait = _wait(owner.wait, left)
        if any(ch.task_queues() for ch in channels):  # every prefetch window is full
            now = time.monotonic()
            if now < self._next_shared_check:
                raise Empty()
            self._next_shared_check = now + self.broadcast_poll
            wait = 0.0
        owner.wait_and_deliver(shared, wait, self._deliver, take=False)

    def driver_version(self) -> str:
        return "1"

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        """The URL as configured (a worker's banner); a bare one says where it leads."""
        if uri.rstrip("/") == "raft:":
            return "raft:// (the COORDINATION cluster)"
        return uri if include_password else maybe_sanitize_url(uri, mask)


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


def _wait(wait: float, left: float | None) -> float:
    """The blocking wait of one get: the channel's ``polling_wait``, cut to what is left of
    the caller's ``drain_events`` timeout."""
    return wait if left is None else max(0.0, min(wait, left))
