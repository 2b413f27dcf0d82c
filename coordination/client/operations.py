"""Every operation of the coordination clients, as data: the command to send, whether it is a
write, how long the cluster may hold it, and how to read its answer.

    op = operations.lock_acquire(session_id, "report:42", wait=10.0)
    result = coord.run(op)          # Coordinator: blocks
    result = await coord.run(op)    # AsyncCoordinator: awaits

This is the sans-I/O half of the clients (``core`` is the other: locks' and sessions'
bookkeeping). Neither client builds a command or a deadline of its own: ``Coordinator`` and
``AsyncCoordinator`` differ only in how they wait for ``run``, so they cannot drift apart, and
the REST API runs the same operations. Commands come from ``coordination.primitives.commands``
(the state machine's vocabulary); times here are seconds (floats), milliseconds on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from coordination.errors import EVICTED, build
from coordination.primitives import commands as c
from coordination.primitives.cache_l1 import LEASE_MS
from raft_node.client import RaftError

T = TypeVar("T")

EXCLUSIVE, SHARED = "exclusive", "shared"
WAIT_MARGIN = 5.0  # seconds a blocking call's deadline allows beyond its wait (the answer's trip)
CACHE_WRITE_WAIT = LEASE_MS[1] / 1000  # a cache write may wait out other processes' L1 leases


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def _ms_or_none(seconds: float | None) -> int | None:
    return None if seconds is None else ms(seconds)


def _unchanged(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Operation(Generic[T]):
    """One call to the cluster. ``wait`` is how long the cluster may hold it before answering
    (a lock or queue wait, a cache write waiting out L1 leases); None for a call answered at
    once. ``decode`` turns the state machine's answer into the operation's result."""

    body: bytes
    write: bool = True
    decode: Callable[[Any], T] = _unchanged
    wait: float | None = None
    stale: bool = False

    def deadline(self, timeout: float) -> float:
        """The call's deadline for a client whose own timeout is ``timeout``: a blocking call
        gets its wait plus ``WAIT_MARGIN``, never less than the client's timeout."""
        if self.wait is None:
            return timeout
        return max(timeout, self.wait + WAIT_MARGIN)


def write(
    body: bytes, decode: Callable[[Any], T] = _unchanged, wait: float | None = None
) -> Operation[T]:
    """A command applied through the log (exactly once, however often the client retries)."""
    return Operation(body, True, decode, wait)


def read(body: bytes, decode: Callable[[Any], T] = _unchanged, stale: bool = False) -> Operation[T]:
    """A query: linearizable (ReadIndex on the leader) unless ``stale``."""
    return Operation(body, False, decode, None, stale)


# -- sessions -------------------------------------------------------------------------------------


def session_open(ttl: float, label: str = "") -> Operation[dict[str, Any]]:
    """Open a session: ``{"session": id, "ttl_ms", "expires_ms"}`` (nobody keeps it alive:
    ``Session`` handles do, and HTTP clients of the API renew it themselves)."""
    return write(c.session_open(ms(ttl), label))


def session_keepalive(session: int) -> Operation[dict[str, Any]]:
    return write(c.session_keepalive(session))


def session_close(session: int) -> Operation[bool]:
    return write(c.session_close(session))


def session_get(session: int) -> Operation[dict[str, Any] | None]:
    return read(c.session_get(session))


def session_list() -> Operation[list[dict[str, Any]]]:
    return read(c.session_list())


# -- locks ----------------------------------------------------------------------------------------


def lock_acquire(
    session: int, name: str, mode: str = EXCLUSIVE, owner: str = "", wait: float = 0.0
) -> Operation[dict[str, Any]]:
    """``{"acquired": True, "token", "mode", "count"}`` or ``{"acquired": False}`` (a try that
    found it busy, or a wait that ran out). The cluster holds the call up to ``wait``."""
    return write(c.lock_acquire(session, name, mode, owner, ms(wait)), wait=wait)


def lock_release(session: int, name: str, owner: str = "") -> Operation[dict[str, Any]]:
    return write(c.lock_release(session, name, owner))


def lock_renew(session: int, name: str, owner: str = "") -> Operation[int]:
    """The hold's token if ``(session, owner)`` still holds ``name`` (else ``NotHolder``)."""
    return write(c.lock_renew(session, name, owner))


def lock_check_token(name: str, token: int) -> Operation[bool]:
    return read(c.lock_check_token(name, token), bool)


def lock_inspect(name: str) -> Operation[dict[str, Any]]:
    return read(c.lock_inspect(name))


