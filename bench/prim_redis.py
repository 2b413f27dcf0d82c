"""redis-py side of the primitives benchmark: the same scenarios as ``prim_raftsync.py`` on a
local Redis, with redis-py's own building blocks:

- locks: ``redis.lock.Lock`` / ``redis.asyncio.lock.Lock`` (SET NX PX to take, a Lua script to
  release; a blocking acquire polls every ``sleep`` seconds, redis-py's default 0.1 s);
- queue: the reliable-queue pattern, ``LPUSH`` to put, ``LMOVE``/``BLMOVE`` into a per-consumer
  processing list to get, ``LREM`` from it to ack;
- cache: ``GET``/``SET``; the L1 is redis-py's client-side caching (RESP3 + ``CacheConfig``,
  LRU with server-assisted invalidation), which needs Redis 7.4 or later: on an older server
  those phases record ``unavailable`` with redis-py's message.

Every key starts with the run's prefix in the benchmark's database; ``cleanup`` deletes them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import redis
import redis.asyncio as aredis
from prim_common import (
    Holders,
    Samples,
    Window,
    cache_value,
    guarded,
    now,
    payload,
    run_threads,
    sent_at,
)
from prim_zipf import workload
from redis.lock import Lock

SOCKET_TIMEOUT = 10.0


def _client(p: dict[str, Any], **kw: Any) -> redis.Redis:
    return redis.Redis.from_url(p["redis_url"], socket_timeout=SOCKET_TIMEOUT, **kw)


def _aclient(p: dict[str, Any]) -> aredis.Redis:
    return aredis.Redis.from_url(p["redis_url"], socket_timeout=SOCKET_TIMEOUT)


def _bound(p: dict[str, Any], extra: float = 0.0) -> float:
    return p["warmup"] + p["seconds"] + extra + 3 * SOCKET_TIMEOUT


def cleanup(p: dict[str, Any]) -> int:
    """Delete every key of this run's prefix (SCAN + UNLINK); returns how many."""
    r = _client(p)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in r.scan_iter(match=p["prefix"] + "*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += r.unlink(*batch)
                batch = []
        if batch:
            deleted += r.unlink(*batch)
        return deleted
    finally:
        r.close()


# -- locks ----------------------------------------------------------------------------------------


def lock_uncontended(r: redis.Redis, p: dict[str, Any]) -> dict[str, Any]:
    name = p["prefix"] + "lock-uncontended"
    s = Samples(Window(p["warmup"], p["seconds"]))
    acquire = Samples(s.window)
    while not s.window.over():
        t0 = now()
        try:
            with r.lock(name, timeout=10):
                t_acq = now()
        except redis.RedisError as exc:
            s.error(exc)
            time.sleep(0.01)
            continue
        s.done(t0)
        acquire.done(t0, t_acq)
    return s.summary(acquire_only=acquire.summary())


def lock_contended(r: redis.Redis, p: dict[str, Any]) -> dict[str, Any]:
    n, wait = p["lock_threads"], p["lock_wait"]
    name = p["prefix"] + "lock-contended"
    barrier = threading.Barrier(n)
    s = Samples(Window(p["warmup"], p["seconds"]))
    holders = Holders(n, s.window)

    def worker(i: int) -> None:
        lock = Lock(r, name, timeout=30, sleep=p["redis_lock_sleep"], blocking_timeout=wait)
        barrier.wait(timeout=10)
        while not s.window.over():
            t0 = now()
            try:
                acquired = lock.acquire(blocking=True)
            except redis.RedisError as exc:
                s.error(exc)
                time.sleep(0.01)
                continue
            t1 = now()
            if not acquired:
                s.count("wait_timeouts")
                continue
            s.done(t0, t1)
            holders.took(i, t1)
            try:
                lock.release()
            except redis.RedisError as exc:
                s.error(exc)

    run_threads(n, worker, _bound(p, wait))
    out = s.summary()
    out.update(holders.summary())
    out["threads"] = n
    out["poll_sleep_s"] = p["redis_lock_sleep"]
    return out


async def _lock_throughput(p: dict[str, Any]) -> dict[str, Any]:
    n = p["lock_clients"]
    clients = [_aclient(p) for _ in range(n)]
    try:
        s = Samples(Window(p["warmup"], p["seconds"]))

        async def worker(i: int) -> None:
            k = 0
            while not s.window.over():
                k += 1
                t0 = now()
                try:
                    async with clients[i].lock(f"{p['prefix']}lock-tp-{i}-{k % 64}", timeout=10):
                        pass
                except redis.RedisError as exc:
                    s.error(exc)
                    await asyncio.sleep(0.01)
                    continue
                s.done(t0)

        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(n))), _bound(p))
        return s.summary(clients=n)
    finally:
        for client in clients:
            await client.aclose()


