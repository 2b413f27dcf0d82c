"""Streamed snapshots: the chunk codec on its own, then two real TcpTransports with a snapshot
much larger than the peer frame limit, delivered intact, corrupted in flight, and cut mid-way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from raft_node.core.messages import Entry, Message, MessageType, Snapshot, SnapshotMeta
from raft_node.transport.codec import CodecError, decode_snapshot_header, encode_snapshot_header
from raft_node.transport.snapstream import (
    CHUNK_OVERHEAD,
    IncomingSnapshot,
    OutgoingSnapshot,
    SnapshotStreamError,
    ack_frame,
    decode_ack,
)
from raft_node.transport.tcp import TcpTransport

pytestmark = pytest.mark.timeout(60)

SECRET = b"cluster-secret-0123456789abcdef"
MiB = 1 << 20


def snap_msg(data: bytes, index: int = 7, frm: str = "a", to: str = "b") -> Message:
    return Message(
        MessageType.SNAP,
        to,
        frm,
        term=3,
        snapshot=Snapshot(SnapshotMeta(index, 2, ("a", "b")), data),
    )


def frames_of(out: OutgoingSnapshot) -> tuple[bytes, list[bytes], bytes]:
    """(header body, chunk bodies, end body): what a receiver's frame decoder would hand over."""
    begin = out.begin()[6:]
    chunks = []
    for seq in range(out.count):
        head, data = out.chunk(seq)
        chunks.append(head[6:] + bytes(data))
    return begin, chunks, out.end()[6:]


def incoming(begin: bytes, tmp_path: Path, **kw: Any) -> IncomingSnapshot:
    kw.setdefault("max_chunk_bytes", MiB)
    return IncomingSnapshot(begin, me="b", peer="a", directory=tmp_path, **kw)


# -- the codec --------------------------------------------------------------------------------


def test_header_roundtrip_reuses_the_message_encoding_and_refuses_garbage() -> None:
    m = snap_msg(b"x" * 10)
    body = encode_snapshot_header(5, 10, 4, m)
    sid, total, chunk, bare = decode_snapshot_header(body)
    assert (sid, total, chunk) == (5, 10, 4)
    assert bare.snapshot is not None and bare.snapshot.data == b""
    assert bare.snapshot.meta == m.snapshot.meta and bare.term == 3 and bare.frm == "a"
    for bad in (b"", b"\x93\x01\x02\x03", body[:-3], b"\x94\x01\x02\x00\xc4\x00"):
        with pytest.raises(CodecError):
            decode_snapshot_header(bad)
    with pytest.raises(CodecError):
        encode_snapshot_header(1, 0, 1, Message(MessageType.APP, "b", "a"))


