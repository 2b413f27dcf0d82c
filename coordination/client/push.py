"""Following a push stream: the messages a queue subscription is leased, as they are committed.

    stream = PushStream(coord, "worker-1", on_rows)       # starts a thread; on_rows(rows) there
    sub = coord.run(ops.queue_subscribe(session.id, "worker-1", ["emails"], window=8))
    ...                                                    # rows arrive, each leased to session
    coord.run(ops.queue_ack_many(session.id, "emails", [row["id"], ...]))   # room comes back
    stream.close()

A subscription (``coordination.primitives.queue_consumers``) makes the state machine lease a
message to the consumer in the entry that makes it ready, and record the delivery as an event on
topic ``queue.push.<stream>``. This module follows that topic with the node protocol's WATCH
(leader-served: events are sent when the leader applies the entry, about when the put's own
answer goes out). One stream may carry several subscriptions (a kombu connection's channels);
its events come in log order, so a broadcast committed before a task arrives before it.

**Resuming.** A stream that breaks (the node died or lost leadership, the connection dropped)
is opened again, at the leader. The WATCH replays ``queue.pushed(stream, last_index)`` in the
same step as it subscribes: every message still leased through the stream by an entry after the
last one this client saw. ``PushCursor`` keeps that index (from events, the subscription's
applied index and progress notes) and drops anything at or below it, so across reconnects each
lease is handed out once, none is lost, and a node that is behind (a new leader still applying)
cannot make the stream go back. Leases do not depend on the stream: while it is down they stay
with the session, and the replay brings them.

The protocol logic is sans-I/O (``PushCursor``); ``PushStream`` runs it on a thread with a
blocking socket, the way ``coordination.client.watch.Watch`` runs a watch.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

from coordination.client.watch import Reconnect, raise_refusal, stream_handshake
from coordination.primitives import commands
from coordination.primitives.queue_consumers import PUSH_TOPIC
from raft_node.client import RaftError
from raft_node.client.policy import Backoff, Targets, parse_addresses
from raft_node.transport import client_protocol as p
from raft_node.transport.codec import decode_payload, encode_payload
from raft_node.transport.wire import MAX_FRAME_BYTES, FrameKind, read_frame_sync, send_frame_sync

PROGRESS = 1.0  # seconds without an event after which the node sends a progress note
DEAD_AFTER = 4.0  # seconds of silence after which the connection is presumed dead

Rows = list[dict[str, Any]]


class PushCursor:
    """Where a push stream is: the highest log index it has seen, and the request that resumes
    after it. Turns each response into the rows to hand out (see the module doc)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.last_index = 0  # every lease by an entry up to here has been handed out
        self.options = {"leader": True, "progress_ms": int(PROGRESS * 1000)}

    def request(self) -> bytes:
        replay = commands.queue_pushed(self.stream, self.last_index)
        return encode_payload([p.WATCH, 1, PUSH_TOPIC + self.stream, replay, self.options])

    def on_response(self, resp: p.Response) -> Rows:
        """The rows of one response; raises ``Reconnect`` (resume elsewhere), or the typed error
        of a final refusal."""
        if not resp.ok:
            raise_refusal(resp)
        tag = resp.value[0]
        if tag == "subscribed":
            applied, replay = resp.value[1], resp.value[2]
            rows = [row for row in replay if row["leased_at"] > self.last_index]
            self.last_index = max(self.last_index, applied)  # never back (a node behind us)
            return rows
        if tag == "event":
            index, rows = resp.value[1], resp.value[2]
            if index <= self.last_index:
                return []  # replayed already, or sent again by a node that was behind
            self.last_index = index
            return rows
        if tag == "progress":
            self.last_index = max(self.last_index, resp.value[1])
        return []


class PushStream:
    """Follows one push stream on a daemon thread, reconnecting (to the leader) until closed.

    ``on_rows(rows)`` runs on that thread for every non-empty batch, in log order; keep it
    short (the transport appends to a buffer and wakes its event loop). ``on_error(exc)`` runs
    once if the cluster refuses the stream for good (bad credentials, bad request); the thread
    then ends. ``coord`` gives the addresses, secret, TLS context and name (a ``Coordinator``
    or ``AsyncCoordinator``)."""

    def __init__(
        self,
        coord: Any,
        stream: str,
        on_rows: Callable[[Rows], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.cursor = PushCursor(stream)
        self._coord, self._on_rows, self._on_error = coord, on_rows, on_error
        self._targets = Targets(parse_addresses(coord.addresses))
        self._halt = threading.Event()
        self._sock: socket.socket | None = None
        self.reconnects = 0
        self._live = False  # the current connection has answered
        self.subscribed = threading.Event()  # the current connection is subscribed
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"raftsync-push-{stream}"
        )
        self._thread.start()

    @property
    def stream(self) -> str:
        return self.cursor.stream

    def close(self, timeout: float = 2.0) -> None:
        self._halt.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = Backoff(cap=1.0)
        while not self._halt.is_set():
            self._live = False
            try:
                self._follow()
            except Reconnect as exc:
                if not self._targets.leader_is(exc.hint):
                    self._targets.rotate()
            except (OSError, EOFError, ValueError, p.ProtocolError):
                self._targets.rotate()
            except RaftError as exc:  # final: credentials, a malformed request
                if self._on_error is not None:
                    self._on_error(exc)
                return
            finally:
                self.subscribed.clear()
            self.reconnects += 1
            if self._live:  # it worked for a while: retry at once, with a fresh backoff
                backoff = Backoff(cap=1.0)
            if not self._halt.is_set():
                self._halt.wait(backoff.next())

    def _follow(self) -> None:
        """Follow one connection until it breaks or the stream is closed; raises why."""
        sock = socket.create_connection(self._targets.current, timeout=2.0)
        try:
            sock = stream_handshake(sock, self._coord, self._targets.current, "push")
            self._sock = sock
            if self._halt.is_set():
                return
            send_frame_sync(sock, FrameKind.CLIENT_REQUEST, self.cursor.request())
            sock.settimeout(DEAD_AFTER)
            cursor, on_rows = self.cursor, self._on_rows
            while not self._halt.is_set():
                try:
                    kind, raw = read_frame_sync(sock, MAX_FRAME_BYTES)
                except TimeoutError:
                    raise Reconnect("no event or progress note in time") from None
                if kind != FrameKind.CLIENT_RESPONSE:
                    raise p.ProtocolError(f"unexpected frame kind {kind}")
                rows = cursor.on_response(p.parse_response(decode_payload(raw)))
                self._live = True
                self.subscribed.set()
                if rows:
                    on_rows(rows)
        finally:
            self._sock = None
            sock.close()