def locks(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    r = _client(p)
    try:
        out["uncontended"] = guarded(lock_uncontended, r, p)
        out["contended"] = guarded(lock_contended, r, p)
    finally:
        r.close()
    out["throughput"] = guarded(lambda: asyncio.run(_lock_throughput(p)))
    return out


# -- queue ----------------------------------------------------------------------------------------


async def _producers(client: aredis.Redis, name: str, count: int, s: Samples) -> None:
    async def producer() -> None:
        while not s.window.over():
            t0 = now()
            try:
                await client.lpush(name, payload())
            except redis.RedisError as exc:
                s.error(exc)
                await asyncio.sleep(0.01)
                continue
            s.done(t0)

    await asyncio.gather(*(producer() for _ in range(count)))


async def _consumers(
    clients: list[aredis.Redis], name: str, per_client: int, wait: float, s: Samples
) -> dict[str, Any]:
    """Get = move the oldest message into this consumer's processing list (``LMOVE``, or
    ``BLMOVE`` blocking up to ``wait``); ack = ``LREM`` it from there."""
    drained: list[int] = []
    counter = iter(range(10**9))

    async def consumer(client: aredis.Redis) -> None:
        processing = f"{name}:processing:{next(counter)}"
        while not s.window.over() and not drained:
            t0 = now()
            try:
                if wait:
                    msg = await client.blmove(name, processing, wait, "RIGHT", "LEFT")
                else:
                    msg = await client.lmove(name, processing, "RIGHT", "LEFT")
                if msg is None:
                    if wait == 0:
                        drained.append(now())
                    continue
                await client.lrem(processing, 1, msg)
            except redis.RedisError as exc:
                s.error(exc)
                await asyncio.sleep(0.01)
                continue
            s.done(sent_at(msg) if wait else t0)

    await asyncio.gather(*(consumer(c) for c in clients for _ in range(per_client)))
    return {"drained_at": drained[0] if drained else None}


def _rate_until(s: Samples, drained_at: int | None) -> dict[str, Any]:
    w = s.window
    if drained_at is not None and drained_at < w.end:
        if drained_at <= w.start:
            return s.summary(elapsed=0.0, note="backlog drained during the warm-up")
        return s.summary(elapsed=(drained_at - w.start) / 1e9, drained_early=True)
    return s.summary()


async def _queue(p: dict[str, Any]) -> dict[str, Any]:
    name = p["prefix"] + "queue"
    qp = {**p, "seconds": p["queue_seconds"]}
    out: dict[str, Any] = {}
    producer_client = _aclient(p)
    consumer_clients = [_aclient(p) for _ in range(p["queue_sessions"])]
    try:
        s = Samples(Window(qp["warmup"], qp["seconds"]))
        try:
            await asyncio.wait_for(
                _producers(producer_client, name, p["queue_producers"], s), _bound(qp)
            )
            out["put"] = s.summary(producers=p["queue_producers"])
        except Exception as exc:
            out["put"] = {"error": f"{type(exc).__name__}: {exc}"}
        out["backlog_after_put"] = {"ready": await producer_client.llen(name)}

        s = Samples(Window(qp["warmup"], qp["seconds"]))
        try:
            got = await asyncio.wait_for(
                _consumers(consumer_clients, name, p["queue_per_session"], 0.0, s), _bound(qp)
            )
            out["get_ack"] = _rate_until(s, got["drained_at"])
            out["get_ack"]["consumers"] = p["queue_sessions"] * p["queue_per_session"]
        except Exception as exc:
            out["get_ack"] = {"error": f"{type(exc).__name__}: {exc}"}
        await producer_client.delete(name)

        s = Samples(Window(qp["warmup"], qp["seconds"]))
        prod = Samples(s.window)
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    _producers(producer_client, name, p["queue_e2e_producers"], prod),
                    _consumers(consumer_clients, name, p["queue_per_session"], 1.0, s),
                ),
                _bound(qp, 2.0),
            )
            out["e2e"] = s.summary(
                producers=p["queue_e2e_producers"],
                consumers=p["queue_sessions"] * p["queue_per_session"],
                put_per_s=prod.summary()["ops_per_s"],
                backlog_at_end=await producer_client.llen(name),
            )
        except Exception as exc:
            out["e2e"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        for client in [producer_client, *consumer_clients]:
            await client.aclose()
    return out


def queue(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_queue(p))


# -- cache ----------------------------------------------------------------------------------------


def _sequential(p: dict[str, Any], seconds: float, op: Any) -> dict[str, Any]:
    s = Samples(Window(min(p["warmup"], 0.5), seconds))
    i = 0
    while not s.window.over():
        i += 1
        t0 = now()
        try:
            op(i)
        except redis.RedisError as exc:
            s.error(exc)
            continue
        s.done(t0)
    return s.summary()


class _CscCounter:
    """Counts redis-py's client-side-cache hits and misses through the hook it reports them to
    (``redis.connection.record_csc_request``), restored on exit."""

    def __init__(self) -> None:
        self.hits = self.misses = 0

    def __enter__(self) -> _CscCounter:
        import redis.connection as rc

        self._module, self._orig = rc, rc.record_csc_request

        def hook(*args: Any, **kwargs: Any) -> Any:
            if str(kwargs.get("result", "")).upper().endswith("HIT"):
                self.hits += 1
            else:
                self.misses += 1
            return self._orig(*args, **kwargs)

        rc.record_csc_request = hook
        return self

    def __exit__(self, *exc: object) -> None:
        self._module.record_csc_request = self._orig


def _csc_client(p: dict[str, Any]) -> redis.Redis:
    from redis.cache import CacheConfig

    r = _client(p, protocol=3, cache_config=CacheConfig(max_size=p["cache_l1"]))
    r.ping()  # redis-py refuses here on a server older than 7.4
    return r


def cache_l1_hit(p: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    try:
        r = _csc_client(p)
    except redis.RedisError as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    try:
        with _CscCounter() as counter:
            for k in keys:
                r.get(k)
            s = Samples(Window(0.1, min(1.0, p["seconds"])))
            i = 0
            while not s.window.over():
                i += 1
                hits = counter.hits
                t0 = now()
                r.get(keys[i % len(keys)])
                t1 = now()
                if counter.hits > hits:
                    s.done(t0, t1)
                else:
                    s.count("misses")
        return s.summary()
    finally:
        r.close()


def cache_zipf(p: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    try:
        r = _csc_client(p)
    except redis.RedisError as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    ops = workload(
        len(keys),
        p["zipf_s"],
        p["zipf_seed"],
        p["read_fraction"],
        p["zipf_warmup"] + p["zipf_ops"],
    )
    value = cache_value(7)
    try:
        with _CscCounter() as counter:
            hits0 = misses0 = 0
            t_start = now()
            for n, (is_read, rank) in enumerate(ops):
                if n == p["zipf_warmup"]:
                    hits0, misses0, t_start = counter.hits, counter.misses, now()
                if is_read:
                    r.get(keys[rank])
                else:
                    r.set(keys[rank], value)
            elapsed = (now() - t_start) / 1e9
            hits, misses = counter.hits - hits0, counter.misses - misses0
        return {
            "ops": p["zipf_ops"],
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else float("nan"),
            "elapsed_s": elapsed,
            "ops_per_s": p["zipf_ops"] / elapsed if elapsed > 0 else 0.0,
            "policy": "redis-py client-side cache (LRU), max_size=" + str(p["cache_l1"]),
        }
    finally:
        r.close()


def cache(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    r = _client(p)
    try:
        out["server_version"] = r.info("server").get("redis_version")
        zipf_keys = [f"{p['prefix']}z:{i:05d}" for i in range(p["zipf_keys"])]
        hot_keys = [f"{p['prefix']}hot:{i:03d}" for i in range(100)]
        value = cache_value(1)
        t0 = now()
        for i in range(0, len(zipf_keys + hot_keys), 1000):
            r.mset({k: value for k in (zipf_keys + hot_keys)[i : i + 1000]})
        out["preload_s"] = (now() - t0) / 1e9
        out["l1_hit"] = guarded(cache_l1_hit, p, hot_keys)
        out["cluster_read"] = guarded(
            _sequential, p, p["seconds"], lambda i: r.get(hot_keys[i % len(hot_keys)])
        )
        write_keys = [f"{p['prefix']}w:{i:03d}" for i in range(100)]
        out["write"] = guarded(
            _sequential, p, p["seconds"], lambda i: r.set(write_keys[i % 100], cache_value(2))
        )
        out["zipf"] = guarded(cache_zipf, p, zipf_keys)
        return out
    finally:
        r.close()


AREAS = {"locks": locks, "queue": queue, "cache": cache}
