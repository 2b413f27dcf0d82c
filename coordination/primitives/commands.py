"""Builders for every command and query of ``CoordinationMachine`` (msgpack ``[op, *args]``).

Pure functions, shared by the sync and asyncio clients and by tests and the simulator, so the
wire shape of each operation is written once. Times are milliseconds (ints) here; the clients
take seconds (floats) and convert.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack


def _cmd(op: str, *args: Any) -> bytes:
    return msgpack.packb([op, *args], use_bin_type=True)


# -- sessions -----------------------------------------------------------------------------------


def session_open(ttl_ms: int, label: str = "") -> bytes:
    return _cmd("session.open", ttl_ms, label)


def session_keepalive(session: int) -> bytes:
    return _cmd("session.keepalive", session)


def session_close(session: int) -> bytes:
    return _cmd("session.close", session)


def session_get(session: int) -> bytes:
    return _cmd("session.get", session)


def session_list() -> bytes:
    return _cmd("session.list")


# -- locks --------------------------------------------------------------------------------------


def lock_acquire(session: int, name: str, mode: str, owner: str, wait_ms: int) -> bytes:
    return _cmd("lock.acquire", session, name, mode, owner, wait_ms)


def lock_release(session: int, name: str, owner: str) -> bytes:
    return _cmd("lock.release", session, name, owner)


def lock_renew(session: int, name: str, owner: str) -> bytes:
    return _cmd("lock.renew", session, name, owner)


def lock_inspect(name: str) -> bytes:
    return _cmd("lock.inspect", name)


def lock_check_token(name: str, token: int) -> bytes:
    return _cmd("lock.check_token", name, token)


def lock_list(prefix: str = "", limit: int | None = None) -> bytes:
    """Locks with holders or waiters, by name; a ``limit`` (1..1000) narrows it to the first
    ones starting with ``prefix``."""
    if limit is None and not prefix:
        return _cmd("lock.list")
    return _cmd("lock.list", prefix, 1000 if limit is None else limit)


def lock_deadlocks() -> bytes:
    return _cmd("lock.deadlocks")


# -- semaphores ---------------------------------------------------------------------------------


def sem_acquire(session: int, name: str, limit: int, owner: str, wait_ms: int) -> bytes:
    return _cmd("sem.acquire", session, name, limit, owner, wait_ms)


def sem_release(session: int, name: str, owner: str) -> bytes:
    return _cmd("sem.release", session, name, owner)


def sem_inspect(name: str) -> bytes:
    return _cmd("sem.inspect", name)


def sem_check_token(name: str, token: int) -> bytes:
    return _cmd("sem.check_token", name, token)


def sem_list(prefix: str = "", limit: int | None = None) -> bytes:
    """Semaphores with holders or waiters, by name (``limit`` as in ``lock_list``)."""
    if limit is None and not prefix:
        return _cmd("sem.list")
    return _cmd("sem.list", prefix, 1000 if limit is None else limit)


# -- queues -------------------------------------------------------------------------------------


def queue_declare(
    name: str, max_deliveries: int | None, dedup_window_ms: int | None, max_depth: int | None
) -> bytes:
    """``None`` keeps a setting as it is (a new queue's defaults: 5, 300000, 100000)."""
    return _cmd("queue.declare", name, max_deliveries, dedup_window_ms, max_depth)


def queue_put(
    name: str,
    payload: bytes,
    priority: int = 0,
    dedup_id: str | None = None,
    delay_ms: int = 0,
    hold: tuple[str, str] | None = None,
) -> bytes:
    """``hold``: ``(key, tag)`` held while the message is in the queue; without it the command
    is the 5-argument form every version understands."""
    if hold is None:
        return _cmd("queue.put", name, payload, priority, dedup_id, delay_ms)
    return _cmd("queue.put", name, payload, priority, dedup_id, delay_ms, list(hold))


def queue_put_many(name: str, messages: list[list[Any]]) -> bytes:
    """``messages``: ``[payload, priority, dedup_id, delay_ms, hold]`` each (``hold`` None or
    ``[key, tag]``); one entry, one answer per message (``queues_put``)."""
    return _cmd("queue.put_many", name, [list(m) for m in messages])


def queue_get(session: int, name: str, wait_ms: int, visibility_ms: int | None) -> bytes:
    return _cmd("queue.get", session, name, wait_ms, visibility_ms)


def queue_get_many(
    session: int, name: str, wait_ms: int, visibility_ms: int | None, max_count: int
) -> bytes:
    return _cmd("queue.get_many", session, name, wait_ms, visibility_ms, max_count)


def queue_get_any(
    session: int, names: list[str], wait_ms: int, visibility_ms: int | None, max_count: int
) -> bytes:
    return _cmd("queue.get_any", session, list(names), wait_ms, visibility_ms, max_count)


def queue_delete(name: str) -> bytes:
    return _cmd("queue.delete", name)


def queue_ack(session: int, name: str, msg_id: int) -> bytes:
    return _cmd("queue.ack", session, name, msg_id)


def queue_ack_many(session: int, name: str, msg_ids: list[int]) -> bytes:
    return _cmd("queue.ack_many", session, name, list(msg_ids))


def queue_nack(session: int, name: str, msg_id: int, requeue: bool, delay_ms: int) -> bytes:
    return _cmd("queue.nack", session, name, msg_id, requeue, delay_ms)


def queue_touch(session: int, name: str, msg_id: int, visibility_ms: int) -> bytes:
    """Extend a lease (long tasks)."""
    return _cmd("queue.touch", session, name, msg_id, visibility_ms)


def queue_purge(name: str) -> bytes:
    return _cmd("queue.purge", name)


def queue_requeue_dead(name: str, max_count: int) -> bytes:
    return _cmd("queue.requeue_dead", name, max_count)


def queue_stats(name: str) -> bytes:
    return _cmd("queue.stats", name)


def queue_list() -> bytes:
    return _cmd("queue.list")


def queue_peek(name: str, limit: int) -> bytes:
    return _cmd("queue.peek", name, limit)


def queue_dead_letters(name: str, limit: int) -> bytes:
    return _cmd("queue.dead_letters", name, limit)


def queue_held(prefix: str, limit: int) -> bytes:
    """Held keys (``@once``) of every queue, by queue then put order, with their messages."""
    return _cmd("queue.held", prefix, limit)


def queue_subscribe(
    session: int,
    stream: str,
    names: list[str],
    window: int,
    visibility_ms: int | None,
    sub: int | None = None,
    exclusive: bool = False,
) -> bytes:
    """Register a subscription (``sub`` None) or change one: messages of ``names`` are leased
    to it while it holds fewer than ``window``, and pushed on topic ``queue.push.<stream>``.
    ``exclusive``: every other subscription stops consuming ``names``."""
    args = (session, stream, list(names), window, visibility_ms, sub, exclusive)
    return _cmd("queue.subscribe", *args)


def queue_unsubscribe(session: int, sub: int) -> bytes:
    return _cmd("queue.unsubscribe", session, sub)


def queue_pushed(stream: str, after_index: int) -> bytes:
    """Messages still leased through ``stream``'s subscriptions by entries after the index."""
    return _cmd("queue.pushed", stream, after_index)


# -- cache --------------------------------------------------------------------------------------


def cache_get(key: str) -> bytes:
    return _cmd("cache.get", key)


def cache_get_many(keys: Iterable[str]) -> bytes:
    return _cmd("cache.get_many", list(keys))


def cache_set(key: str, value: bytes, ttl_ms: int | None) -> bytes:
    return _cmd("cache.set", key, value, ttl_ms)


def cache_set_hold(
    session: int, key: str, value: bytes, ttl_ms: int | None, lease_ms: int
) -> bytes:
    """A set after which the writer's session holds the new value in its L1."""
    return _cmd("cache.set_hold", session, key, value, ttl_ms, lease_ms)


def cache_add(key: str, value: bytes, ttl_ms: int | None) -> bytes:
    return _cmd("cache.add", key, value, ttl_ms)


def cache_delete(key: str) -> bytes:
    return _cmd("cache.delete", key)


def cache_incr(key: str, delta: int) -> bytes:
    return _cmd("cache.incr", key, delta)


def cache_cas(key: str, expected_version: int | None, value: bytes, ttl_ms: int | None) -> bytes:
    return _cmd("cache.cas", key, expected_version, value, ttl_ms)


def cache_touch(key: str, ttl_ms: int | None) -> bytes:
    return _cmd("cache.touch", key, ttl_ms)


def cache_set_many(items: Iterable[tuple[str, bytes]], ttl_ms: int | None) -> bytes:
    return _cmd("cache.set_many", [[k, v] for k, v in items], ttl_ms)


def cache_delete_many(keys: Iterable[str]) -> bytes:
    return _cmd("cache.delete_many", list(keys))


def cache_clear() -> bytes:
    return _cmd("cache.clear")


def cache_txn(
    compares: Iterable[list[Any]], success: Iterable[list[Any]], failure: Iterable[list[Any]]
) -> bytes:
    """One etcd-style transaction (forms in ``cache_txn``): compares such as ``["version", key,
    "==", 12]``, ``["value", key, "!=", None]`` or ``["lock", name, token]``; then ops
    ``["put", key, value, ttl_ms]``, ``["delete", key]``, ``["release", session, lock, owner]``."""
    return _cmd("cache.txn", list(compares), list(success), list(failure))


def cache_fenced(lock: str, token: int, ops: Iterable[list[Any]]) -> bytes:
    """Puts and deletes applied only if ``token`` is the current grant of ``lock``, checked in
    the same entry (else ``stale_token``)."""
    return _cmd("cache.fenced", lock, token, list(ops))


def txn_put(key: str, value: bytes, ttl_ms: int | None = None) -> list[Any]:
    return ["put", key, value, ttl_ms]


def txn_delete(key: str) -> list[Any]:
    return ["delete", key]


def cache_fill(session: int, key: str, lease_ms: int) -> bytes:
    return _cmd("cache.fill", session, key, lease_ms)


def cache_release(session: int, keys: Iterable[str | tuple[str, int]]) -> bytes:
    """Keys, or ``(key, registration)`` pairs: drop only the registration that fill made."""
    return _cmd("cache.release", session, [list(k) if isinstance(k, tuple) else k for k in keys])


def cache_renew(session: int, pairs: Iterable[tuple[str, int]], lease_ms: int) -> bytes:
    """Extend the leases of ``(key, registration)`` L1 registrations still live."""
    return _cmd("cache.renew", session, [list(k) for k in pairs], lease_ms)


def cache_stats() -> bytes:
    return _cmd("cache.stats")


def cache_keys(prefix: str, limit: int) -> bytes:
    return _cmd("cache.keys", prefix, limit)


# -- results ------------------------------------------------------------------------------------


def result_set(key: str, value: bytes, ttl_ms: int | None, final: bool, keep: bool) -> bytes:
    """Store or replace ``key`` (``keep``: no later set replaces it; ``final``: wake waiters)."""
    return _cmd("result.set", key, value, ttl_ms, final, keep)


def result_get(key: str) -> bytes:
    return _cmd("result.get", key)


def result_get_many(keys: Iterable[str]) -> bytes:
    return _cmd("result.get_many", list(keys))


def result_wait(keys: Iterable[str], wait_ms: int) -> bytes:
    return _cmd("result.wait", list(keys), wait_ms)


def result_delete(key: str) -> bytes:
    return _cmd("result.delete", key)


def result_expire(key: str, ttl_ms: int | None) -> bytes:
    return _cmd("result.expire", key, ttl_ms)


def result_incr(key: str, delta: int, ttl_ms: int | None, member: str | None = None) -> bytes:
    return _cmd("result.incr", key, delta, ttl_ms, member)


def result_stats() -> bytes:
    return _cmd("result.stats")


# -- rate limits --------------------------------------------------------------------------------


def ratelimit_take(key: str, count: int, period_ms: int, burst: int, n: int = 1) -> bytes:
    """Take ``n`` tokens of ``key``'s bucket (``count`` per ``period_ms``, at most ``burst``)."""
    return _cmd("ratelimit.take", key, count, period_ms, burst, n)


def ratelimit_get(key: str) -> bytes:
    return _cmd("ratelimit.get", key)


def ratelimit_list(prefix: str = "", limit: int = 100) -> bytes:
    return _cmd("ratelimit.list", prefix, limit)


def ratelimit_stats() -> bytes:
    return _cmd("ratelimit.stats")


# -- history (``coord.watch``) -----------------------------------------------------------------


def history_since(prefix: str, exact: bool, after: int | None, limit: int) -> bytes:
    """Retained changes after version ``after`` whose key matches (``None``: only the current
    revision); fails with ``compacted`` if ``after`` is older than the history."""
    return _cmd("history.since", prefix, exact, after, limit)


def history_status() -> bytes:
    return _cmd("history.status")
