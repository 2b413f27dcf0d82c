"""``coord.watch``: follow cache and lock changes in Raft order, with no gaps, across reconnects.

    with coord.watch("jobs:", since_version=last_seen) as changes:
        for change in changes:              # WatchEvent(version, kind, type, key, value, ...)
            handle(change)
            last_seen = change.version      # persist it to resume after a restart

    async with acoord.watch("jobs:") as changes:  # the asyncio client, the same events
        async for change in changes:
            ...

Every change has a cluster-wide **version** (1, 2, 3...; see
``coordination.primitives.history``). A watch asks a node to replay the retained changes after
its version and then stream new ones; when the connection breaks, the node dies or loses
leadership, or a version is skipped (a follower that installed a snapshot), it reconnects and
resumes after the last version it handled, so each change is seen once, in order. A version
older than the retained history fails with ``WatchCompacted`` naming the oldest one retained.

Which node serves it: the leader by default (events arrive as soon as they are committed).
With ``follower_ok=True`` any node may; a follower's stream is behind the leader's by its
replication lag, and it ends the watch (the client moves on) once it has not heard from a
leader for ``max_lag`` seconds: that is the staleness bound. Silence is told from a dead
connection by the node's progress notes, sent after ``PROGRESS`` seconds without an event.

The protocol logic is sans-I/O (``WatchCursor``); ``Watch`` runs it on a thread and
``AsyncWatch`` on a task, each feeding a bounded queue (a slow consumer slows the socket, not
memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue as queue_module
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from coordination.errors import LIMIT, build, typed
from coordination.primitives import commands, limits
from coordination.primitives.history import MAX_PAGE, TOPIC, matches
from raft_node.client import AuthenticationFailed, ClusterUnavailable, RaftError, Timeout
from raft_node.client.errors import raise_for
from raft_node.client.policy import Backoff, Targets, parse_addresses
from raft_node.transport import client_protocol as p
from raft_node.transport.auth import AuthError, client_handshake, client_handshake_sync
from raft_node.transport.codec import decode_payload, encode_payload
from raft_node.transport.wire import (
    MAX_FRAME_BYTES,
    FrameKind,
    encode_frame,
    read_frame,
    read_frame_sync,
    send_frame_sync,
)

KINDS = frozenset({"cache", "lock"})
PROGRESS = 1.0  # seconds without an event after which the node sends a progress note
DEAD_AFTER = 4.0  # seconds of complete silence after which the connection is presumed dead
DEFAULT_MAX_LAG = 2.0
BUFFER = 10_000  # events read ahead of the consumer
_CLOSED = object()


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change. ``kind`` is ``cache`` (``type``: put, delete, expire, clear) or ``lock``
    (acquired, released); ``index`` and ``time_ms`` are its log entry's index and leader time;
    ``details`` has the key's own version and expiry (cache) or the hold's token, owner, mode
    and session (lock)."""

    version: int
    index: int
    time_ms: int
    kind: str
    type: str
    key: str
    value: bytes | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def token(self) -> int | None:
        """A lock event's fencing token."""
        return self.details.get("token")

    @classmethod
    def from_wire(cls, event: list[Any]) -> WatchEvent:
        return cls(*event[:7], dict(event[7]))


def cursor_for(
    key_or_prefix: str,
    since_version: int | None,
    *,
    exact: bool = False,
    kinds: Any = KINDS,
    follower_ok: bool = False,
    max_lag: float = DEFAULT_MAX_LAG,
) -> WatchCursor:
    """The cursor of ``coord.watch(...)`` (both clients take these arguments)."""
    kinds = frozenset([kinds] if isinstance(kinds, str) else kinds)
    return WatchCursor(
        key_or_prefix,
        since_version,
        exact=exact,
        kinds=kinds,
        follower_ok=follower_ok,
        max_lag=max_lag,
    )


class Reconnect(Exception):
    """Resubscribe (to ``hint`` if it names a node): the stream broke or skipped a version."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.hint = hint


def stream_handshake(sock: socket.socket, coord: Any, addr: Any, role: str) -> socket.socket:
    """TLS (when the coordinator has it) and the client handshake on a stream's own socket
    (a watch, a push stream); answers the socket to use."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if coord.ssl is not None:
        sock = coord.ssl.wrap_socket(sock, server_hostname=addr[0])
    try:
        client_handshake_sync(sock, coord.secret, my_id=f"{coord.name}-{role}", timeout=2.0)
    except AuthError as exc:  # typed, as the clients raise it: a stream ends on it, reported
        sock.close()
        raise AuthenticationFailed(str(exc)) from exc
    return sock


def raise_refusal(resp: p.Response) -> None:
    """A stream's refusal: ``Reconnect`` (resume on another node) for a node that is not (or no
    longer) the one to serve it, else the typed error of a final refusal."""
    if resp.kind in (p.NOT_LEADER, p.UNAVAILABLE, p.TIMEOUT):
        raise Reconnect(f"{resp.kind}: {resp.message}", resp.leader_hint)
    try:
        raise_for(resp)
    except RaftError as exc:
        raise typed(exc) from None


