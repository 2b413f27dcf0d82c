"""The leader's Redis write-through: never blocks commits, converges after Redis restarts,
never regresses a version. Uses a private redis-server on a free port (killed and restarted
here), not the shared one."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
import redis

from coordination.node.redis_mirror import GUARDED_WRITE, PREFIX, RedisMirror
from coordination.primitives import commands as c
from coordination.primitives.machine import CoordinationMachine
from raft_node.client import AsyncRaftClient
from raft_node.host.config import NodeConfig
from raft_node.server import NodeServer
from raft_node.storage.memory import MemoryStorage
from raft_node.testing.launcher import free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")
SECRET = b"mirror-test"


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _mirrored(r: redis.Redis, key: str) -> tuple[int, bytes | None] | None:
    got = r.hmget(PREFIX + key, ["v", "d"])
    return None if got[0] is None else (int(got[0]), got[1])


def test_mirror_converges_across_a_redis_restart_and_never_blocks_commits():
    private = PrivateRedis()
    private.start()

    async def main():
        cluster = {"n1": ("127.0.0.1", free_port())}
        server = NodeServer(
            NodeConfig("n1", cluster, Path("."), SECRET), CoordinationMachine(), MemoryStorage()
        )
        mirror = RedisMirror(server, private.url)
        server.plugins.append(mirror)
        await server.start()
        try:
            while not server.host.is_leader:
                await asyncio.sleep(0.01)
            async with AsyncRaftClient([cluster["n1"]], SECRET, timeout=3) as client:
                versions = {}
                for i in range(50):
                    versions[f"k{i}"] = await client.propose(c.cache_set(f"k{i}", b"a", None))
                await _until(lambda: mirror.lag() == 0)
                private.kill()
                started = time.perf_counter()
                for i in range(50, 150):  # Redis is down: commits must not wait for it
                    versions[f"k{i}"] = await client.propose(c.cache_set(f"k{i}", b"b", None))
                versions["k0"] = await client.propose(c.cache_set("k0", b"newer", None))
                assert time.perf_counter() - started < 5.0
                assert not mirror.up or mirror.lag() > 0
                private.start()  # back, and empty
                await _until(lambda: mirror.up and mirror.lag() == 0, timeout=20)
            return versions
        finally:
            server.stop()
            await server._shutdown()

    try:
        versions = asyncio.run(main())
        r = redis.Redis(port=private.port)
        for key, version in versions.items():
            assert _mirrored(r, key) == (
                version,
                b"newer" if key == "k0" else (b"a" if int(key[1:]) < 50 else b"b"),
            ), key
        # The guard: an older version never overwrites a newer one, replays are no-ops.
        script = r.register_script(GUARDED_WRITE)
        assert script(keys=[PREFIX + "k0"], args=[1, b"old", 0, "0", 1000]) == 0
        assert _mirrored(r, "k0")[1] == b"newer"
    finally:
        private.kill()


async def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


def test_command_encoding_helpers_roundtrip():
    assert msgpack.unpackb(c.cache_set("k", b"v", 5)) == ["cache.set", "k", b"v", 5]
