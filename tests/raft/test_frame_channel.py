"""``FrameChannel``: frames by callback after a streams handshake, in order, with its limits."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from raft_node.transport.frame_channel import FrameChannel
from raft_node.transport.wire import FrameError, FrameKind, encode_frame

RAFT = int(FrameKind.RAFT)

LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def on_each_loop(test: Callable[[], Awaitable[None]]) -> Callable[[str], None]:
    """Run the coroutine test on the standard loop and on uvloop (the node's, when installed):
    both transports must support the switch of protocol."""

    @pytest.mark.parametrize("loop_name", LOOPS)
    def run(loop_name: str) -> None:
        factory = None
        if loop_name == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(test())  # type: ignore[arg-type]

    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


def frame(body: bytes) -> bytes:
    return encode_frame(FrameKind.RAFT, body)


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """A loopback connection: the server's streams and the client's streams."""
    accepted: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c_reader, c_writer = await asyncio.open_connection("127.0.0.1", port)
    s_reader, s_writer = await accepted.get()
    try:
        yield s_reader, s_writer, c_reader, c_writer
    finally:
        c_writer.close()
        s_writer.close()
        server.close()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


@on_each_loop
async def test_frames_behind_the_handshake_come_first_then_the_rest_in_order() -> None:
    async with connected() as (s_reader, s_writer, _c_reader, c_writer):
        c_writer.write(b"HELLO" + frame(b"one") + frame(b"tw"))
        assert await s_reader.readexactly(5) == b"HELLO"  # the "handshake"
        await settle()  # the frames are now in the StreamReader's buffer
        got: list[bytes] = []
        batches: list[int] = []
        channel = FrameChannel.attach(
            s_reader,
            s_writer,
            lambda kind, body: got.append(body),
            on_batch=lambda: batches.append(len(got)),
        )
        assert got == [b"one", b"tw"]
        c_writer.write(frame(b"three") + frame(b"four"))
        await settle()
        assert got == [b"one", b"tw", b"three", b"four"]
        assert batches[-1] == 4
        c_writer.close()
        assert await asyncio.wait_for(channel.done, 2) is None  # clean close between frames


@on_each_loop
async def test_an_awaitable_holds_back_later_frames_until_it_completes() -> None:
    async with connected() as (s_reader, s_writer, _c_reader, c_writer):
        release = asyncio.get_running_loop().create_future()
        got: list[bytes] = []

        async def slow() -> None:
            await release
            got.append(b"slow-done")

        def on_frame(kind: int, body: bytes) -> Awaitable[None] | None:
            got.append(body)
            return slow() if body == b"wait" else None

        FrameChannel.attach(s_reader, s_writer, on_frame)
        c_writer.write(frame(b"a") + frame(b"wait") + frame(b"b"))
        await settle()
        c_writer.write(frame(b"c"))
        await settle()
        assert got == [b"a", b"wait"]  # b and c wait, in order
        release.set_result(None)
        await settle()
        assert got == [b"a", b"wait", b"slow-done", b"b", b"c"]


@on_each_loop
async def test_a_handler_exception_ends_the_channel_with_it() -> None:
    async with connected() as (s_reader, s_writer, _c_reader, c_writer):
        got: list[bytes] = []

        def on_frame(kind: int, body: bytes) -> None:
            got.append(body)
            if body == b"bad":
                raise ValueError("refused")

        channel = FrameChannel.attach(s_reader, s_writer, on_frame)
        c_writer.write(frame(b"ok") + frame(b"bad") + frame(b"never"))
        with pytest.raises(ValueError, match="refused"):
            await asyncio.wait_for(channel.done, 2)
        assert got == [b"ok", b"bad"]


@on_each_loop
async def test_close_inside_a_frame_and_a_bad_header_are_frame_errors() -> None:
    async with connected() as (s_reader, s_writer, _c_reader, c_writer):
        channel = FrameChannel.attach(s_reader, s_writer, lambda kind, body: None)
        c_writer.write(frame(b"whole")[:-2])
        await settle()
        c_writer.close()
        with pytest.raises(FrameError, match="inside a frame"):
            await asyncio.wait_for(channel.done, 2)
    async with connected() as (s_reader, s_writer, _c_reader, c_writer):
        channel = FrameChannel.attach(s_reader, s_writer, lambda kind, body: None)
        c_writer.write(b"\xff\xff\xff\xff\x01\x01")
        with pytest.raises(FrameError, match="exceeds"):
            await asyncio.wait_for(channel.done, 2)


@on_each_loop
async def test_a_stalled_frame_and_an_idle_connection_time_out() -> None:
    async with connected() as (s_reader, s_writer, _c_reader, c_writer):
        channel = FrameChannel.attach(
            s_reader, s_writer, lambda kind, body: None, frame_timeout=0.2
        )
        c_writer.write(frame(b"x" * 100)[:10])
        with pytest.raises(FrameError, match="not completed within"):
            await asyncio.wait_for(channel.done, 2)
    async with connected() as (s_reader, s_writer, _c_reader, c_writer):
        got: list[bytes] = []
        channel = FrameChannel.attach(
            s_reader, s_writer, lambda kind, body: got.append(body), idle_timeout=0.3
        )
        for _ in range(4):  # traffic keeps it alive past the idle timeout
            c_writer.write(frame(b"beat"))
            await asyncio.sleep(0.1)
        assert not channel.done.done()
        with pytest.raises(TimeoutError, match="idle"):
            await asyncio.wait_for(channel.done, 2)
        assert len(got) == 4


@on_each_loop
async def test_the_writer_keeps_working_after_the_switch() -> None:
    async with connected() as (s_reader, s_writer, c_reader, c_writer):

        def echo(kind: int, body: bytes) -> None:
            s_writer.write(frame(body.upper()))

        FrameChannel.attach(s_reader, s_writer, echo)
        c_writer.write(frame(b"ping"))
        assert await asyncio.wait_for(c_reader.readexactly(len(frame(b"PING"))), 2) == frame(
            b"PING"
        )
        await s_writer.drain()
        s_writer.close()
        await asyncio.wait_for(s_writer.wait_closed(), 2)  # the streams protocol saw the close
