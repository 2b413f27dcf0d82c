"""Framing: how codec payloads travel on a byte stream (TCP, optionally inside TLS).

A frame is::

    +----------------------+---------+------+----------------------+
    | length: u32 big-end. | version | kind | body (length-2 bytes) |
    +----------------------+---------+------+----------------------+

``length`` counts version + kind + body and is checked against the receiver's
``max_frame_bytes`` *before* any body byte is read or buffered, so a hostile 4 GiB length costs
the receiver nothing but the 4 header bytes. ``version`` is ``VERSION`` (1); an unknown version
or kind is a ``FrameError`` and the connection is closed (a future version would be negotiated in
the handshake, whose frames are version 1 forever).

Kinds 1-7 carry Raft messages, client requests/responses and the handshake. Kinds 8-11 carry a
snapshot streamed over a peer connection in chunks (``SNAP_BEGIN``, N x ``SNAP_CHUNK``,
``SNAP_END``, answered by one ``SNAP_ACK``; see ``raft_node.transport.snapstream``), so no frame
ever has to hold a whole state machine image.

Three ways to read frames, all enforcing the same checks:

- ``FrameDecoder``: sans-I/O incremental parser (feed bytes, get frames). The transport uses it to
  parse many small frames out of one socket read.
- ``read_frame(reader, max)``: one frame from an ``asyncio.StreamReader``.
- ``frame_batches(reader, max, ...)``: every frame from an ``asyncio.StreamReader``, in batches
  (one per socket read), with a per-frame and an optional idle timeout.
- ``read_frame_sync(sock, max)``: one frame from a blocking socket (the sync client).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from enum import IntEnum

__all__ = [
    "MAX_FRAME_BYTES",
    "VERSION",
    "FrameDecoder",
    "FrameError",
    "FrameKind",
    "encode_frame",
    "frame_batches",
    "read_frame",
    "read_frame_sync",
    "send_frame",
    "send_frame_sync",
    "write_frame",
]

VERSION = 1
MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Default cap on a frame's declared length (version + kind + body)."""

_HEADER = struct.Struct(">IBB")  # length, version, kind
HEADER_BYTES = 4
_LEN = struct.Struct(">I")


class FrameKind(IntEnum):
    """What a frame's body is. Values are part of the wire format: never renumber."""

    RAFT = 1  # body: codec.encode_message
    CLIENT_REQUEST = 2  # body: client protocol (codec.encode_payload)
    CLIENT_RESPONSE = 3
    HELLO = 4  # server -> connector: 32-byte nonce (auth)
    AUTH = 5  # connector -> server: role, id, nonce, MAC (auth)
    AUTH_OK = 6  # server -> connector: server id, MAC (auth)
    AUTH_FAIL = 7  # server -> connector: short reason, then close (auth)
    # A streamed snapshot on a peer connection (layouts: raft_node.transport.snapstream)
    SNAP_BEGIN = 8  # sender -> receiver: codec.encode_snapshot_header
    SNAP_CHUNK = 9  # sender -> receiver: stream id, sequence number, CRC32, data
    SNAP_END = 10  # sender -> receiver: stream id, total bytes, CRC32 of all the data
    SNAP_ACK = 11  # receiver -> sender: stream id, accepted or not, reason


_KINDS = frozenset(int(k) for k in FrameKind)


class FrameError(ValueError):
    """Protocol violation at the framing level: bad length, version or kind, truncated frame."""


