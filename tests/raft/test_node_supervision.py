"""No zombie nodes: ``NodeConfig`` refuses bad values before anything starts, and an exception in
any long-lived task of the node (tick loop, transport peer writers, plugin tasks) stops the node
with ``fatal_error`` set and an ``event=fatal`` line, so the process exits non-zero."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from coordination.node import node_runner
from raft_node.host.config import NodeConfig
from raft_node.kvstore import KVStore
from raft_node.server import NodeServer
from raft_node.storage.memory import MemoryStorage
from raft_node.testing.launcher import free_port
from raft_node.transport.peers import PeerRouter

SECRET = b"supervision-test-secret"


def _server(nodes: int = 1, **config) -> NodeServer:
    cluster = {f"n{i}": ("127.0.0.1", free_port()) for i in range(1, nodes + 1)}
    return NodeServer(
        NodeConfig("n1", cluster, Path("."), SECRET, **config), KVStore(), MemoryStorage()
    )


class Boom(Exception):
    pass


async def _run_until_stopped(server: NodeServer, timeout: float = 10.0) -> None:
    await asyncio.wait_for(server.run(), timeout)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tick_ms", "ten"),
        ("tick_ms", 0),
        ("election_ticks", True),
        ("heartbeat_ticks", 1.5),
        ("snapshot_keep", -1),
        ("max_frame_bytes", None),
        ("metrics_port", 70000),
        ("request_timeout", float("nan")),
        ("fsync", "yes"),
    ],
)
def test_node_config_refuses_bad_types_and_ranges(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        _server(**{field: value})


def test_node_config_refuses_heartbeat_not_below_election() -> None:
    with pytest.raises(ValueError, match="heartbeat_ticks"):
        _server(election_ticks=3, heartbeat_ticks=3)


def test_an_exception_in_the_tick_loop_stops_the_node(caplog: pytest.LogCaptureFixture) -> None:
    server = _server()
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 5:
            raise Boom("tick failed")

    server.host.raw.tick = tick  # type: ignore[method-assign]
    with caplog.at_level(logging.CRITICAL, logger="raft_node.server"):
        asyncio.run(_run_until_stopped(server))
    assert isinstance(server.fatal_error, Boom)
    assert any(
        "event=fatal" in r.getMessage() and "tick-n1" in r.getMessage() for r in caplog.records
    )


def test_a_plugin_task_that_raises_stops_the_node() -> None:
    server = _server()

    class Plugin:
        async def start(self) -> None:
            server.spawn(self._work(), "plugin-work")

        async def _work(self) -> None:
            await asyncio.sleep(0.05)
            raise Boom("plugin failed")

        async def stop(self) -> None:
            pass

    server.plugins.append(Plugin())
    asyncio.run(_run_until_stopped(server))
    assert isinstance(server.fatal_error, Boom)


def test_a_forever_task_that_returns_is_fatal_but_a_one_shot_is_not() -> None:
    server = _server()

    async def main() -> None:
        await server.start()
        server.spawn(asyncio.sleep(0.01), "one-shot", forever=False)
        await asyncio.sleep(0.1)
        assert server.fatal_error is None
        server.spawn(asyncio.sleep(0.01), "should-run-forever")
        await asyncio.wait_for(server._stopping.wait(), 5)
        await server._shutdown()

    asyncio.run(main())
    assert isinstance(server.fatal_error, RuntimeError)
    assert "should-run-forever" in str(server.fatal_error)


def test_a_dead_transport_peer_task_stops_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """n2 is down, so n1's writer for it backs off; a bug there used to kill the task silently,
    leaving a node that could never reach n2 again."""

    def broken_backoff(self: PeerRouter, attempt: int) -> float:
        raise Boom("backoff bug")

    monkeypatch.setattr(PeerRouter, "_backoff", broken_backoff)
    server = _server(nodes=2)
    asyncio.run(_run_until_stopped(server))
    assert isinstance(server.fatal_error, Boom)


def test_a_start_failure_is_fatal_not_a_hang() -> None:
    server = _server()

    class Plugin:
        async def start(self) -> None:
            raise Boom("cannot start")

        async def stop(self) -> None:
            pass

    server.plugins.append(Plugin())
    asyncio.run(_run_until_stopped(server))
    assert isinstance(server.fatal_error, Boom)


def test_serve_exits_non_zero_after_a_fatal_task_error() -> None:
    """What ``raftsync node`` and ``manage.py run_raft_node`` return as the exit status."""
    server = _server()

    def tick() -> None:
        raise Boom("tick failed")

    server.host.raw.tick = tick  # type: ignore[method-assign]
    assert node_runner.serve(server) == 1