class WatchCursor:
    """What a watch has seen and what it asks for next; turns responses into events."""

    def __init__(
        self,
        prefix: str,
        since_version: int | None,
        *,
        exact: bool = False,
        kinds: frozenset[str] = KINDS,
        follower_ok: bool = False,
        max_lag: float = DEFAULT_MAX_LAG,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError("watch takes a key or prefix string")
        if len(prefix.encode()) > limits.NAME_MAX_BYTES:  # no key could match it
            raise build(LIMIT, f"watch prefix longer than {limits.NAME_MAX_BYTES} bytes")
        if since_version is not None and (
            not isinstance(since_version, int) or isinstance(since_version, bool)
        ):
            raise TypeError("since_version must be an int or None")
        if since_version is not None and since_version < 0:
            raise ValueError("since_version must be >= 0")
        if not kinds or not set(kinds) <= KINDS:
            raise ValueError(f"kinds must be a non-empty subset of {sorted(KINDS)}")
        if max_lag <= 0:
            raise ValueError("max_lag must be positive")
        self.prefix, self.exact, self.kinds = prefix, exact, frozenset(kinds)
        self.version = since_version  # the last version handled (None: not subscribed yet)
        self.options: dict[str, Any] = {"progress_ms": int(PROGRESS * 1000)}
        if follower_ok:
            self.options["max_lag_ms"] = max(1, int(max_lag * 1000))
        else:
            self.options["leader"] = True

    def position(self) -> bytes:
        """The query of the current revision (a linearizable read pins "from now")."""
        return commands.history_since(self.prefix, self.exact, None, 1)

    def request(self) -> bytes:
        replay = commands.history_since(self.prefix, self.exact, self.version, MAX_PAGE)
        return encode_payload([p.WATCH, 1, TOPIC, replay, self.options])

    def on_response(self, resp: p.Response) -> list[WatchEvent]:
        """The events to hand out for one response; raises ``Reconnect``, or the typed error
        of a final refusal (``WatchCompacted``, ``BadRequest``)."""
        if not resp.ok:
            raise_refusal(resp)
        tag = resp.value[0]
        if tag == "subscribed":
            replay = resp.value[2]
            events = replay["events"]
            out = [WatchEvent.from_wire(e) for e in events if e[3] in self.kinds]
            if replay["more"]:  # a page: ask again after it (live events would leave a gap)
                self.version = events[-1][0]
                raise Reconnect("more history to replay", resp.leader_hint) from _Page(out)
            # A node behind us (a lagging follower, a new leader still applying) answers with
            # an older revision: never go back, or its next events would be handed out again.
            self.version = max(self.version or 0, replay["revision"])
            return out
        if tag == "event":
            event = resp.value[2]
            version = event[0]
            assert self.version is not None
            if version <= self.version:
                return []
            if version > self.version + 1:
                raise Reconnect(f"skipped from {self.version} to {version}")
            self.version = version
            if event[3] in self.kinds and matches(event, self.prefix, self.exact):
                return [WatchEvent.from_wire(event)]
        return []  # progress


class _Page(Exception):
    """Carries a page of replayed events out through a ``Reconnect``."""

    def __init__(self, events: list[WatchEvent]) -> None:
        super().__init__(len(events))
        self.events = events


def _handle(cursor: WatchCursor, raw: bytes) -> list[WatchEvent]:
    """Events of one frame body; a ``Reconnect`` carrying a page hands the page out first."""
    return cursor.on_response(p.parse_response(decode_payload(raw)))


def _page_of(exc: Reconnect) -> list[WatchEvent]:
    cause = exc.__cause__
    return cause.events if isinstance(cause, _Page) else []


class Watch:
    """A blocking iterator of ``WatchEvent``; ``get(timeout)`` for a bounded wait. Close it
    (or use ``with``) to stop its thread and connection."""

    def __init__(self, coord: Any, cursor: WatchCursor) -> None:
        if cursor.version is None:  # "from now": the changes after this call, none before
            cursor.version = coord.query(cursor.position())["revision"]
        self.cursor = cursor
        self._coord = coord
        self._targets = Targets(parse_addresses(coord.addresses))
        self._queue: queue_module.Queue[Any] = queue_module.Queue(BUFFER)
        self._halt = threading.Event()
        self._sock: socket.socket | None = None
        self.reconnects = 0
        self.live = False  # the current connection has answered
        self._thread = threading.Thread(target=self._run, daemon=True, name="raftsync-watch")
        self._thread.start()

    @property
    def version(self) -> int | None:
        """The last version the watch has read from the cluster (handed out or filtered)."""
        return self.cursor.version

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        event = self.get(None)
        if event is None:
            raise StopIteration
        return event

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next change; None after ``timeout`` seconds without one, or once closed."""
        if self._halt.is_set() and self._queue.empty():
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue_module.Empty:
            return None
        if item is _CLOSED:
            self._queue.put(_CLOSED)
            return None
        if isinstance(item, BaseException):
            self._queue.put(_CLOSED)
            raise item
        return item

    def close(self) -> None:
        self._halt.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(queue_module.Full):
            self._queue.put_nowait(_CLOSED)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the reader thread ----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(cap=1.0)
        while not self._halt.is_set():
            self.live = False
            try:
                self._follow()
            except Reconnect as exc:
                self._deliver(_page_of(exc))
                if not self._targets.leader_is(exc.hint):
                    self._targets.rotate()
            except (OSError, EOFError, ValueError, p.ProtocolError):
                self._targets.rotate()
            except RaftError as exc:  # final: compacted, bad request, credentials
                self._deliver([exc])
                return
            self.reconnects += 1
            if self.live:  # it worked for a while: retry at once, with a fresh backoff
                backoff = Backoff(cap=1.0)
            if not self._halt.is_set():
                self._halt.wait(backoff.next())
        self._deliver([_CLOSED])

    def _deliver(self, items: list[Any]) -> None:
        """Hand items to the consumer, waiting while its buffer is full (until closed)."""
        for item in items:
            while True:
                try:
                    self._queue.put(item, timeout=0.2)
                    break
                except queue_module.Full:
                    if self._halt.is_set():
                        return

    def _follow(self) -> None:
        sock = socket.create_connection(self._targets.current, timeout=2.0)
        try:
            sock = stream_handshake(sock, self._coord, self._targets.current, "watch")
            self._sock = sock
            if self._halt.is_set():
                return
            send_frame_sync(sock, FrameKind.CLIENT_REQUEST, self.cursor.request())
            sock.settimeout(DEAD_AFTER)
            while not self._halt.is_set():
                try:
                    kind, raw = read_frame_sync(sock, MAX_FRAME_BYTES)
                except TimeoutError:
                    raise Reconnect("no event or progress note in time") from None
                if kind != FrameKind.CLIENT_RESPONSE:
                    raise p.ProtocolError(f"unexpected frame kind {kind}")
                self._deliver(_handle(self.cursor, raw))
                self.live = True
        finally:
            self._sock = None
            sock.close()


class AsyncWatch:
    """The asyncio twin of ``Watch``: ``async for``, ``await get(timeout)``, ``aclose()``."""

    def __init__(self, coord: Any, cursor: WatchCursor) -> None:
        self.cursor = cursor
        self._coord = coord
        self._targets = Targets(parse_addresses(coord.addresses))
        self._queue: asyncio.Queue[Any] = asyncio.Queue(BUFFER)
        self._pinned = asyncio.Event()  # the starting version is known
        self._closed = False
        self.reconnects = 0
        self.live = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def version(self) -> int | None:
        return self.cursor.version

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        event = await self.get(None)
        if event is None:
            raise StopAsyncIteration
        return event

    async def get(self, timeout: float | None = None) -> WatchEvent | None:
        if self._closed and self._queue.empty():
            return None
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if item is _CLOSED:
            self._closed = True
            return None
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        return item

    async def aclose(self) -> None:
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aenter__(self) -> AsyncWatch:
        """Wait until the starting version is pinned: with ``since_version=None``, changes made
        after ``async with`` entered are all seen."""
        await self.started()
        return self

    async def started(self) -> None:
        await self._pinned.wait()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _pin(self) -> None:
        backoff = Backoff(cap=1.0)
        while self.cursor.version is None:
            try:
                self.cursor.version = (await self._coord.query(self.cursor.position()))["revision"]
            except (ClusterUnavailable, Timeout):
                await asyncio.sleep(backoff.next())
        self._pinned.set()

    async def _run(self) -> None:
        await self._pin()
        backoff = Backoff(cap=1.0)
        while True:
            self.live = False
            try:
                await self._follow()
            except Reconnect as exc:
                for event in _page_of(exc):
                    await self._queue.put(event)
                if not self._targets.leader_is(exc.hint):
                    self._targets.rotate()
            except (OSError, EOFError, ValueError, p.ProtocolError):
                self._targets.rotate()
            except RaftError as exc:
                await self._queue.put(exc)
                return
            self.reconnects += 1
            if self.live:
                backoff = Backoff(cap=1.0)
            await asyncio.sleep(backoff.next())

    async def _follow(self) -> None:
        coord, addr = self._coord, self._targets.current
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr, ssl=coord.ssl), 2.0)
        try:
            await client_handshake(
                reader, writer, coord.secret, my_id=f"{coord.name}-watch", timeout=2.0
            )
            writer.write(encode_frame(FrameKind.CLIENT_REQUEST, self.cursor.request()))
            while True:
                try:
                    async with asyncio.timeout(DEAD_AFTER):
                        kind, raw = await read_frame(reader, MAX_FRAME_BYTES)
                except TimeoutError:
                    raise Reconnect("no event or progress note in time") from None
                if kind != FrameKind.CLIENT_RESPONSE:
                    raise p.ProtocolError(f"unexpected frame kind {kind}")
                for event in _handle(self.cursor, raw):
                    await self._queue.put(event)
                self.live = True
        finally:
            writer.close()
