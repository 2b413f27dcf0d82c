"""The ``semaphore`` area of the primitives benchmark, both systems (run by ``prim_load.py``):

- **raftsync**: ``coord.semaphore(name, limit)``. Uncontended: one client, sequential
  ``with`` (acquire + release, two log entries). Contended: ``lock_threads`` threads, each its
  own session, on ONE semaphore of ``SEM_LIMIT`` slots, ``acquire(wait=...)`` + ``release()``
  in a loop (waits served by the leader in FIFO order).
- **redis-py** has no semaphore; the closest is the usual recipe: a sorted set of holders
  scored by expiry, taken and released by Lua scripts (``ACQUIRE``: drop expired holders,
  admit if fewer than ``limit``, fencing token from INCR; ``RELEASE``: ZREM). Contended
  waiters poll every ``redis_lock_sleep`` seconds (as ``redis.lock.Lock`` does): no queue,
  no fairness, no session; a dead holder frees its slot at its expiry.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis
from prim_common import Holders, Samples, Window, guarded, now, run_threads

from coordination.client import Coordinator
from coordination.exceptions import RaftError

SEM_LIMIT = 3
CLIENT_TIMEOUT = 5.0
SLOT_TTL_MS = 30_000  # the Redis recipe's holder expiry (raftsync: the session's TTL)

ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  return redis.call('INCR', KEYS[2])
end
return false
"""
RELEASE = "return redis.call('ZREM', KEYS[1], ARGV[1])"


def _bound(p: dict[str, Any], extra: float = 0.0) -> float:
    return p["warmup"] + p["seconds"] + extra + 3 * CLIENT_TIMEOUT


def _contended(p: dict[str, Any], take: Any, give: Any) -> dict[str, Any]:
    """``lock_threads`` workers: ``take(i) -> bool`` (waits up to ``lock_wait``), ``give(i)``."""
    n = p["lock_threads"]
    s = Samples(Window(p["warmup"], p["seconds"]))
    holders = Holders(n, s.window)

    def worker(i: int) -> None:
        while not s.window.over():
            t0 = now()
            try:
                acquired = take(i)
            except (RaftError, redis.RedisError) as exc:
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
                give(i)
            except (RaftError, redis.RedisError) as exc:
                s.error(exc)

    run_threads(n, worker, _bound(p, p["lock_wait"]))
    out = s.summary()
    out.update(holders.summary())
    out.update(threads=n, limit=SEM_LIMIT)
    return out


# -- raftsync -------------------------------------------------------------------------------------


def _ours_uncontended(coord: Coordinator, p: dict[str, Any]) -> dict[str, Any]:
    name = p["prefix"] + "sem-uncontended"
    coord.default_session  # noqa: B018 - open the session before the clock starts
    s = Samples(Window(p["warmup"], p["seconds"]))
    acquire = Samples(s.window)
    while not s.window.over():
        t0 = now()
        try:
            with coord.semaphore(name, SEM_LIMIT):
                t_acq = now()
        except RaftError as exc:
            s.error(exc)
            time.sleep(0.01)
            continue
        s.done(t0)
        acquire.done(t0, t_acq)
    return s.summary(acquire_only=acquire.summary(), limit=SEM_LIMIT)


def _ours_contended(coord: Coordinator, p: dict[str, Any]) -> dict[str, Any]:
    name = p["prefix"] + "sem-contended"
    n = p["lock_threads"]
    sessions = [coord.session(label=f"bench-sem-{i}") for i in range(n)]
    slots = [coord.semaphore(name, SEM_LIMIT, session=sessions[i], owner="b") for i in range(n)]
    try:
        return _contended(
            p, lambda i: slots[i].acquire(wait=p["lock_wait"]), lambda i: slots[i].release()
        )
    finally:
        for session in sessions:
            session.close()


def raftsync(p: dict[str, Any]) -> dict[str, Any]:
    coord = Coordinator(p["addresses"], p["secret"], timeout=CLIENT_TIMEOUT, name="bench-sem")
    try:
        return {
            "uncontended": guarded(_ours_uncontended, coord, p),
            "contended": guarded(_ours_contended, coord, p),
        }
    finally:
        coord.close()


# -- redis-py -------------------------------------------------------------------------------------


def _theirs_uncontended(r: redis.Redis, p: dict[str, Any]) -> dict[str, Any]:
    keys = [p["prefix"] + "sem-uncontended", p["prefix"] + "sem-uncontended:token"]
    acquire_script, release_script = r.register_script(ACQUIRE), r.register_script(RELEASE)
    me = uuid.uuid4().hex
    s = Samples(Window(p["warmup"], p["seconds"]))
    acquire = Samples(s.window)
    while not s.window.over():
        t0 = now()
        try:
            if not acquire_script(keys=keys, args=[SEM_LIMIT, me, SLOT_TTL_MS]):
                s.count("not_acquired")
                continue
            t_acq = now()
            release_script(keys=keys[:1], args=[me])
        except redis.RedisError as exc:
            s.error(exc)
            time.sleep(0.01)
            continue
        s.done(t0)
        acquire.done(t0, t_acq)
    return s.summary(acquire_only=acquire.summary(), limit=SEM_LIMIT)


def _theirs_contended(r: redis.Redis, p: dict[str, Any]) -> dict[str, Any]:
    keys = [p["prefix"] + "sem-contended", p["prefix"] + "sem-contended:token"]
    acquire_script, release_script = r.register_script(ACQUIRE), r.register_script(RELEASE)
    members = [uuid.uuid4().hex for _ in range(p["lock_threads"])]

    def take(i: int) -> bool:
        deadline = time.monotonic() + p["lock_wait"]
        while True:
            if acquire_script(keys=keys, args=[SEM_LIMIT, members[i], SLOT_TTL_MS]):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(p["redis_lock_sleep"])

    out = _contended(p, take, lambda i: release_script(keys=keys[:1], args=[members[i]]))
    out["poll_sleep_s"] = p["redis_lock_sleep"]
    return out


def redis_py(p: dict[str, Any]) -> dict[str, Any]:
    r = redis.Redis.from_url(p["redis_url"], socket_timeout=CLIENT_TIMEOUT)
    try:
        return {
            "uncontended": guarded(_theirs_uncontended, r, p),
            "contended": guarded(_theirs_contended, r, p),
        }
    finally:
        r.close()