def lock_list(prefix: str = "", limit: int | None = None) -> Operation[Any]:
    return read(c.lock_list(prefix, limit))


def lock_deadlocks() -> Operation[Any]:
    return read(c.lock_deadlocks())


# -- semaphores -----------------------------------------------------------------------------------


def sem_acquire(
    session: int, name: str, limit: int, owner: str = "", wait: float = 0.0
) -> Operation[dict[str, Any]]:
    """``{"acquired": True, "token", "count", "limit"}`` or ``{"acquired": False, ...}`` (no
    free slot on a try, or ``timed_out``). The cluster holds the call up to ``wait``."""
    return write(c.sem_acquire(session, name, limit, owner, ms(wait)), wait=wait)


def sem_release(session: int, name: str, owner: str = "") -> Operation[dict[str, Any]]:
    return write(c.sem_release(session, name, owner))


def sem_inspect(name: str) -> Operation[dict[str, Any]]:
    """``{name, limit, holders: [{session, owner, token, count, granted_ms}], waiters: [...]
    in arrival order, last_token}``."""
    return read(c.sem_inspect(name))


def sem_check_token(name: str, token: int) -> Operation[bool]:
    return read(c.sem_check_token(name, token), bool)


def sem_list(prefix: str = "", limit: int | None = None) -> Operation[Any]:
    return read(c.sem_list(prefix, limit))


# -- queues ---------------------------------------------------------------------------------------


def queue_declare(
    name: str,
    max_deliveries: int | None = 5,
    dedup_window: float | None = 300.0,
    max_depth: int | None = 100_000,
) -> Operation[dict[str, Any]]:
    """``None`` keeps a setting as it is."""
    return write(c.queue_declare(name, max_deliveries, _ms_or_none(dedup_window), max_depth))


class PutResult(int):
    """A put's message id (an ``int``, as ``put`` always returned) that also says whether the
    put was a duplicate and, for a held-key duplicate, the first producer's ``tag``."""

    duplicate: bool
    tag: str | None

    def __new__(cls, row: dict[str, Any]) -> PutResult:
        result = super().__new__(cls, row["id"])
        result.duplicate, result.tag = bool(row["duplicate"]), row.get("tag")
        return result

    def __repr__(self) -> str:
        return f"PutResult(id={int(self)}, duplicate={self.duplicate}, tag={self.tag!r})"


def queue_put(
    name: str,
    payload: bytes,
    priority: int = 0,
    dedup_id: str | None = None,
    delay: float = 0.0,
    hold_key: str | None = None,
    tag: str = "",
) -> Operation[dict[str, Any]]:
    """``{"id", "duplicate"}``: with ``dedup_id``, a repeat within the dedup window returns the
    first id and enqueues nothing. With ``hold_key``, a put while a message put with that key is
    still in the queue (ready, delayed or in flight) returns that message's id and its ``tag``
    (``{"id", "duplicate": True, "tag"}``) and enqueues nothing; the key is free again in the
    entry that acks, dead-letters or purges the message."""
    return queue_put_row(name, put_row(payload, priority, dedup_id, delay, hold_key, tag))


def queue_put_row(name: str, row: list[Any]) -> Operation[dict[str, Any]]:
    """``queue_put`` of one ``put_row``: the single-message command (the batchers send a lone
    put this way)."""
    payload, priority, dedup_id, delay_ms, hold = row
    return write(c.queue_put(name, payload, priority, dedup_id, delay_ms, hold and tuple(hold)))


def put_row(
    payload: bytes,
    priority: int = 0,
    dedup_id: str | None = None,
    delay: float = 0.0,
    hold_key: str | None = None,
    tag: str = "",
) -> list[Any]:
    """One message of a ``queue_put_many``, as on the wire (the arguments of ``queue_put``)."""
    return [payload, priority, dedup_id, ms(delay), None if hold_key is None else [hold_key, tag]]


def put_answer(row: dict[str, Any]) -> PutResult:
    """One message's answer of a ``queue.put_many``: its ``PutResult``, or the typed error that
    refused that message alone (raised)."""
    if "error" in row:
        raise build(row["error"], row["message"], row.get("details"))
    return PutResult(row)


def queue_put_many(name: str, rows: list[list[Any]]) -> Operation[list[PutResult | Exception]]:
    """Up to 1,000 messages (``put_row`` each) in one entry. Each is its own put: the result
    holds, in order, its ``PutResult`` or, for a message refused on its own (a full queue, a
    payload over the limit), the typed exception, not raised (as ``asyncio.gather(...,
    return_exceptions=True)``): the other messages went in all the same."""
    return write(c.queue_put_many(name, rows), lambda answers: [_settled(a) for a in answers])


