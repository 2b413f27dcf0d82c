"""Write-through of the replicated cache to Redis, by the leader, without ever blocking a commit.

The cluster is the source of truth; Redis is a mirror that lets readers find values the cluster
evicted from memory, and lets tools that speak Redis see the cache. Only the current leader
mirrors. After every applied batch it asks the cache for ``changes_since(mirrored)`` (the latest
value of each key changed after the last *change sequence number* Redis confirmed: the cache
numbers its changes, because writes waiting for L1 holders take effect out of version order) and
pushes them with a Lua script that refuses to regress: a key's hash ``{v: version, d: data}`` is
only replaced by a higher *version* (per key), so replays, duplicate pushes and a slow old leader
are all harmless.

Redis down never blocks anything: the push runs in its own asyncio task, commits go on, and when
Redis is back the next push starts again from the last confirmed change (coalesced: each key
once, with its latest value). If Redis came back empty (restarted without persistence: the
marker key written after each full sync is gone), the mirror resyncs everything. A new leader
starts with a full resync too. All of it is idempotent under the version guard.
Deletes and expiries become tombstones (version kept, data removed) so an older value can never
come back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from raft_node.server import NodeServer

log = logging.getLogger("raft_node.server")

PREFIX = "raftsync:cache:"
TOMBSTONE_TTL_MS = 24 * 3_600_000
CHUNK = 500

# KEYS[1] key; ARGV: version, data ("" with tombstone), ttl_ms (0 = none), tombstone ("1"/"0")
GUARDED_WRITE = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'v', ARGV[1])
  redis.call('HDEL', KEYS[1], 'd')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"""


class RedisMirror:
    def __init__(self, server: NodeServer, url: str, prefix: str = PREFIX) -> None:
        self.server = server
        self.host = server.host
        self.cache = server.host.state_machine.part("cache")
        self.prefix = prefix
        self.redis = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.script = self.redis.register_script(GUARDED_WRITE)
        self.mirrored = 0  # cache change sequence Redis has confirmed (this leadership); 0: all
        self.up = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._was_leader = False

    # -- node plugin ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.host.apply_listeners.append(self._on_applied)
        # Supervised by the node: a bug in the mirror stops the node (event=fatal) rather than
        # leaving it serving with a mirror that silently stopped (Redis errors are retried).
        self._task = self.server.spawn(self._run(), "redis-mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.redis.aclose()

    def lag(self) -> int:
        return max(0, self.cache.latest_change() - self.mirrored)

    def _on_applied(self, index: int) -> None:
        leader = self.host.is_leader
        if leader and not self._was_leader:
            self.mirrored = 0  # others may have written meanwhile: resync (guarded, idempotent)
        self._was_leader = leader
        if leader and self.cache.latest_change() > self.mirrored:
            self._wake.set()

    # -- pushing --------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.host.is_leader and self.cache.latest_change() > self.mirrored:
                try:
                    await self._push_once()
                except (RedisError, OSError, TimeoutError) as exc:
                    if self.up:
                        log.warning("event=redis_mirror_down error=%r lag=%d", exc, self.lag())
                    self.up = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if not self.up:
                    log.info("event=redis_mirror_up mirrored=%d", self.mirrored)
                self.up, backoff = True, 0.1

    async def _push_once(self) -> None:
        marker = self.prefix + "__synced__"
        if self.mirrored and not await self.redis.exists(marker):
            self.mirrored = 0  # Redis lost its data (restart without persistence): resync all
        full = self.mirrored == 0
        target = self.cache.latest_change()  # everything up to here is in ``changes``
        changes = self.cache.changes_since(self.mirrored)
        if changes is None:  # deletes trimmed past our watermark, or a clear: full resync
            self.mirrored, full = 0, True
            changes = self.cache.current_values()
        now_ms = self.host.log_time_ms
        for start in range(0, len(changes), CHUNK):
            chunk = changes[start : start + CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for key, value, version, expires_ms in chunk:
                await self._queue_write(pipe, key, value, version, expires_ms, now_ms)
            await pipe.execute()
        # Changes carry key versions, not change numbers: the watermark moves only once all
        # chunks are in (a failed push is retried from the previous one, guarded, idempotent).
        self.mirrored = max(self.mirrored, target)
        if full:
            await self.redis.set(marker, str(self.mirrored))

    async def _queue_write(
        self,
        pipe: Any,
        key: str,
        value: bytes | None,
        version: int,
        expires_ms: int | None,
        now_ms: int,
    ) -> None:
        ttl = 0 if expires_ms is None else expires_ms - now_ms
        tombstone = value is None or (expires_ms is not None and ttl <= 0)
        args = [
            version,
            b"" if tombstone else value,
            max(ttl, 0),
            "1" if tombstone else "0",
            TOMBSTONE_TTL_MS,
        ]
        await self.script(keys=[self.prefix + key], args=args, client=pipe)  # queues it


async def read_back(client: aioredis.Redis, key: str, version: int, prefix: str = PREFIX) -> Any:
    """Value of an evicted key from Redis, only if Redis holds exactly ``version``."""
    got = await client.hmget(prefix + key, ["v", "d"])
    if got[0] is None or int(got[0]) != version or got[1] is None:
        return None
    return got[1]
