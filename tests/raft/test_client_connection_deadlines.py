"""``AsyncConnection``'s request deadlines without a node: one timer per connection, at the
earliest deadline in flight, must still fail each request at its own deadline (not earlier,
not later, whatever order the deadlines come in) and leave answered requests alone."""

from __future__ import annotations

import asyncio

import pytest

from raft_node.client.connection import AsyncConnection
from raft_node.transport import client_protocol as p


class _Transport:
    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


class _Writer:
    """Takes the request frames and drops them: nothing ever answers by itself."""

    transport = _Transport()

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(data)

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def _connection() -> AsyncConnection:
    conn = AsyncConnection(("127.0.0.1", 1), b"s" * 32, "test")
    conn._writer = _Writer()  # type: ignore[assignment]
    return conn


async def _timed(conn: AsyncConnection, timeout: float) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await conn.request(p.READ, [b"q", True], timeout)
    except TimeoutError:
        return "timeout", loop.time() - started
    return "answered", loop.time() - started


async def _each_in_any_order() -> None:
    conn = _connection()
    timeouts = [0.30, 0.05, 0.20, 0.10, 0.05]
    results = await asyncio.gather(*(_timed(conn, t) for t in timeouts))
    for (outcome, took), timeout in zip(results, timeouts, strict=True):
        assert outcome == "timeout"
        assert timeout - 0.01 <= took < timeout + 0.1
    assert conn._deadlines == {} and conn._inflight == {}
    await conn.close()


async def _answered_and_moving_on() -> None:
    conn = _connection()
    answered = asyncio.ensure_future(_timed(conn, 0.1))
    late = asyncio.ensure_future(_timed(conn, 0.2))
    await asyncio.sleep(0.02)
    first = min(conn._inflight)  # the first request's id
    conn._inflight[first].set_result(p.Response(first, True, "v", "", None, ""))
    assert await answered == ("answered", pytest.approx(0.02, abs=0.05))
    outcome, took = await late
    assert outcome == "timeout" and 0.19 <= took < 0.3
    await conn.close()


def test_each_request_times_out_at_its_own_deadline_in_any_order() -> None:
    asyncio.run(_each_in_any_order())


def test_an_answered_request_is_not_expired_and_the_timer_moves_on() -> None:
    asyncio.run(_answered_and_moving_on())