def _settled(row: dict[str, Any]) -> PutResult | Exception:
    try:
        return put_answer(row)
    except RaftError as exc:
        return exc


def lease_ms(visibility: float | None) -> int | None:
    """A lease's length on the wire: None is a session-held lease, which has no deadline and
    ends only by ack, nack or the session ending (a live consumer is never redelivered what it
    is still working on)."""
    return None if visibility is None else ms(visibility)


def queue_get(
    session: int, name: str, wait: float = 0.0, visibility: float | None = 30.0
) -> Operation[dict[str, Any] | None]:
    """The next message's row (leased to ``session`` for ``visibility``), or None."""
    return write(c.queue_get(session, name, ms(wait), lease_ms(visibility)), wait=wait)


def queue_get_many(
    session: int, name: str, max_count: int, wait: float = 0.0, visibility: float | None = 30.0
) -> Operation[list[dict[str, Any]]]:
    body = c.queue_get_many(session, name, ms(wait), lease_ms(visibility), max_count)
    return write(body, wait=wait)


def queue_get_any(
    session: int,
    names: list[str],
    max_count: int = 1,
    wait: float = 0.0,
    visibility: float | None = 30.0,
) -> Operation[list[dict[str, Any]]]:
    """Rows of the first of ``names`` with any ready; each names its ``queue``."""
    body = c.queue_get_any(session, names, ms(wait), lease_ms(visibility), max_count)
    return write(body, wait=wait)


def queue_ack(session: int, name: str, msg_id: int) -> Operation[Any]:
    return write(c.queue_ack(session, name, msg_id))


def queue_ack_many(session: int, name: str, msg_ids: list[int]) -> Operation[list[int]]:
    """The ids that were no longer leased to ``session``."""
    return write(c.queue_ack_many(session, name, msg_ids), lambda result: result["unknown"])


def queue_nack(
    session: int, name: str, msg_id: int, requeue: bool = True, delay: float = 0.0
) -> Operation[Any]:
    return write(c.queue_nack(session, name, msg_id, requeue, ms(delay)))


def queue_touch(session: int, name: str, msg_id: int, visibility: float) -> Operation[Any]:
    return write(c.queue_touch(session, name, msg_id, ms(visibility)))


def queue_stats(name: str) -> Operation[dict[str, Any]]:
    return read(c.queue_stats(name))


def queue_list() -> Operation[Any]:
    return read(c.queue_list())


def queue_peek(name: str, limit: int = 20) -> Operation[list[dict[str, Any]]]:
    return read(c.queue_peek(name, limit))


def queue_dead_letters(name: str, limit: int = 20) -> Operation[list[dict[str, Any]]]:
    return read(c.queue_dead_letters(name, limit))


def queue_held(prefix: str = "", limit: int = 100) -> Operation[list[dict[str, Any]]]:
    """Held keys of every queue starting with ``prefix`` (``Queues.held_keys``)."""
    return read(c.queue_held(prefix, limit))


def queue_purge(name: str) -> Operation[int]:
    return write(c.queue_purge(name))


def queue_delete(name: str) -> Operation[bool]:
    return write(c.queue_delete(name))


def queue_requeue_dead(name: str, max_count: int = 1000) -> Operation[int]:
    return write(c.queue_requeue_dead(name, max_count))


def queue_subscribe(
    session: int,
    stream: str,
    names: list[str],
    window: int,
    visibility: float | None = None,
    sub: int | None = None,
    exclusive: bool = False,
) -> Operation[int]:
    """Register a push subscription (``sub`` None), or change one of ``session``'s; its id.
    What it may take now is leased in the same entry and pushed on ``stream``
    (``coordination.client.push`` follows the stream). ``exclusive`` takes the queues over
    from every other subscription."""
    vis = lease_ms(visibility)
    body = c.queue_subscribe(session, stream, names, window, vis, sub, exclusive)
    return write(body, lambda result: result["sub"])


def queue_unsubscribe(session: int, sub: int) -> Operation[bool]:
    """Whether the subscription existed; its messages stay leased to ``session``."""
    return write(c.queue_unsubscribe(session, sub))


def queue_pushed(stream: str, after_index: int = 0) -> Operation[list[dict[str, Any]]]:
    """Rows still leased through ``stream`` by entries after ``after_index`` (a replay)."""
    return read(c.queue_pushed(stream, after_index))


# -- cache (the L1 client is ``coordination.client.cache.Cache``) --------------------------------


