"""Cluster-wide rate limits from Python: a handle on one token bucket of the cluster.

    limit = coord.rate_limit("api:github", "100/m")        # burst: one period's worth
    granted, retry_after = limit.try_acquire()              # one take, never waits
    limit.acquire(timeout=5)                                # sleeps the computed wait
    await acoord.rate_limit("api:github", "100/m").acquire()   # AsyncCoordinator: awaited

Every take is one log entry on the cluster's bucket (``coordination.primitives.ratelimits``),
so the limit holds across every process that uses the key, and across a leader change. A
refused take answers how long until enough tokens exist; ``acquire`` sleeps exactly that long
and asks again (it is not a polling loop: one take per wait, and it wakes when the tokens are
due). Nothing is reserved while it sleeps, so under contention another caller may take the
tokens first; the next answer then says how long to wait again.

``RateLimitSpec`` is the sans-I/O part (parsing the rate, building the take, reading its
answer) shared by ``RateLimit`` (blocking) and ``AsyncRateLimit``, which differ only in how
they wait. A bad rate raises ``InvalidRate`` here, before anything is sent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import coordination.client.operations as ops
from coordination.client.operations import Operation
from coordination.primitives.rates import check_burst, default_burst, parse_rate

__all__ = ["AsyncRateLimit", "RateLimit", "RateLimitSpec"]


class RateLimitSpec:
    """A key, its rate (``"100/s"``, ``"100/m"``, ``"100/h"`` or ``(count, period_ms)``) and
    its burst (default: the count, one period's worth)."""

    def __init__(self, key: str, rate: Any, burst: int | None = None) -> None:
        self.key = key
        self.count, self.period_ms = parse_rate(rate)
        self.burst = default_burst(self.count) if burst is None else check_burst(burst)
        self.retry_after = 0.0  # the latest take's countdown (0.0: it was granted)

    @property
    def rate(self) -> str:
        return f"{self.count}/{self.period_ms}ms"

    def _take_op(self, n: int) -> Operation[tuple[bool, float]]:
        def answer(result: dict[str, Any]) -> tuple[bool, float]:
            self.retry_after = result["wait_ms"] / 1000
            return bool(result["granted"]), self.retry_after

        body = ops.ratelimit_take(self.key, self.count, self.period_ms, self.burst, n).body
        return Operation(body, True, answer)

    @staticmethod
    def _give_up(wait: float, deadline: float | None) -> bool:
        """True if a wait of ``wait`` seconds would end past ``deadline`` (monotonic)."""
        return deadline is not None and time.monotonic() + wait > deadline

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r} {self.rate} burst={self.burst}>"


class RateLimit(RateLimitSpec):
    def __init__(self, coord: Any, key: str, rate: Any, burst: int | None = None) -> None:
        super().__init__(key, rate, burst)
        self.coord = coord

    def try_acquire(self, n: int = 1) -> tuple[bool, float]:
        """Take ``n`` tokens if they are there: ``(True, 0.0)``, else ``(False, seconds)``
        until they will be (a countdown for a retry)."""
        return self.coord.run(self._take_op(n))

    def acquire(self, n: int = 1, timeout: float | None = None) -> bool:
        """Take ``n`` tokens, sleeping for each computed wait; False (nothing taken) as soon
        as the next wait would end after ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            granted, wait = self.try_acquire(n)
            if granted:
                return True
            if self._give_up(wait, deadline):
                return False
            time.sleep(wait)

    def inspect(self) -> dict[str, Any] | None:
        """The bucket now (``tokens``, ``full_in_ms``...), or None: no bucket, a full one."""
        return self.coord.run(ops.ratelimit_get(self.key))


class AsyncRateLimit(RateLimitSpec):
    def __init__(self, coord: Any, key: str, rate: Any, burst: int | None = None) -> None:
        super().__init__(key, rate, burst)
        self.coord = coord

    async def try_acquire(self, n: int = 1) -> tuple[bool, float]:
        return await self.coord.run(self._take_op(n))

    async def acquire(self, n: int = 1, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            granted, wait = await self.try_acquire(n)
            if granted:
                return True
            if self._give_up(wait, deadline):
                return False
            await asyncio.sleep(wait)

    async def inspect(self) -> dict[str, Any] | None:
        return await self.coord.run(ops.ratelimit_get(self.key))
