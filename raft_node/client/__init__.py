"""Python clients of a raftsync cluster: ``RaftClient`` (blocking, for Django views and Celery
workers) and ``AsyncRaftClient`` (asyncio, pipelined).

Both keep one authenticated connection, prefer the leader (every response names it), and retry
across leader changes with jittered exponential backoff until the call's deadline. Errors are
typed:

- ``Rejected(code, message)``: the state machine refused the command; retrying will not help.
- ``Timeout``: the deadline passed while the cluster was reachable; the outcome of a write is
  unknown (it may still be applied; a retry with the same client id and sequence number is safe,
  and the client does exactly that inside the deadline).
- ``ClusterUnavailable``: no node could be reached, or no leader was known, until the deadline.
- ``NotLeader``: only raised to callers that disabled retries (``retry=False``).
- ``BadRequest``: the request itself is malformed.

Writes carry ``(client_id, seq)``: each lane (a client id with its own sequence counter) has at
most one write outstanding, so the cluster applies each write once however often it is retried.
``AsyncRaftClient`` keeps a pool of lanes so many coroutines can write concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import ssl as ssl_module
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

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

Address = tuple[str, int]


class RaftError(Exception):
    """Base class of client errors."""


class NotLeader(RaftError):
    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(message)
        self.leader = leader


class Timeout(RaftError):
    pass


class ClusterUnavailable(RaftError):
    pass


class BadRequest(RaftError):
    pass


class AuthenticationFailed(RaftError):
    """The cluster refused our credentials (wrong cluster secret): not retried."""


class Rejected(RaftError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def parse_addresses(spec: str | Iterable[Address] | Iterable[str]) -> list[Address]:
    """Accepts ``"h:p,h:p"``, ``"n1=h:p,..."`` or a list of ``(host, port)`` / ``"h:p"``."""
    items: Iterable[Any] = spec.split(",") if isinstance(spec, str) else spec
    out: list[Address] = []
    for item in items:
        if isinstance(item, tuple):
            out.append((str(item[0]), int(item[1])))
            continue
        text = item.strip()
        if not text:
            continue
        text = text.partition("=")[2] or text
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad address {item!r}: expected host:port")
        out.append((host, int(port)))
    if not out:
        raise ValueError("no cluster addresses given")
    return out


def _address(text: str) -> Address | None:
    host, _, port = text.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def _raise_for(resp: p.Response) -> None:
    if resp.code == p.REJECTED:
        code, _, message = resp.message.partition(": ")
        raise Rejected(code, message)
    if resp.code == p.BAD_REQUEST:
        raise BadRequest(resp.message)


class _Targets:
    """Which node to talk to next: the known leader, else round-robin over the seeds."""

    def __init__(self, seeds: Sequence[Address]) -> None:
        self.seeds = list(seeds)
        self._rotation = itertools.cycle(random.sample(self.seeds, len(self.seeds)))
        self.current: Address = next(self._rotation)

    def leader_is(self, hint: str) -> bool:
        """Switch to ``hint`` if it names another node; True if we switched."""
        addr = _address(hint) if hint else None
        if addr is not None and addr != self.current:
            self.current = addr
            return True
        return False

    def rotate(self) -> None:
        self.current = next(self._rotation)


class _Backoff:
    def __init__(self, first: float = 0.02, cap: float = 0.5) -> None:
        self.delay, self.cap = first, cap

    def next(self) -> float:
        delay = self.delay * (0.5 + random.random())
        self.delay = min(self.delay * 2, self.cap)
        return delay


class _Attempts:
    """The retry policy both clients follow for one call, until its deadline.

    A node that cannot be reached (or answers garbage) is skipped for the next one; a
    ``not_leader``/``unavailable`` answer moves to the leader it names, or the next node; a
    server-side ``timeout`` retries the same node with the same request (a pending blocking
    operation stays pending); a rejection or bad request is raised at once. At the deadline:
    ``Timeout`` if some node was reached (the outcome of a write is unknown), else
    ``ClusterUnavailable``.

    A call may have a deadline far beyond the client's timeout (a blocking get, a cache write
    waiting for L1 holders). That extra time is for a leader to *work* on it, not for finding
    one: after ``patience`` (the client's timeout) with no node reachable or no leader known,
    the call ends early, so a minority partition answers in seconds rather than minutes.
    """

    def __init__(
        self, targets: _Targets, timeout: float, follow_leader: bool, patience: float
    ) -> None:
        self.targets = targets
        self.deadline = time.monotonic() + timeout
        self.follow_leader = follow_leader
        self.patience = min(patience, timeout)
        self.leaderless_since: float | None = None
        self.backoff = _Backoff()
        self.reached = False
        self.last = "no attempt"

    def budget(self) -> float:
        now = time.monotonic()
        if self.leaderless_since is not None and now - self.leaderless_since >= self.patience:
            return 0.0  # no leader for the client's own timeout: stop waiting out a long call
        return self.deadline - now

    def _leaderless(self) -> None:
        if self.leaderless_since is None:
            self.leaderless_since = time.monotonic()

    def unreachable(self, exc: BaseException) -> None:
        self.last = f"{self.targets.current}: {exc!r}"
        self._leaderless()
        self.targets.rotate()

    def no_answer(self) -> bool:
        """The request went out but no answer came in time: True to stop (deadline)."""
        self.last = f"{self.targets.current}: no answer"
        if self.reached:
            return True
        self.targets.rotate()
        return False

    def answered(self, resp: p.Response) -> bool:
        """True if ``resp`` is the result; raises for rejections; else prepares a retry."""
        if resp.ok:
            if self.follow_leader:
                self.targets.leader_is(resp.leader_hint)
            return True
        _raise_for(resp)
        self.last = f"{resp.code}: {resp.message}"
        if resp.code == p.TIMEOUT:
            self.leaderless_since = None  # a leader holds the call (a blocking operation)
        else:
            self._leaderless()
            if not self.targets.leader_is(resp.leader_hint):
                self.targets.rotate()
        return False

    def pause(self) -> float:
        return min(self.backoff.next(), max(0.0, self.budget()))

    def give_up(self) -> RaftError:
        if self.leaderless_since is not None:
            self.last = f"no leader for {self.patience:g} s; last: {self.last}"
        if self.reached:
            return Timeout(f"no result within the deadline (last: {self.last})")
        return ClusterUnavailable(f"no node reachable (last: {self.last})")


# -- asyncio ---------------------------------------------------------------------------------------


class AsyncConnection:
    """One authenticated connection with pipelined requests matched by ``req_id``."""

    def __init__(
        self,
        addr: Address,
        secret: bytes,
        name: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.addr, self._secret, self._name = addr, secret, name
        self._ssl, self._max = ssl, max_frame_bytes
        self._ids = itertools.count(1)
        self._inflight: dict[int, asyncio.Future[p.Response]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self.closed = False

    async def open(self, timeout: float) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*self.addr, ssl=self._ssl), timeout
        )
        try:
            await client_handshake(reader, writer, self._secret, my_id=self._name, timeout=timeout)
        except AuthError as exc:
            writer.close()
            raise AuthenticationFailed(str(exc)) from exc
        except BaseException:
            writer.close()
            raise
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_loop(reader))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, body = await read_frame(reader, self._max)
                if kind != FrameKind.CLIENT_RESPONSE:
                    raise ConnectionError(f"unexpected frame kind {kind}")
                resp = p.parse_response(decode_payload(body))
                fut = self._inflight.pop(resp.req_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(resp)
        except (Exception, asyncio.CancelledError) as exc:
            self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        self.closed = True
        error = ConnectionError(f"connection to {self.addr} lost: {exc!r}")
        for fut in self._inflight.values():
            if not fut.done():
                fut.set_exception(error)
        self._inflight.clear()

    async def request(self, kind: int, fields: Sequence[Any], timeout: float) -> p.Response:
        if self.closed or self._writer is None:
            raise ConnectionError("connection closed")
        req_id = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[p.Response] = loop.create_future()
        self._inflight[req_id] = fut
        body = encode_payload([kind, req_id, *fields])
        # Requests issued in one loop iteration leave in one write; drain only under pressure.
        self._out.append(encode_frame(FrameKind.CLIENT_REQUEST, body, self._max))
        if len(self._out) == 1:
            loop.call_soon(self._flush)
        try:
            if self._writer.transport.get_write_buffer_size() > 1 << 18:
                await self._writer.drain()
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._inflight.pop(req_id, None)

    def _flush(self) -> None:
        if self._writer is not None and not self.closed:
            self._writer.write(b"".join(self._out))
        self._out.clear()

    async def close(self) -> None:
        self.closed = True
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()


class _ClientConfig:
    """What both clients are given: the nodes, the secret, the call timeout, a name (the
    client id of its writes), TLS and the frame limit."""

    def __init__(
        self,
        addresses: str | Iterable[Address] | Iterable[str],
        secret: bytes | str,
        *,
        timeout: float = 5.0,
        name: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self._targets = _Targets(parse_addresses(addresses))
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.timeout = timeout
        self.name = name or f"client-{uuid.uuid4().hex[:12]}"
        self._ssl, self._max = ssl, max_frame_bytes
        self._init_connection_state()

    def _init_connection_state(self) -> None:
        """Each client's own connection and request state."""


class AsyncRaftClient(_ClientConfig):
    def _init_connection_state(self) -> None:
        self._conn: AsyncConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._lanes: list[list[Any]] = []  # free lanes: [client_id, seq]
        self._lane_ids = itertools.count(1)

    async def __aenter__(self) -> AsyncRaftClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # -- public calls ---------------------------------------------------------------------------

    async def propose(self, body: bytes, *, timeout: float | None = None) -> Any:
        """Apply ``body`` through the log exactly once; returns the state machine's result."""
        lane = self._lanes.pop() if self._lanes else [f"{self.name}.{next(self._lane_ids)}", 0]
        lane[1] += 1
        try:
            return await self._call(p.PROPOSE, [lane[0], lane[1], body], timeout)
        finally:
            self._lanes.append(lane)

    async def read(self, query: bytes, *, stale: bool = False, timeout: float | None = None) -> Any:
        """Query the state machine; linearizable (ReadIndex) unless ``stale``."""
        return await self._call(p.READ, [query, stale], timeout)

    async def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Status of the node currently connected to (not necessarily the leader)."""
        return await self._call(p.STATUS, [], timeout, follow_leader=False)

    async def transfer_leadership(self, target: str, *, timeout: float | None = None) -> Any:
        return await self._call(p.TRANSFER, [target], timeout)

    # -- machinery ------------------------------------------------------------------------------

    async def _connection(self, budget: float) -> AsyncConnection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            conn = self._conn
            if conn is not None and not conn.closed and conn.addr == self._targets.current:
                return conn
            if conn is not None:
                await conn.close()
            self._conn = None
            conn = AsyncConnection(
                self._targets.current,
                self._secret,
                self.name,
                ssl=self._ssl,
                max_frame_bytes=self._max,
            )
            await conn.open(min(budget, 2.0))
            self._conn = conn
            return conn

    async def _call(
        self, kind: int, fields: list[Any], timeout: float | None, follow_leader: bool = True
    ) -> Any:
        tries = _Attempts(
            self._targets, self.timeout if timeout is None else timeout, follow_leader, self.timeout
        )
        while (budget := tries.budget()) > 0:
            try:
                conn = await self._connection(budget)
                tries.reached = True
                resp = await conn.request(kind, fields, budget)
            except (OSError, EOFError, asyncio.IncompleteReadError, p.ProtocolError) as exc:
                tries.unreachable(exc)
            except TimeoutError:
                if tries.no_answer():
                    break
            else:
                if tries.answered(resp):
                    return resp.value
            await asyncio.sleep(tries.pause())
        raise tries.give_up()


# -- blocking --------------------------------------------------------------------------------------


class RaftClient(_ClientConfig):
    """Blocking client; thread-safe (calls are serialized on one connection)."""

    def _init_connection_state(self) -> None:
        self.client_id = self.name
        self._seq = 0
        self._sock: socket.socket | None = None
        self._sock_addr: Address | None = None
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def __enter__(self) -> RaftClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def propose(self, body: bytes, *, timeout: float | None = None) -> Any:
        with self._lock:
            self._seq += 1
            return self._call(p.PROPOSE, [self.client_id, self._seq, body], timeout)

    def read(self, query: bytes, *, stale: bool = False, timeout: float | None = None) -> Any:
        with self._lock:
            return self._call(p.READ, [query, stale], timeout)

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        with self._lock:
            return self._call(p.STATUS, [], timeout, follow_leader=False)

    def transfer_leadership(self, target: str, *, timeout: float | None = None) -> Any:
        with self._lock:
            return self._call(p.TRANSFER, [target], timeout)

    def _socket(self, budget: float) -> socket.socket:
        if self._sock is not None and self._sock_addr == self._targets.current:
            return self._sock
        self.close()
        addr = self._targets.current
        sock = socket.create_connection(addr, timeout=min(budget, 2.0))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=addr[0])
            client_handshake_sync(sock, self._secret, my_id=self.client_id, timeout=budget)
        except AuthError as exc:
            sock.close()
            raise AuthenticationFailed(str(exc)) from exc
        except BaseException:
            sock.close()
            raise
        self._sock, self._sock_addr = sock, addr
        return sock

    def _request(
        self, sock: socket.socket, kind: int, fields: list[Any], budget: float
    ) -> p.Response:
        req_id = next(self._ids)
        sock.settimeout(budget)
        send_frame_sync(sock, FrameKind.CLIENT_REQUEST, encode_payload([kind, req_id, *fields]))
        while True:
            frame_kind, body = read_frame_sync(sock, self._max)
            if frame_kind != FrameKind.CLIENT_RESPONSE:
                raise ConnectionError(f"unexpected frame kind {frame_kind}")
            resp = p.parse_response(decode_payload(body))
            if resp.req_id == req_id:
                return resp

    def _call(
        self, kind: int, fields: list[Any], timeout: float | None, follow_leader: bool = True
    ) -> Any:
        tries = _Attempts(
            self._targets, self.timeout if timeout is None else timeout, follow_leader, self.timeout
        )
        while (budget := tries.budget()) > 0:
            try:
                sock = self._socket(budget)
            except (OSError, EOFError) as exc:  # refused, unreachable, connect timeout
                self.close()
                tries.unreachable(exc)
            else:
                tries.reached = True
                try:
                    resp = self._request(sock, kind, fields, budget)
                except TimeoutError:
                    self.close()
                    tries.no_answer()
                    break
                except (OSError, EOFError, p.ProtocolError) as exc:
                    self.close()
                    tries.unreachable(exc)
                else:
                    if tries.answered(resp):
                        return resp.value
            time.sleep(tries.pause())
        raise tries.give_up()


# -- event streams ---------------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Follows a WATCH stream in a background thread, reconnecting on failure.

    ``on_event(index, payload)`` runs for each event in log order; ``on_resync()`` runs after
    every (re)connection, before any event from it, because events published while we were not
    subscribed are lost: the consumer must drop whatever those events would have corrected (an
    L1 cache drops everything). Stop with ``stop()``.
    """

    def __init__(
        self,
        addresses: str | Iterable[Address] | Iterable[str],
        secret: bytes | str,
        topic: str,
        on_event: Any,
        on_resync: Any = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        super().__init__(daemon=True, name=f"raftsync-watch-{topic}")
        self._targets = _Targets(parse_addresses(addresses))
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.topic = topic
        self._on_event, self._on_resync = on_event, on_resync
        self._ssl, self._max = ssl, max_frame_bytes
        self._halt = threading.Event()
        self._sock: socket.socket | None = None
        self.subscribed = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        backoff = _Backoff(cap=1.0)
        while not self._halt.is_set():
            try:
                self._follow()
                backoff = _Backoff(cap=1.0)
            except (OSError, EOFError, AuthError, p.ProtocolError):
                self.subscribed.clear()
                self._targets.rotate()
            if not self._halt.is_set():
                self._halt.wait(backoff.next())

    def _follow(self) -> None:
        addr = self._targets.current
        sock = socket.create_connection(addr, timeout=2.0)
        try:
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=addr[0])
            client_handshake_sync(sock, self._secret, my_id=f"watch-{self.topic}", timeout=2.0)
            self._sock = sock
            sock.settimeout(None)
            body = encode_payload([p.WATCH, 1, self.topic])
            send_frame_sync(sock, FrameKind.CLIENT_REQUEST, body)
            while not self._halt.is_set():
                kind, raw = read_frame_sync(sock, self._max)
                if kind != FrameKind.CLIENT_RESPONSE:
                    raise ConnectionError(f"unexpected frame kind {kind}")
                resp = p.parse_response(decode_payload(raw))
                if not resp.ok:
                    raise ConnectionError(f"watch refused: {resp.code}: {resp.message}")
                tag = resp.value[0]
                if tag == "subscribed":
                    if self._on_resync is not None:
                        self._on_resync()
                    self.subscribed.set()
                elif tag == "event":
                    self._on_event(resp.value[1], resp.value[2])
        finally:
            self._sock = None
            sock.close()