def encode_frame(kind: int, body: bytes, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame as bytes; ``FrameError`` if it would exceed ``max_frame_bytes``."""
    n = len(body) + 2
    if n > max_frame_bytes:
        raise FrameError(f"frame of {n} bytes exceeds the {max_frame_bytes}-byte limit")
    return _HEADER.pack(n, VERSION, kind) + body


def frame_header(kind: int, body_len: int) -> bytes:
    """Just the 6 header bytes (for callers that join header and body themselves)."""
    return _HEADER.pack(body_len + 2, VERSION, kind)


def _check_length(n: int, max_frame_bytes: int) -> None:
    if n < 2:
        raise FrameError(f"frame length {n} is shorter than its version and kind")
    if n > max_frame_bytes:
        raise FrameError(f"declared frame length {n} exceeds the {max_frame_bytes}-byte limit")


def _check_head(version: int, kind: int) -> None:
    if version != VERSION:
        raise FrameError(f"unsupported protocol version {version}")
    if kind not in _KINDS:
        raise FrameError(f"unknown frame kind {kind}")


class FrameDecoder:
    """Incremental, sans-I/O frame parser.

    ``feed(data)`` returns the complete frames now available as ``(kind, body)`` pairs and keeps
    the rest. It raises ``FrameError`` as soon as a header is bad, without waiting for the body;
    after an error the decoder must be discarded (as must the connection). At most one partial
    frame is buffered, and never more than its (already checked) declared length.
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (non-zero means the peer is mid-frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        maxb = self.max_frame_bytes
        unpack = _HEADER.unpack_from
        view = memoryview(buf)
        try:
            while end - pos >= HEADER_BYTES:
                (n,) = _LEN.unpack_from(buf, pos)
                _check_length(n, maxb)
                if end - pos < 6:
                    break
                _, version, kind = unpack(buf, pos)
                _check_head(version, kind)
                stop = pos + 4 + n
                if stop > end:
                    break
                out.append((kind, bytes(view[pos + 6 : stop])))
                pos = stop
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return out


async def read_frame(
    reader: asyncio.StreamReader, max_frame_bytes: int = MAX_FRAME_BYTES
) -> tuple[int, bytes]:
    """Read one frame. ``EOFError`` on a clean close between frames, ``FrameError`` on a bad
    header or a close mid-frame. The length is checked before the body is read."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise EOFError("connection closed") from None
        raise FrameError("connection closed inside a frame header") from None
    (n,) = _LEN.unpack(header)
    _check_length(n, max_frame_bytes)
    try:
        payload = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise FrameError("connection closed inside a frame") from None
    _check_head(payload[0], payload[1])
    return payload[1], payload[2:]


async def frame_batches(
    reader: asyncio.StreamReader,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    *,
    frame_timeout: float = 30.0,
    idle_timeout: float | None = None,
    chunk_size: int = 256 * 1024,
) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Yield the frames of each socket read (non-empty lists) until a clean EOF.

    Raises ``FrameError`` on a bad header, a close mid-frame, or a frame that has started to
    arrive but is not complete ``frame_timeout`` seconds later (slow-loris defence; the clock
    restarts whenever a frame completes, so a steady stream never trips it); ``TimeoutError`` if
    ``idle_timeout`` is set and no byte arrives for that long between frames. Use it under
    ``contextlib.aclosing`` so an exception in the consumer closes the generator promptly.
    """
    decoder = FrameDecoder(max_frame_bytes)
    loop = asyncio.get_running_loop()
    read = reader.read
    deadline: float | None = None  # while mid-frame: the current frame must complete by then
    while True:
        if not decoder.pending:
            deadline = None
        elif deadline is None:
            deadline = loop.time() + frame_timeout
        when = deadline
        if when is None and idle_timeout is not None:
            when = loop.time() + idle_timeout
        if when is None:
            chunk = await read(chunk_size)
        else:
            try:
                async with asyncio.timeout_at(when):
                    chunk = await read(chunk_size)
            except TimeoutError:
                if decoder.pending:
                    raise FrameError(f"frame not completed within {frame_timeout} s") from None
                raise TimeoutError(f"idle for {idle_timeout} s") from None
        if not chunk:
            if decoder.pending:
                raise FrameError("connection closed inside a frame")
            return
        frames = decoder.feed(chunk)
        if frames:
            deadline = None
            yield frames


def write_frame(
    writer: asyncio.StreamWriter, kind: int, body: bytes, max_frame_bytes: int = MAX_FRAME_BYTES
) -> None:
    """Buffer one frame on ``writer`` (no drain: batch several, then ``await writer.drain()``)."""
    writer.write(encode_frame(kind, body, max_frame_bytes))


async def send_frame(
    writer: asyncio.StreamWriter, kind: int, body: bytes, max_frame_bytes: int = MAX_FRAME_BYTES
) -> None:
    """Write one frame and wait until it is handed to the kernel (or the buffer drained)."""
    writer.write(encode_frame(kind, body, max_frame_bytes))
    await writer.drain()


def _recv_exactly(sock: socket.socket, n: int, at_boundary: bool) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if at_boundary and got == 0:
                raise EOFError("connection closed")
            raise FrameError("connection closed inside a frame")
        got += k
    return bytes(buf)


def read_frame_sync(
    sock: socket.socket, max_frame_bytes: int = MAX_FRAME_BYTES
) -> tuple[int, bytes]:
    """Blocking ``read_frame`` (honours the socket's timeout: ``TimeoutError`` propagates)."""
    header = _recv_exactly(sock, 4, at_boundary=True)
    (n,) = _LEN.unpack(header)
    _check_length(n, max_frame_bytes)
    payload = _recv_exactly(sock, n, at_boundary=False)
    _check_head(payload[0], payload[1])
    return payload[1], payload[2:]


def send_frame_sync(
    sock: socket.socket, kind: int, body: bytes, max_frame_bytes: int = MAX_FRAME_BYTES
) -> None:
    """Blocking write of one frame (``sock.sendall``)."""
    sock.sendall(encode_frame(kind, body, max_frame_bytes))
