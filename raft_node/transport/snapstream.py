"""Streamed snapshots: how an InstallSnapshot (``SNAP`` message) crosses a TCP peer connection
in chunks, so that neither side ever holds a frame as large as the state machine image.

Why: a snapshot used to travel as one ``RAFT`` frame, which capped the state size at the peer
frame limit, made the leader build a second full copy of the image (the encoded frame) per
follower, and blocked its event loop while that was written. Now the frame limit only has to fit
an append batch, the leader's extra memory is about one chunk per follower being sent to, and
its event loop runs between chunks.

Wire format (each item is one ``raft_node.transport.wire`` frame; integers big-endian)::

    SNAP_BEGIN  codec.encode_snapshot_header(stream_id, total_bytes, chunk_bytes, message)
    SNAP_CHUNK  stream_id u64 | seq u32 | crc32(data) u32 | data      (N times, seq 0..N-1)
    SNAP_END    stream_id u64 | total_bytes u64 | crc32(all data) u32
    SNAP_ACK    stream_id u64 | ok u8 | reason (UTF-8)                 (receiver -> sender)

``message`` is the ``SNAP`` message with empty snapshot data (so its meta is encoded exactly as
in a ``RAFT`` frame). Every chunk holds ``chunk_bytes`` of data except the last, which holds the
rest; ``N = ceil(total_bytes / chunk_bytes)`` (0 for an empty image). ``stream_id`` numbers the
sender's streams; one connection carries at most one stream at a time, but other ``RAFT`` frames
(heartbeats) may come between its chunks.

The receiver (``IncomingSnapshot``) writes chunks to a temporary file, checking each chunk's CRC,
its sequence number and size as it arrives and, at ``SNAP_END``, the total length and the CRC of
the whole. Only then does it read the file back into ``bytes`` (once: the state machine restores
from bytes, so the follower needs the image in memory at that point anyway) and hand the ``SNAP``
message to its node, and then it answers ``SNAP_ACK ok=1``. Any check that fails answers
``SNAP_ACK ok=0`` with the reason and closes the connection (the stream's bytes cannot be
trusted, nor can what follows on that connection); the temporary file is deleted whenever a
stream does not complete, also when the connection drops or the node stops.

The sender (``OutgoingSnapshot``) slices the image with ``memoryview`` (no copy of the whole) and
reports ``on_snapshot_status(peer, True)`` only on ``SNAP_ACK ok=1``; a ``SNAP_ACK ok=0``, a lost
connection, or no answer in time reports ``False`` and the Raft core sends a fresh snapshot later.
A failed transfer restarts from the beginning: no resume. A resume would need the receiver to
keep partial files across connections and both sides to agree the image is still the same; a
restart costs one more transfer of a rare event, and the core sends the *latest* snapshot then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import tempfile
import zlib
from pathlib import Path

from raft_node.core.messages import Message, NodeId
from raft_node.transport.codec import (
    CodecError,
    decode_snapshot_header,
    encode_snapshot_header,
)
from raft_node.transport.wire import FrameKind, frame_header

__all__ = [
    "CHUNK_OVERHEAD",
    "DEFAULT_CHUNK_BYTES",
    "TEMP_PREFIX",
    "IncomingSnapshot",
    "OutgoingSnapshot",
    "SnapshotStreamError",
    "ack_frame",
    "chunk_frame",
    "decode_ack",
    "end_frame",
    "remove_stale",
]

DEFAULT_CHUNK_BYTES = 1 << 20
"""Data bytes per chunk frame: big enough that per-frame costs vanish, small enough that the
leader's extra memory per transfer stays around a megabyte."""

_CHUNK = struct.Struct(">QII")  # stream id, seq, crc32
_END = struct.Struct(">QQI")  # stream id, total bytes, crc32 of all
_ACK = struct.Struct(">QB")  # stream id, ok
CHUNK_OVERHEAD = _CHUNK.size + 2  # what a chunk frame's declared length adds to its data
TEMP_PREFIX = "snap-"
TEMP_SUFFIX = ".part"


class SnapshotStreamError(ValueError):
    """A snapshot stream that cannot be accepted (bad CRC, missing or extra chunk, wrong size,
    bad header). ``stream_id`` is the stream's id, when it is known, to answer a ``SNAP_ACK``."""

    def __init__(self, message: str, stream_id: int | None = None) -> None:
        super().__init__(message)
        self.stream_id = stream_id


# -- frames ---------------------------------------------------------------------------------------


def chunk_frame(stream_id: int, seq: int, data: bytes | memoryview) -> tuple[bytes, memoryview]:
    """One ``SNAP_CHUNK`` frame as (frame header + chunk header, data): the data is returned,
    not copied, so the caller writes both parts and the image is never duplicated."""
    view = memoryview(data)
    head = frame_header(FrameKind.SNAP_CHUNK, _CHUNK.size + len(view))
    return head + _CHUNK.pack(stream_id, seq, zlib.crc32(view)), view


def end_frame(stream_id: int, total_bytes: int, crc: int) -> bytes:
    return frame_header(FrameKind.SNAP_END, _END.size) + _END.pack(stream_id, total_bytes, crc)


def ack_frame(stream_id: int, ok: bool, reason: str = "") -> bytes:
    body = _ACK.pack(stream_id, 1 if ok else 0) + reason.encode("utf-8", "replace")[:200]
    return frame_header(FrameKind.SNAP_ACK, len(body)) + body


def decode_ack(body: bytes) -> tuple[int, bool, str]:
    """``(stream_id, ok, reason)``; ``SnapshotStreamError`` if the body is not an ack."""
    if len(body) < _ACK.size:
        raise SnapshotStreamError("SNAP_ACK too short")
    stream_id, ok = _ACK.unpack_from(body)
    if ok not in (0, 1):
        raise SnapshotStreamError(f"SNAP_ACK with ok={ok}")
    return stream_id, ok == 1, body[_ACK.size :].decode("utf-8", "replace")


