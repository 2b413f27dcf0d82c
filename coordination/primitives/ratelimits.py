"""Rate limits: token buckets on log time, one per key, shared by every client of the cluster.

Celery's ``rate_limit`` task option holds per worker process, so N workers run N times the rate
(celery#5732, #4727). Here the bucket lives in the replicated state machine: every worker,
web process and script takes tokens from the same bucket, and the limit holds across a leader
change, because the bucket's clock is the *log time* (``ctx.now_ms``, stamped by the leader and
never going backwards on any replica), not anyone's wall clock.

- **Rate and burst.** A rate is ``count`` tokens per ``period_ms`` (``coordination.primitives
  .rates``: ``"100/s"``, ``"100/m"``, ``"100/h"``); a bucket holds at most ``burst`` tokens and
  a new bucket starts full. The latest ``take`` of a key sets its rate and burst (changing a
  limit takes effect at once); the tokens carry over, capped at the new burst, and a full
  bucket stays full (at the new burst), so a kept bucket and a dropped one behave alike.
- **Exact integer math.** A bucket's *level* is its tokens times ``period_ms``, an integer: in
  ``dt`` ms of log time it gains ``count * dt`` (capped at ``burst * period_ms``), and taking
  ``n`` tokens costs ``n * period_ms``. No float ever enters the state, so every replica
  computes the same level, and the wait is exact: ``ceil((n * period_ms - level) / count)``
  ms, after which the bucket holds ``n`` tokens if nobody took any meanwhile.
- **take** ``[key, count, period_ms, burst, n]`` answers ``{"granted", "wait_ms", "tokens",
  "burst"}``. Granted: ``n`` tokens are gone and ``wait_ms`` is 0. Refused: nothing is taken
  (no reservation: a refused caller retries after ``wait_ms``, and whoever comes first then is
  served first) and ``wait_ms`` is the countdown until ``n`` tokens exist. ``n`` is at most
  ``burst`` (more could never be granted: ``limit_exceeded``).
- **Bounded memory.** A bucket that has refilled to ``burst`` is indistinguishable from no
  bucket (a new one starts full with the rate the next ``take`` brings), so it is dropped. Each
  bucket has a deadline, the log time at which it will be full again, rounded up to the next
  whole second (``DROP_GRANULARITY_MS``) so that buckets going idle together share one tick
  entry; the ``tick`` reaching it drops the bucket. Memory is therefore bounded by the buckets
  still refilling, at most ``RATELIMIT_BUCKETS_MAX``: a new key beyond that is refused with
  ``limit_exceeded`` (an existing one is always served).
- **Bad input** is refused before anything changes: ``invalid_rate`` (zero or negative count,
  period or burst out of range), ``limit_exceeded`` (a key past ``NAME_MAX_BYTES``, ``n`` over
  the burst, too many buckets), ``bad_command`` (arity, types, key characters).

Queries (answered by the log time of the last applied entry, via ``observe_time``):
``ratelimit.get [key]`` (a bucket's view, or None: no bucket means full), ``ratelimit.list
[prefix, limit]`` (views by key), ``ratelimit.stats []``. A view is ``{"key", "count",
"period_ms", "burst", "tokens" (float, now), "full_in_ms", "updated_ms"}``.

Snapshot: ``{"buckets": [[key, count, period_ms, burst, level, last_ms], ...], "counters":
[now_ms, dropped]}`` in creation order; the drop deadlines are derived from it.
"""

from __future__ import annotations

from typing import Any

from coordination.exceptions import InvalidRate
from coordination.primitives import limits, rates
from coordination.primitives.base import Check, Ctx, Deadlines, Op, Query
from coordination.primitives.errors import BAD_COMMAND, INVALID_RATE, LIMIT, reject

__all__ = ["DROP_GRANULARITY_MS", "LIST_MAX", "RateLimits", "ceil_div"]

DROP_GRANULARITY_MS = 1_000
LIST_MAX = 1_000


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _Bucket:
    __slots__ = ("burst", "count", "drop_at", "last", "level", "period")

    def __init__(self, count: int, period: int, burst: int, level: int, last: int) -> None:
        self.count, self.period, self.burst = count, period, burst
        self.level, self.last = level, last
        self.drop_at = 0

    @property
    def cap(self) -> int:
        return self.burst * self.period

    def level_at(self, now: int) -> int:
        return min(self.cap, self.level + max(0, now - self.last) * self.count)

    def refill(self, now: int) -> None:
        if now > self.last:
            self.level, self.last = self.level_at(now), now

    def full_at(self) -> int:
        """Log time at which the bucket is full again (nothing taken meanwhile)."""
        return self.last + ceil_div(self.cap - self.level, self.count)

    def drop_time(self) -> int:
        """When it can be dropped: full again, rounded up to ``DROP_GRANULARITY_MS``."""
        return ceil_div(self.full_at(), DROP_GRANULARITY_MS) * DROP_GRANULARITY_MS

    def view(self, key: str, now: int) -> dict[str, Any]:
        level = self.level_at(now)
        return {
            "key": key,
            "count": self.count,
            "period_ms": self.period,
            "burst": self.burst,
            "tokens": level / self.period,
            "full_in_ms": max(0, ceil_div(self.cap - level, self.count)),
            "updated_ms": self.last,
        }