def test_chunks_reassemble_exactly(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    begin, chunks, end = frames_of(OutgoingSnapshot(snap_msg(data), 9, chunk_bytes=4096))
    assert len(chunks) == 3
    rx = incoming(begin, tmp_path)
    for c in chunks:
        rx.add_chunk(c)
    rx.finish(end)
    assert rx.path.exists()
    assert rx.take() == snap_msg(data)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone once read


def test_an_empty_image_is_one_header_and_one_end(tmp_path: Path) -> None:
    begin, chunks, end = frames_of(OutgoingSnapshot(snap_msg(b""), 1))
    assert chunks == []
    rx = incoming(begin, tmp_path)
    rx.finish(end)
    assert rx.take() == snap_msg(b"")


def test_a_corrupted_chunk_fails_its_crc(tmp_path: Path) -> None:
    begin, chunks, _ = frames_of(OutgoingSnapshot(snap_msg(b"y" * 9000), 4, chunk_bytes=4096))
    bad = bytearray(chunks[1])
    bad[100] ^= 0x01
    rx = incoming(begin, tmp_path)
    rx.add_chunk(chunks[0])
    with pytest.raises(SnapshotStreamError, match="chunk 1 fails its CRC32") as info:
        rx.add_chunk(bytes(bad))
    assert info.value.stream_id == 4
    rx.abandon()
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_reordered_or_tampered_stream_is_refused(tmp_path: Path) -> None:
    out = OutgoingSnapshot(snap_msg(b"z" * 9000), 4, chunk_bytes=4096)
    begin, chunks, end = frames_of(out)
    rx = incoming(begin, tmp_path)  # a chunk missing at the end
    rx.add_chunk(chunks[0])
    rx.add_chunk(chunks[1])
    with pytest.raises(SnapshotStreamError, match="ended after 8192 of 9000"):
        rx.finish(end)
    rx = incoming(begin, tmp_path)  # a chunk skipped
    rx.add_chunk(chunks[0])
    with pytest.raises(SnapshotStreamError, match="chunk 2 where 1 was expected"):
        rx.add_chunk(chunks[2])
    rx = incoming(begin, tmp_path)  # a chunk cut short (CRC recomputed: only the size is off)
    short = chunks[0][:-10]
    short = short[:12] + struct.pack(">I", zlib.crc32(short[16:])) + short[16:]
    with pytest.raises(SnapshotStreamError, match="holds 4086 bytes, expected 4096"):
        rx.add_chunk(short)
    rx = incoming(begin, tmp_path)  # every chunk fine, the whole's CRC not
    for c in chunks:
        rx.add_chunk(c)
    with pytest.raises(SnapshotStreamError, match="the whole fails its CRC32"):
        rx.finish(end[:-4] + struct.pack(">I", out.crc ^ 1))
    with pytest.raises(SnapshotStreamError, match="take"):
        rx.take()
    rx = incoming(begin, tmp_path)  # a chunk of another stream
    other = struct.pack(">Q", 5) + chunks[0][8:]
    with pytest.raises(SnapshotStreamError, match="chunk of stream 5"):
        rx.add_chunk(other)
    with pytest.raises(SnapshotStreamError, match="too short"):
        rx.add_chunk(b"\x00" * 3)
    with pytest.raises(SnapshotStreamError, match="chunk size 4096 > 1000"):
        incoming(begin, tmp_path, max_chunk_bytes=1000)
    with pytest.raises(SnapshotStreamError, match="from 'a'"):
        IncomingSnapshot(
            encode_snapshot_header(1, 0, 1, snap_msg(b"", frm="c")),
            me="b",
            peer="a",
            directory=tmp_path,
            max_chunk_bytes=MiB,
        )


def test_ack_frames() -> None:
    body = ack_frame(77, False, "bad crc")[6:]
    assert decode_ack(body) == (77, False, "bad crc")
    assert decode_ack(ack_frame(3, True)[6:]) == (3, True, "")
    with pytest.raises(SnapshotStreamError):
        decode_ack(b"\x00")


# -- two real transports --------------------------------------------------------------------------


def run(coro: Awaitable[Any], timeout: float = 50.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Node:
    def __init__(self, node_id: str, **kw: Any) -> None:
        self.got: list[Message] = []
        self.snap_status: list[tuple[str, bool]] = []
        self.t = TcpTransport(
            node_id,
            {},
            SECRET,
            self.got.append,
            listen=("127.0.0.1", 0),
            on_snapshot_status=lambda p, ok: self.snap_status.append((p, ok)),
            max_peer_frame_bytes=8 * MiB,
            backoff_max=0.1,
            **kw,
        )


class Proxy:
    """Forwards one direction of a TCP link, and can corrupt the byte at ``corrupt_at`` or hold
    everything after ``hold_at`` bytes (until ``cut()`` closes both sides) on its first
    connection; later connections pass untouched."""

    def __init__(self, target: tuple[str, int], corrupt_at: int = -1, hold_at: int = -1) -> None:
        self.target = target
        self.corrupt_at = corrupt_at
        self.hold_at = hold_at
        self.held = asyncio.Event()
        self._cut = asyncio.Event()
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[:2]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        self.connections += 1
        first = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]

        async def forward(src: asyncio.StreamReader, dst: asyncio.StreamWriter, tap: bool) -> None:
            seen = 0
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if tap and first:
                        if 0 <= self.hold_at < seen + len(data):
                            data = data[: self.hold_at - seen]
                            dst.write(data)
                            self.held.set()
                            await self._cut.wait()
                            break
                        if seen <= self.corrupt_at < seen + len(data):
                            buf = bytearray(data)
                            buf[self.corrupt_at - seen] ^= 0xFF
                            data = bytes(buf)
                    seen += len(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(forward(reader, up_writer, True), forward(up_reader, writer, False))

    def cut(self) -> None:
        self._cut.set()
        for w in self._writers:
            w.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)


async def pair(tmp_path: Path, **proxy: int) -> tuple[Node, Node, Proxy]:
    a, b = Node("a"), Node("b", snapshot_dir=tmp_path / "incoming")
    await a.t.start()
    await b.t.start()
    assert a.t.address is not None and b.t.address is not None
    px = Proxy(b.t.address, **proxy)
    a.t.add_peer("b", await px.start())
    b.t.add_peer("a", a.t.address)
    return a, b, px


async def teardown(a: Node, b: Node, px: Proxy) -> None:
    await px.close()
    await a.t.stop()
    await b.t.stop()


BIG = 50 * MiB


def test_a_50mb_snapshot_crosses_an_8mib_frame_limit_intact(tmp_path: Path) -> None:
    data = os.urandom(BIG)

    async def main() -> None:
        a, b, px = await pair(tmp_path)
        m = snap_msg(data)
        beat = Message(MessageType.HEARTBEAT, "b", "a", term=3)
        a.t.send([m])
        await until(lambda: a.t.stats()["frames_out"] > 2)
        # Sent during the transfer: the heartbeat goes out between chunks, and the same snapshot
        # again (a core retry) joins the transfer under way.
        a.t.send([beat, m, beat])
        await until(lambda: a.snap_status == [("b", True), ("b", True)])
        snaps = [x for x in b.got if x.type == MessageType.SNAP]
        assert len(snaps) == 1 and snaps[0] == m  # exactly once, byte for byte
        assert [x.type for x in b.got].count(MessageType.HEARTBEAT) == 2
        assert b.got.index(beat) < b.got.index(snaps[0])  # heartbeats were not held up
        sa, sb = a.t.stats(), b.t.stats()
        assert sa["snapshots_out"] == sb["snapshots_in"] == 1 and sa["oversize_drops"] == 0
        assert sa["frames_out"] == sb["frames_in"] == 50 + 2 + 2
        assert list((tmp_path / "incoming").iterdir()) == []
        await teardown(a, b, px)

    run(main())


def test_a_chunk_corrupted_in_flight_is_rejected_and_reported(tmp_path: Path) -> None:
    data = os.urandom(BIG)

    async def main() -> None:
        a, b, px = await pair(tmp_path, corrupt_at=5_000_000)  # inside the 5th chunk's data
        m = snap_msg(data)
        a.t.send([m])
        await until(lambda: a.snap_status == [("b", False)])
        assert b.got == []
        await until(lambda: list((tmp_path / "incoming").iterdir()) == [])
        assert b.t.stats()["snapshot_failures"] == 1 and b.t.stats()["protocol_errors"] == 1
        assert a.t.stats()["snapshot_failures"] == 1
        a.t.send([m])  # the core's retry: a fresh connection, a clean restart
        await until(lambda: a.snap_status == [("b", False), ("b", True)])
        assert b.got == [m] and px.connections == 2
        await teardown(a, b, px)

    run(main())


def test_a_connection_cut_mid_transfer_is_reported_and_the_partial_file_deleted(
    tmp_path: Path,
) -> None:
    data = os.urandom(BIG)

    async def main() -> None:
        a, b, px = await pair(tmp_path, hold_at=20 * MiB)
        m = snap_msg(data)
        a.t.send([m])
        await px.held.wait()
        partial = tmp_path / "incoming"
        await until(lambda: partial.exists() and any(p.stat().st_size for p in partial.iterdir()))
        px.cut()
        await until(lambda: a.snap_status == [("b", False)])
        await until(lambda: list(partial.iterdir()) == [])
        assert b.got == []
        a.t.send([m, Message(MessageType.APP, "b", "a", entries=(Entry(3, 8, b"e"),))])
        await until(lambda: a.snap_status == [("b", False), ("b", True)] and len(b.got) == 2)
        assert b.got[1] == m  # the append went out between the chunks
        await teardown(a, b, px)

    run(main())


def test_leftovers_of_a_crashed_transfer_are_removed_at_start(tmp_path: Path) -> None:
    incoming_dir = tmp_path / "incoming"
    incoming_dir.mkdir()
    (incoming_dir / "snap-a-123.part").write_bytes(b"partial")
    (incoming_dir / "keep.txt").write_bytes(b"not ours")

    async def main() -> None:
        b = Node("b", snapshot_dir=incoming_dir)
        await b.t.start()
        assert sorted(p.name for p in incoming_dir.iterdir()) == ["keep.txt"]
        await b.t.stop()

    run(main())


def test_chunks_fit_the_peer_frame_limit() -> None:
    kw: dict[str, Any] = {"listen": ("127.0.0.1", 0), "max_frame_bytes": 4096}
    t = TcpTransport("a", {}, SECRET, print, max_peer_frame_bytes=8192, **kw)
    assert t._router.snapshot_chunk_bytes == 8192 - CHUNK_OVERHEAD
    with pytest.raises(ValueError, match="snapshot_chunk_bytes"):
        TcpTransport("a", {}, SECRET, print, snapshot_chunk_bytes=0, **kw)


def test_the_node_config_keeps_the_peer_frame_limit_above_an_append_batch() -> None:
    from raft_node.host.config import NodeConfig

    def config(**kw: Any) -> NodeConfig:
        return NodeConfig("n1", {"n1": ("h", 1)}, Path("."), SECRET, **kw)

    assert config().max_peer_frame_bytes == 8 * MiB
    with pytest.raises(ValueError, match="max_peer_frame_bytes"):
        config(max_peer_frame_bytes=4 * MiB)  # no room for a 4 MiB client entry in an append
    with pytest.raises(ValueError, match="snapshot_chunk_bytes"):
        config(snapshot_chunk_bytes=8 * MiB)
    with pytest.raises(ValueError, match="snapshot_chunk_bytes"):
        config(snapshot_chunk_bytes=0)