def cache_get(key: str) -> Operation[dict[str, Any] | None]:
    """The stored record (``value``, ``version``, ``expires_ms``; ``evicted`` if the value lives
    only in Redis now), or None."""
    return read(c.cache_get(key))


def cache_get_versioned(key: str) -> Operation[tuple[bytes, int] | None]:
    """``(value, version)``, or None if ``key`` is absent: the version is what ``cache_cas``
    compares, so a read-modify-write needs no raw commands. Raises ``Evicted`` (details: the
    version) if the cluster holds the value only in the Redis mirror now (``Cache`` with a
    ``redis_url`` reads it there)."""

    def decode(record: dict[str, Any] | None) -> tuple[bytes, int] | None:
        return versioned(key, record)

    return read(c.cache_get(key), decode)


def versioned(key: str, record: dict[str, Any] | None) -> tuple[bytes, int] | None:
    """A ``cache.get`` record as ``(value, version)`` (None: absent); ``Evicted`` if the value
    is not in cluster memory."""
    if not record:
        return None
    if record.get("evicted"):
        raise evicted(key, record["version"])
    return record["value"], record["version"]


def evicted(key: str, version: int) -> Exception:
    """The ``Evicted`` error of a read whose value lives only in Redis (a client-side twin of
    the cluster's refusal of ``incr``/``touch`` on such a key)."""
    message = f"cache key {key!r} was evicted; read it from Redis and use cas"
    return build(EVICTED, message, {"key": key, "version": version})


def cache_cas(
    key: str, expected_version: int | None, value: bytes, ttl: float | None = None
) -> Operation[int | bool]:
    """Write ``key`` only if its version is still ``expected_version`` (None: only if absent):
    the new version, or False if another write came first (read again and retry)."""
    command = c.cache_cas(key, expected_version, value, _ms_or_none(ttl))
    return write(command, wait=CACHE_WRITE_WAIT)


def cache_set(key: str, value: bytes, ttl: float | None = None) -> Operation[int]:
    """The new version. Waits out other processes' L1 leases on the key."""
    return write(c.cache_set(key, value, _ms_or_none(ttl)), wait=CACHE_WRITE_WAIT)


def cache_delete(key: str) -> Operation[bool]:
    return write(c.cache_delete(key), wait=CACHE_WRITE_WAIT)


def cache_incr(key: str, delta: int = 1) -> Operation[int]:
    return write(c.cache_incr(key, delta), wait=CACHE_WRITE_WAIT)


def cache_fenced(lock: str, token: int, writes: list[list[Any]]) -> Operation[list[Any]]:
    """Puts and deletes (``commands.txn_put``/``txn_delete`` forms) applied only if ``token``
    is the current grant of ``lock``, checked in the entry that applies them: one result per
    write (a put's version, a delete's "existed"), or ``StaleToken``. Waits out L1 leases as
    any cache write does, and the token is checked when the write takes effect."""
    return write(c.cache_fenced(lock, token, writes), wait=CACHE_WRITE_WAIT)


def cache_txn(
    compares: list[list[Any]],
    success: list[list[Any]],
    failure: list[list[Any]],
    decode: Callable[[Any], T],
) -> Operation[T]:
    """An etcd-style transaction in one entry (``coordination.primitives.cache_txn``); the
    cluster answers ``{"succeeded", "results"}``, which ``decode`` turns into the result."""
    return write(c.cache_txn(compares, success, failure), decode, wait=CACHE_WRITE_WAIT)


def cache_keys(prefix: str = "", limit: int = 100) -> Operation[list[dict[str, Any]]]:
    return read(c.cache_keys(prefix, limit))


def cache_stats() -> Operation[dict[str, Any]]:
    return read(c.cache_stats())


# -- rate limits (the handles are ``coordination.client.ratelimit``) -----------------------------


def ratelimit_take(
    key: str, count: int, period_ms: int, burst: int, n: int = 1
) -> Operation[dict[str, Any]]:
    """``{"granted", "wait_ms", "tokens", "burst"}``: refused, ``wait_ms`` is the countdown
    until ``n`` tokens exist (nothing is reserved)."""
    return write(c.ratelimit_take(key, count, period_ms, burst, n))


def ratelimit_get(key: str) -> Operation[dict[str, Any] | None]:
    """A bucket's view (tokens now), or None: no bucket, which is a full one."""
    return read(c.ratelimit_get(key))


def ratelimit_list(prefix: str = "", limit: int = 100) -> Operation[list[dict[str, Any]]]:
    return read(c.ratelimit_list(prefix, limit))


def ratelimit_stats() -> Operation[dict[str, Any]]:
    return read(c.ratelimit_stats())