def _rate(count: Any, period: Any, burst: Any) -> tuple[int, int, int]:
    try:
        count, period = rates.check_rate(count, period)
        return count, period, rates.check_burst(burst)
    except InvalidRate as exc:
        reject(INVALID_RATE, exc.message)


class RateLimits:
    name = "ratelimits"

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.buckets: dict[str, _Bucket] = {}  # creation order
        self.now_ms = 0  # log time of the last applied entry (queries)
        self.dropped = 0  # buckets dropped full, in total
        self._deadlines = Deadlines()

    def ops(self) -> dict[str, Op]:
        return {"ratelimit.take": self.take}

    def checks(self) -> dict[str, Check]:
        """Arity only: the next checks are cheap but not worth a second copy."""
        return limits.arities({"ratelimit.take": 5})

    def queries(self) -> dict[str, Query]:
        return {
            "ratelimit.get": self.get,
            "ratelimit.list": self.list,
            "ratelimit.stats": self.stats,
        }

    def observe_time(self, now_ms: int) -> None:
        self.now_ms = max(self.now_ms, now_ms)

    # -- ops ------------------------------------------------------------------------------------

    def take(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        key, count, period, burst, n = limits.args(args, 5, "ratelimit.take")
        key = limits.name(key, "rate limit key")
        count, period, burst = _rate(count, period, burst)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            reject(BAD_COMMAND, f"n must be a positive integer, got {n!r}")
        if n > burst:
            reject(
                LIMIT,
                f"taking {n} tokens of {key!r} can never succeed: the burst is {burst}",
                key=key,
                burst=burst,
            )
        now = ctx.now_ms
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= limits.RATELIMIT_BUCKETS_MAX:
                reject(
                    LIMIT,
                    f"{limits.RATELIMIT_BUCKETS_MAX} rate limit buckets are refilling "
                    "(RATELIMIT_BUCKETS_MAX); retry later",
                )
            bucket = self.buckets[key] = _Bucket(count, period, burst, burst * period, now)
        else:
            bucket.refill(now)
            if (bucket.count, bucket.period, bucket.burst) != (count, period, burst):
                full = bucket.level >= bucket.cap
                level = bucket.level * period // bucket.period  # same tokens, new unit
                bucket.count, bucket.period, bucket.burst = count, period, burst
                # A full bucket stays full (at the new burst), as a dropped one would be.
                bucket.level = bucket.cap if full else min(bucket.cap, level)
        need = n * period
        granted = bucket.level >= need
        if granted:
            bucket.level -= need
        wait = 0 if granted else ceil_div(need - bucket.level, count)
        self._schedule(key, bucket)
        return {
            "granted": granted,
            "wait_ms": wait,
            "tokens": bucket.level / period,
            "burst": burst,
        }

    # -- queries --------------------------------------------------------------------------------

    def get(self, args: list[Any]) -> dict[str, Any] | None:
        (key,) = limits.args(args, 1, "ratelimit.get")
        bucket = self.buckets.get(limits.name(key, "rate limit key"))
        return None if bucket is None else bucket.view(key, self.now_ms)

    def list(self, args: list[Any]) -> list[dict[str, Any]]:
        prefix, limit = limits.prefix_and_limit(args, "ratelimit.list", most=LIST_MAX)
        keys = sorted(k for k in self.buckets if k.startswith(prefix))[:limit]
        return [self.buckets[k].view(k, self.now_ms) for k in keys]

    def stats(self, args: list[Any]) -> dict[str, Any]:
        limits.args(args, 0, "ratelimit.stats")
        return {
            "buckets": len(self.buckets),
            "dropped": self.dropped,
            "max_buckets": limits.RATELIMIT_BUCKETS_MAX,
        }

    # -- time -----------------------------------------------------------------------------------

    def _schedule(self, key: str, bucket: _Bucket) -> None:
        drop_at = bucket.drop_time()
        if drop_at != bucket.drop_at:
            bucket.drop_at = drop_at
            self._deadlines.push(drop_at, key)

    def _deadline_of(self, key: str) -> int | None:
        bucket = self.buckets.get(key)
        return None if bucket is None else bucket.drop_at

    def next_deadline(self) -> int | None:
        return self._deadlines.next(self._deadline_of)

    def tick(self, ctx: Ctx) -> None:
        for key in self._deadlines.due(ctx.now_ms, self._deadline_of):
            del self.buckets[key]  # full again (drop_at >= full_at): as good as absent
            self.dropped += 1

    def session_ended(self, ctx: Ctx, session_id: int) -> None:
        """Buckets belong to keys, not sessions."""

    # -- snapshots ------------------------------------------------------------------------------

    def to_state(self) -> Any:
        buckets = [
            [key, b.count, b.period, b.burst, b.level, b.last] for key, b in self.buckets.items()
        ]
        return {"buckets": buckets, "counters": [self.now_ms, self.dropped]}

    def from_state(self, state: Any) -> None:
        """``None``: a snapshot taken before this part existed (no buckets: all full)."""
        self._reset()
        if state is None:
            return
        self.now_ms, self.dropped = state["counters"]
        deadlines: list[tuple[int, Any]] = []
        for key, count, period, burst, level, last in state["buckets"]:
            bucket = self.buckets[key] = _Bucket(count, period, burst, level, last)
            bucket.drop_at = bucket.drop_time()
            deadlines.append((bucket.drop_at, key))
        self._deadlines.rebuild(deadlines)