# -- sending --------------------------------------------------------------------------------------


class OutgoingSnapshot:
    """One ``SNAP`` message cut into frames. ``begin`` (may raise ``CodecError``), then
    ``chunk(0)``, ``chunk(1)``, ... in order (the running CRC needs the order), then ``end``."""

    __slots__ = ("_next", "_view", "chunk_bytes", "count", "crc", "message", "stream_id", "total")

    def __init__(self, m: Message, stream_id: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if m.snapshot is None or chunk_bytes < 1:
            raise ValueError("an OutgoingSnapshot needs a SNAP message and chunk_bytes >= 1")
        self.message = m
        self.stream_id = stream_id
        self.chunk_bytes = chunk_bytes
        self._view = memoryview(m.snapshot.data)
        self.total = len(self._view)
        self.count = -(-self.total // chunk_bytes)
        self.crc = 0
        self._next = 0

    def begin(self) -> bytes:
        body = encode_snapshot_header(self.stream_id, self.total, self.chunk_bytes, self.message)
        return frame_header(FrameKind.SNAP_BEGIN, len(body)) + body

    def chunk(self, seq: int) -> tuple[bytes, memoryview]:
        if seq != self._next:
            raise ValueError(f"chunk {seq} asked for, {self._next} expected")
        self._next += 1
        start = seq * self.chunk_bytes
        view = self._view[start : start + self.chunk_bytes]
        self.crc = zlib.crc32(view, self.crc)
        return chunk_frame(self.stream_id, seq, view)

    def end(self) -> bytes:
        if self._next != self.count:
            raise ValueError(f"end after {self._next} of {self.count} chunks")
        return end_frame(self.stream_id, self.total, self.crc)


# -- receiving ------------------------------------------------------------------------------------


def remove_stale(directory: Path) -> int:
    """Delete partial files a previous run left behind (it died mid-transfer); answers how many."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for path in directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                n += 1
    return n


class IncomingSnapshot:
    """One snapshot being received from ``peer``, assembled in a temporary file in ``directory``
    (the system's temporary directory if None). Call ``add_chunk`` for each chunk, ``finish`` at
    the end, then ``take`` (blocking file read: run it in a thread) for the complete message;
    ``abandon`` (idempotent) whenever the stream will not complete. Every check that fails
    raises ``SnapshotStreamError``."""

    def __init__(
        self,
        header: bytes,
        *,
        me: NodeId,
        peer: NodeId,
        directory: Path | None,
        max_chunk_bytes: int,
    ) -> None:
        try:
            sid, total, chunk_bytes, m = decode_snapshot_header(header)
        except CodecError as e:
            raise SnapshotStreamError(f"bad snapshot header: {e}") from None
        self.stream_id = sid
        if m.frm != peer or m.to != me:
            raise SnapshotStreamError(f"snapshot {m.frm!r}->{m.to!r} from {peer!r}", sid)
        if chunk_bytes > max_chunk_bytes:
            raise SnapshotStreamError(f"chunk size {chunk_bytes} > {max_chunk_bytes}", sid)
        self.message = m
        self.index = m.snapshot.index if m.snapshot is not None else 0
        self.total = total
        self.chunk_bytes = chunk_bytes
        self.count = -(-total // chunk_bytes)
        self.received = 0
        self.crc = 0
        self._next = 0
        self._done = False
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        prefix = f"{TEMP_PREFIX}{peer}-"
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def _fail(self, why: str) -> SnapshotStreamError:
        return SnapshotStreamError(f"snapshot stream {self.stream_id}: {why}", self.stream_id)

    def add_chunk(self, body: bytes) -> None:
        if len(body) < _CHUNK.size:
            raise self._fail("chunk frame too short")
        sid, seq, crc = _CHUNK.unpack_from(body)
        if sid != self.stream_id or self._done:
            raise self._fail(f"chunk of stream {sid} (done={self._done})")
        if seq != self._next:
            raise self._fail(f"chunk {seq} where {self._next} was expected")
        data = memoryview(body)[_CHUNK.size :]
        want = min(self.chunk_bytes, self.total - self.received)
        if len(data) != want:
            raise self._fail(f"chunk {seq} holds {len(data)} bytes, expected {want}")
        if zlib.crc32(data) != crc:
            raise self._fail(f"chunk {seq} fails its CRC32")
        self._file.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.received += len(data)
        self._next += 1

    def finish(self, body: bytes) -> None:
        if len(body) != _END.size:
            raise self._fail("SNAP_END of the wrong size")
        sid, total, crc = _END.unpack(body)
        if sid != self.stream_id:
            raise self._fail(f"SNAP_END of stream {sid}")
        if total != self.total or self.received != total or self._next != self.count:
            raise self._fail(f"ended after {self.received} of {self.total} bytes (says {total})")
        if crc != self.crc:
            raise self._fail("the whole fails its CRC32")
        self._file.close()
        self._done = True

    def take(self) -> Message:
        """The complete ``SNAP`` message (reads the file into memory once, then deletes it)."""
        if not self._done:
            raise self._fail("take() before finish()")
        try:
            data = self.path.read_bytes()
        finally:
            self.abandon()
        if len(data) != self.total:  # the file changed under us: never deliver that
            raise self._fail("temporary file changed size")
        snap = self.message.snapshot
        assert snap is not None  # checked by decode_snapshot_header
        return dataclasses.replace(self.message, snapshot=dataclasses.replace(snap, data=data))

    def abandon(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
