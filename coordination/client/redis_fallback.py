"""Reading a key the cluster evicted from memory back from its Redis mirror.

The replicated cache keeps a bounded amount of memory; a key it evicted is still answered with
its version (``{"evicted": True, "version": v}``), and the leader's Redis mirror
(``coordination.node.redis_mirror``) still holds the value. Redis is written behind the log, so
it may hold an older or newer version of the key than the cluster reports: the value is used only
if Redis holds exactly that version, so a read from Redis is never staler than the cluster.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RedisFallback"]


class RedisFallback:
    """One Redis connection of a cache client, used only for evicted keys."""

    def __init__(self, url: str, *, socket_timeout: float = 1.0) -> None:
        import redis  # only processes configured with a Redis mirror need the package

        self._redis = redis.Redis.from_url(url, socket_timeout=socket_timeout)

    def read(self, key: str, version: int) -> bytes | None:
        """The value of ``key`` at exactly ``version``, or None (absent, or another version)."""
        from coordination.node.redis_mirror import PREFIX

        got: Any = self._redis.hmget(PREFIX + key, ["v", "d"])
        if got[0] is None or int(got[0]) != version or got[1] is None:
            return None
        return got[1]

    def close(self) -> None:
        self._redis.close()
