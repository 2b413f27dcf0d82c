"""``FrameChannel``: the frames of an authenticated stream connection, delivered by callback.

A connection starts on asyncio streams, because the TLS start and the HMAC handshake
(``raft_node.transport.auth``) are naturally written as awaits. Once it is authenticated, its
reading moves to this protocol: every socket read is decoded in the transport's
``data_received`` and each frame goes straight to a handler. With a ``StreamReader`` the same
read went through a buffer, a future, a task wake-up one loop pass later and an async
generator before the first frame was looked at; on every hop of a replicated write (the
client's request, the follower's append, the leader's acks, the client's answer) that was
10-20 µs of a single-client write's latency, and as much CPU per hop.

The ``StreamWriter`` of the connection stays as it was: this protocol forwards flow control
(``pause_writing``/``resume_writing``), ``eof_received`` and ``connection_lost`` to the
streams protocol it replaced, so ``drain``, ``close`` and ``wait_closed`` work unchanged.

A handler may return an awaitable: the channel then stops delivering (and reading) until it
completes, so frames are still handled strictly in order (a snapshot's last chunk is read off
the loop before the next frame is looked at; a client over its in-flight limit waits for a
slot). Anything the handler raises ends the channel with that exception, as does a bad frame
(``FrameError``), a frame that has started to arrive but is not complete ``frame_timeout``
seconds later (``FrameError``), or no byte for ``idle_timeout`` seconds between frames
(``TimeoutError``). ``done`` holds the outcome: ``None`` for a clean close between frames, the
exception otherwise; the owner awaits it and closes the writer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from raft_node.transport.wire import MAX_FRAME_BYTES, FrameDecoder, FrameError

__all__ = ["FrameChannel", "FrameHandler"]

FrameHandler = Callable[[int, bytes], "Awaitable[Any] | None"]


class FrameChannel(asyncio.Protocol):
    """Reads frames by callback; see the module docstring."""

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        streams: asyncio.BaseProtocol,
        on_frame: FrameHandler,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        frame_timeout: float = 30.0,
        idle_timeout: float | None = None,
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._streams = streams
        self._on_frame = on_frame
        self._on_batch = on_batch
        self._decoder = FrameDecoder(max_frame_bytes)
        self._loop = asyncio.get_running_loop()
        self._frame_timeout = frame_timeout
        self._idle_timeout = idle_timeout
        self._frame_due: float | None = None  # while mid-frame: it must be complete by then
        self._last_read = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._backlog: deque[tuple[int, bytes]] = deque()
        self._blocked = False  # a handler's awaitable is running: deliver nothing meanwhile
        self._eof = False
        self.done: asyncio.Future[None] = self._loop.create_future()
        # Its owner may be cancelled (a stopping node) before a late failure lands here.
        self.done.add_done_callback(_retrieve)
        if idle_timeout is not None:
            self._arm(self._last_read + idle_timeout)

    @classmethod
    def attach(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_frame: FrameHandler,
        **options: Any,
    ) -> FrameChannel:
        """Take over ``writer``'s connection from the streams protocol: bytes ``reader`` already
        buffered (a peer may send its first frames right behind the handshake) are delivered
        first, then everything the socket reads."""
        transport = writer.transport
        channel = cls(transport, transport.get_protocol(), on_frame, **options)
        buffered = getattr(reader, "_buffer", None)  # CPython's StreamReader keeps a bytearray
        leftover = bytes(buffered) if buffered else b""
        if buffered:
            buffered.clear()
        paused = getattr(reader, "_paused", False)  # its flow control stopped the socket
        transport.set_protocol(channel)
        if paused:
            reader._paused = False  # type: ignore[attr-defined]
            transport.resume_reading()  # type: ignore[attr-defined]
        if leftover:
            channel.data_received(leftover)
        failed = reader.exception()
        if failed is not None:
            channel.connection_lost(failed)
        elif reader.at_eof():
            channel._end_of_stream()
        return channel

    # -- the transport's callbacks --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            self._fail(exc)
            return
        if self._idle_timeout is not None or self._decoder.pending or self._frame_due is not None:
            self._track(bool(frames))
        if frames:
            self._backlog.extend(frames)
            if not self._blocked:
                self._drain()

    def eof_received(self) -> bool | None:
        keep_open = self._streams.eof_received()  # type: ignore[attr-defined]
        self._eof = True
        if not self._blocked:
            self._end_of_stream()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._streams.connection_lost(exc)
        if exc is not None:
            self._fail(exc)
        else:
            self._end_of_stream()

    def pause_writing(self) -> None:
        self._streams.pause_writing()

    def resume_writing(self) -> None:
        self._streams.resume_writing()

    # -- delivering -----------------------------------------------------------------------------

    def _drain(self) -> bool:
        """Hand the waiting frames to the handler in order, until one returns an awaitable: the
        rest wait, and reading pauses, until it completes. True when none is left waiting."""
        backlog, on_frame = self._backlog, self._on_frame
        while backlog:
            kind, body = backlog.popleft()
            try:
                pending = on_frame(kind, body)
            except Exception as exc:
                self._fail(exc)
                return False
            if self.done.done():
                return False
            if pending is not None:
                self._block(pending)
                return False
        self._batch_done()
        return True

    def _block(self, pending: Awaitable[Any]) -> None:
        self._blocked = True
        self._pause()
        task = asyncio.ensure_future(pending)
        task.add_done_callback(self._unblock)

    def _unblock(self, task: asyncio.Future[Any]) -> None:
        self._blocked = False
        exc = None if task.cancelled() else task.exception()  # retrieved even if ended
        if self.done.done():
            return
        if task.cancelled():
            self._fail(asyncio.CancelledError())
        elif exc is not None:
            self._fail(exc)
        elif self._drain():
            if self._eof:
                self._end_of_stream()
            else:
                self._last_read = self._loop.time()  # waiting for a handler is not idling
                self._resume()

    def _batch_done(self) -> None:
        if self._on_batch is not None:
            self._on_batch()

    def _pause(self) -> None:
        pause = getattr(self._transport, "pause_reading", None)
        if pause is not None and not self._transport.is_closing():
            pause()

    def _resume(self) -> None:
        resume = getattr(self._transport, "resume_reading", None)
        if resume is not None and not self._transport.is_closing():
            resume()

    # -- ending -----------------------------------------------------------------------------------

    def _end_of_stream(self) -> None:
        if self._decoder.pending:
            self._fail(FrameError("connection closed inside a frame"))
        elif not self.done.done():
            self._cancel_timer()
            self.done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._cancel_timer()
        self._backlog.clear()
        if not self.done.done():
            self.done.set_exception(exc)
            self._pause()

    # -- timeouts -------------------------------------------------------------------------------

    def _track(self, completed: bool) -> None:
        """After a read: a frame that has started must complete within ``frame_timeout`` (the
        clock restarts whenever one completes), and the idle clock restarts."""
        now = self._loop.time()
        if self._idle_timeout is not None:
            self._last_read = now
        if not self._decoder.pending:
            self._frame_due = None
        elif completed or self._frame_due is None:
            self._frame_due = now + self._frame_timeout
            self._arm(self._frame_due)

    def _arm(self, when: float) -> None:
        """One timer per connection, moved only earlier: a read reschedules nothing."""
        timer = self._timer
        if timer is None or when < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(when, self._check_timeouts)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeouts(self) -> None:
        self._timer = None
        if self.done.done():
            return
        now = self._loop.time()
        if self._blocked:  # a waiting handler is not the peer's silence: look again later
            self._arm(now + min(self._frame_timeout, self._idle_timeout or self._frame_timeout))
        elif self._frame_due is not None:
            if now >= self._frame_due:
                self._fail(FrameError(f"frame not completed within {self._frame_timeout} s"))
                return
            self._arm(self._frame_due)
        elif self._idle_timeout is not None:
            idle_due = self._last_read + self._idle_timeout
            if now >= idle_due:
                self._fail(TimeoutError(f"idle for {self._idle_timeout} s"))
                return
            self._arm(idle_due)


def _retrieve(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()
