"""``InProcessCluster``: real nodes inside the test process, for tests of what sits on top of the
cluster (clients, the Celery transport) that need a cluster but not its process faults.

Each node is a real ``NodeServer`` with a real ``TcpTransport`` on a free loopback port and the
given state machine, so clients reach it exactly as they reach a node process; what differs from
``LocalCluster`` is that all nodes share one background thread's event loop and keep their log in
``MemoryStorage``. Starting one takes a fraction of a second instead of a process start and a
Django import per node. Crashes, pauses and partitions of processes are what ``LocalCluster``
and the real-process tests are for; this cluster only starts and stops as a whole.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raft_node.host.config import NodeConfig
from raft_node.server import NodeServer
from raft_node.storage.memory import MemoryStorage
from raft_node.testing.launcher import Address, free_port

__all__ = ["InProcessCluster"]


class InProcessCluster:
    """``nodes`` nodes of ``machine()`` on ``host``; ``addresses`` and ``secret`` are what a
    client needs (the same attributes as ``LocalCluster``)."""

    def __init__(
        self,
        machine: Callable[[], Any],
        *,
        nodes: int = 3,
        secret: str = "test-cluster-secret",
        host: str = "127.0.0.1",
        tick_ms: int = 10,
        election_ticks: int = 15,
        heartbeat_ticks: int = 2,
    ) -> None:
        self.secret = secret
        self.ids = [f"n{i}" for i in range(1, nodes + 1)]
        self.addresses: dict[str, Address] = {n: (host, free_port(host)) for n in self.ids}
        self._machine = machine
        self._config = {
            "tick_ms": tick_ms,
            "election_ticks": election_ticks,
            "heartbeat_ticks": heartbeat_ticks,
        }
        self.servers: dict[str, NodeServer] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runs: dict[str, concurrent.futures.Future[None]] = {}

    def start(self, timeout: float = 20.0) -> None:
        """Start every node; returns once each knows the leader (all are up and talking)."""
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=loop.run_forever, name="inprocess-cluster", daemon=True
        )
        self._thread.start()
        for node in self.ids:
            config = NodeConfig(
                node, dict(self.addresses), Path("."), self.secret.encode(), **self._config
            )
            self.servers[node] = server = NodeServer(config, self._machine(), MemoryStorage())
            self._runs[node] = asyncio.run_coroutine_threadsafe(server.run(), loop)
        self._until(lambda: all(s.host.leader for s in self.servers.values()), timeout)

    def leader(self) -> str | None:
        for node, server in self.servers.items():
            if server.host.is_leader:
                return node
        return None

    def wait_for_leader(self, timeout: float = 20.0) -> str:
        self._until(lambda: self.leader() is not None, timeout)
        leader = self.leader()
        assert leader is not None
        return leader

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node and the loop's thread."""
        loop = self._loop
        if loop is None:
            return
        for server in self.servers.values():
            loop.call_soon_threadsafe(server.stop)
        for run in self._runs.values():
            run.result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(timeout)
        loop.close()
        self._loop = None

    def __enter__(self) -> InProcessCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Wait for ``condition``; a node that died of a fatal error (a port taken, a bug)
        fails the wait at once, naming it, rather than as a timeout."""
        deadline = time.monotonic() + timeout
        while not condition():
            for node, server in self.servers.items():
                if server.fatal_error is not None:
                    raise RuntimeError(f"node {node} failed: {server.fatal_error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"in-process cluster {self.ids}: not ready in {timeout}s")
            time.sleep(0.01)
