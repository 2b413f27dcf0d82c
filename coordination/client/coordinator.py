"""The coordination client: sessions, fenced locks, queues (and the cache, in ``cache``).

    coord = Coordinator.from_settings()          # or Coordinator("h:7001,h:7002", secret)
    with coord.lock("report:42"):                # exclusive, on the coordinator's session
        ...                                      # coord.lock(...).token fences your writes
    coord.queue("emails").put(b"hello", priority=5)

A ``Session`` is the unit of liveness: the cluster releases everything a session holds (locks,
queue leases, cache registrations) when it stops hearing keepalives for its TTL. Sessions keep
themselves alive from a background thread with its own connection, so a long lock wait on the
main connection never starves them. If keepalives fail for a whole TTL, the session is
``lost``: treat every lock it held as gone (the cluster will have released them), and check
fencing tokens before writing to protected resources.

Thread safety: a ``Coordinator`` is safe to share; calls take a connection from a small pool.
Its default session is per thread: a session is one client's unit of liveness, and the
deadlock detector reasons about sessions, so two threads of one process wait for each other
like any two clients (and a cycle between them is reported). Owners within one explicitly shared
session do not wait on each other: such a wait is refused as a deadlock (the session would wait
for itself). Lock handles default their ``owner`` to the calling thread.

Every call is an operation of ``operations`` (command, deadline, decoding) run by ``run``; lock
and session bookkeeping is ``core``'s. ``AsyncCoordinator`` (``aio``) shares both and differs
only in how it waits.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue as queue_module
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import coordination.client.operations as ops
from coordination.client.core import (
    BlockingHold,
    LockHold,
    SessionKeepalive,
    decoded,
    remember,
    require_current,
)
from coordination.client.election import Election
from coordination.client.operations import EXCLUSIVE, SHARED, WAIT_MARGIN, Operation
from coordination.client.queue_handles import Message, Queue
from coordination.client.ratelimit import RateLimit
from coordination.client.semaphores import Semaphore
from coordination.client.txn import Transactions
from coordination.client.watch import Watch, cursor_for
from coordination.errors import typed
from coordination.exceptions import LockNotAcquired, SessionExpired, UnknownSession
from raft_node.client import ClusterUnavailable, OutcomeUnknown, RaftClient, RaftError, Timeout

T = TypeVar("T")

__all__ = [
    "EXCLUSIVE",
    "SHARED",
    "WAIT_MARGIN",
    "Coordinator",
    "Lock",
    "Message",
    "Queue",
    "Session",
]


class Coordinator(Transactions):  # fenced writes and txns: ``coordination.client.txn``
    def __init__(
        self,
        addresses: Any,
        secret: bytes | str,
        *,
        timeout: float = 5.0,
        session_ttl: float = 10.0,
        ssl: Any = None,
        pool_size: int = 8,
        name: str | None = None,
    ) -> None:
        self.addresses = addresses
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.timeout = timeout
        self.session_ttl = session_ttl
        self.ssl = ssl
        self.name = name or f"coord-{os.getpid()}"
        self._pool: queue_module.LifoQueue[RaftClient] = queue_module.LifoQueue(pool_size)
        self._ids = itertools.count(1)
        self._local = threading.local()  # per-thread default session
        self._sessions: list[Session] = []
        self._sessions_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, addresses: Any = None, secret: bytes | str | None = None, **overrides: Any
    ) -> Coordinator:
        """A coordinator for this Django project's cluster (``COORDINATION`` settings); given
        ``addresses`` or ``secret`` replace the settings' (TLS and timeouts still come from
        them), and ``overrides`` the other constructor arguments."""
        addresses, secret, kwargs = settings_arguments(addresses, secret, overrides)
        return cls(addresses, secret, **kwargs)

    # -- plumbing -------------------------------------------------------------------------------

    def new_client(self, timeout: float | None = None) -> RaftClient:
        return RaftClient(
            self.addresses,
            self.secret,
            timeout=timeout or self.timeout,
            ssl=self.ssl,
            name=f"{self.name}-{next(self._ids)}-{os.urandom(4).hex()}",
        )

    @contextlib.contextmanager
    def _client(self) -> Iterator[RaftClient]:
        try:
            client = self._pool.get_nowait()
        except queue_module.Empty:
            client = self.new_client()
        try:
            yield client
        except BaseException:
            client.close()  # a broken call may leave the connection mid-frame
            raise
        else:
            try:
                self._pool.put_nowait(client)
            except queue_module.Full:
                client.close()

    def run(self, op: Operation[T]) -> T:
        """Run one operation (``coordination.client.operations``) and return its result;
        errors come typed (``coordination.errors``)."""
        deadline = op.deadline(self.timeout)
        if op.write:
            with remember(op):
                return op.decode(self.propose(op.body, timeout=deadline))
        return op.decode(self.query(op.body, stale=op.stale, timeout=deadline))

    def resolve(self, unknown: OutcomeUnknown, timeout: float | None = None) -> Any:
        """What the write that raised ``unknown`` did: what its call would have returned (or
        its rejection), applied now if it never was (within ``RESOLVE_WINDOW_S``)."""
        with self._client() as client:
            try:
                return decoded(unknown, client.resolve(unknown, timeout=timeout))
            except RaftError as exc:
                raise typed(exc) from None

    def propose(self, body: bytes, timeout: float | None = None) -> Any:
        """Apply a raw command (``coordination.primitives.commands``) exactly once."""
        with self._client() as client:
            try:
                return client.propose(body, timeout=timeout)
            except RaftError as exc:
                raise typed(exc) from None

    def query(self, body: bytes, *, stale: bool = False, timeout: float | None = None) -> Any:
        """Run a raw query; linearizable unless ``stale``."""
        with self._client() as client:
            try:
                return client.read(body, stale=stale, timeout=timeout)
            except RaftError as exc:
                raise typed(exc) from None

    def transfer_leadership(self, target: str) -> str:
        """Hand leadership to node ``target``; returns the new leader's id."""
        with self._client() as client:
            try:
                return client.transfer_leadership(target)
            except RaftError as exc:
                raise typed(exc) from None

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        while True:
            try:
                self._pool.get_nowait().close()
            except queue_module.Empty:
                break

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions -------------------------------------------------------------------------------

    def session(self, ttl: float | None = None, label: str = "") -> Session:
        """Open a new session (kept alive in the background until ``close``)."""
        return Session(self, self.session_ttl if ttl is None else ttl, label or self.name)

    @property
    def default_session(self) -> Session:
        """This thread's session, opened on first use and reopened if it was lost."""
        return self.thread_session()

    def thread_session(self, ttl: float | None = None) -> Session:
        """This thread's session with that TTL (default ``session_ttl``), opened on first use
        and reopened if it was lost."""
        ttl = self.session_ttl if ttl is None else ttl
        sessions = self._local.__dict__.setdefault("sessions", {})
        session = sessions.get(ttl)
        if session is None or session.lost:
            session = sessions[ttl] = self.session(ttl)
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def sessions(self) -> list[dict[str, Any]]:
        """Every live session (id, label, TTL, deadline and time left by log time)."""
        return self.run(ops.session_list())

    def session_info(self, session_id: int) -> dict[str, Any] | None:
        """One session's record (as in ``sessions()``), or None if it is not live."""
        return self.run(ops.session_get(session_id))

    # -- locks ----------------------------------------------------------------------------------

    def lock(
        self,
        name: str,
        mode: str = EXCLUSIVE,
        *,
        wait: float | None = None,
        owner: str | None = None,
        session: Session | None = None,
    ) -> Lock:
        """A lock handle (not yet acquired): use ``with`` or ``acquire()``/``release()``.

        ``wait``: None or 0 tries once; a number of seconds waits (served by the leader, no
        polling) up to that long. ``owner`` defaults to the calling thread.
        """
        return Lock(self, name, mode, session or self.default_session, owner, wait)

    def check_token(self, name: str, token: int) -> bool:
        """Whether ``token`` is still a current grant of ``name`` (linearizable read)."""
        return self.run(ops.lock_check_token(name, token))

    def require_token(self, name: str, token: int) -> None:
        """Raise ``StaleToken`` unless ``token`` is still current: call before a fenced write."""
        require_current(name, token, self.check_token(name, token))

    def inspect_lock(self, name: str) -> dict[str, Any]:
        return self.run(ops.lock_inspect(name))

    def locks(self, prefix: str = "", limit: int | None = None) -> Any:
        """Locks with holders or waiters, by name: ``{name, mode, holders, waiters, last_token}``
        with counts (``inspect_lock`` has the details)."""
        return self.run(ops.lock_list(prefix, limit))

    def deadlocks(self) -> Any:
        return self.run(ops.lock_deadlocks())

    # -- elections (``coordination.client.election``) ------------------------------------------

    def election(self, name: str, *, session: Session | None = None) -> Election:
        """A handle on election ``name`` (an exclusive lock ``election:<name>``): ``campaign``,
        ``resign``, ``leader``, ``is_leader``, ``observe``. Leadership lives as long as
        ``session`` (default: the thread's session at the first campaign)."""
        return Election(self, name, session)

    # -- watch (``coordination.client.watch``) -------------------------------------------------

    def watch(
        self, key_or_prefix: str = "", since_version: int | None = None, **options: Any
    ) -> Watch:
        """Changes to cache keys and locks starting with ``key_or_prefix``, after
        ``since_version`` (None: from now), as a blocking iterator of ``WatchEvent``. Options:
        ``exact`` (the whole key), ``kinds`` (``"cache"``, ``"lock"``), ``follower_ok`` and
        ``max_lag`` (seconds a follower may be out of touch with the leader)."""
        return Watch(self, cursor_for(key_or_prefix, since_version, **options))

    # -- semaphores (``coordination.client.semaphores``) ---------------------------------------

    def semaphore(
        self,
        name: str,
        limit: int,
        *,
        wait: float | None = None,
        owner: str | None = None,
        session: Session | None = None,
    ) -> Semaphore:
        """A handle on one slot of the ``limit``-slot semaphore ``name`` (not yet acquired):
        ``with`` or ``acquire()``/``release()``; ``wait`` as for ``lock``."""
        return Semaphore(self, name, limit, session or self.default_session, owner, wait)

    def inspect_semaphore(self, name: str) -> dict[str, Any]:
        """Limit, holders with their tokens, waiters in arrival order."""
        return self.run(ops.sem_inspect(name))

    def semaphores(self, prefix: str = "", limit: int | None = None) -> Any:
        return self.run(ops.sem_list(prefix, limit))

    def check_semaphore_token(self, name: str, token: int) -> bool:
        return self.run(ops.sem_check_token(name, token))

    # -- queues ---------------------------------------------------------------------------------

    def queue(self, name: str) -> Queue:
        return Queue(self, name)

    def queues(self) -> Any:
        return self.run(ops.queue_list())

    def get_any(
        self,
        queues: list[str],
        max_count: int = 1,
        *,
        wait: float = 0.0,
        visibility: float | None = 30.0,
        session: Session | None = None,
    ) -> list[Message]:
        """Lease up to ``max_count`` messages of the first of ``queues`` with any ready, in
        one entry; blocked, wait in all of them at once (``[]`` if ``wait`` ran out). Each
        message's ``queue`` says where it came from."""
        session = session or self.default_session
        rows = self.run(ops.queue_get_any(session.id, queues, max_count, wait, visibility))
        return [self.queue(row["queue"])._message(row, session) for row in rows]

    def propose_ack(self, session: Session, queue: str, msg_id: int) -> None:
        """Ack by ids (transports that keep ids rather than ``Message`` objects)."""
        self.run(ops.queue_ack(session.id, queue, msg_id))

    def propose_ack_many(self, session: Session, queue: str, msg_ids: list[int]) -> list[int]:
        """Ack by ids (what a transport that tracks ids instead of ``Message`` objects needs);
        returns the ids no longer leased to the session."""
        return self.run(ops.queue_ack_many(session.id, queue, msg_ids))

    def propose_nack(
        self, session: Session, queue: str, msg_id: int, *, requeue: bool = True
    ) -> None:
        self.run(ops.queue_nack(session.id, queue, msg_id, requeue))

    # -- rate limits ----------------------------------------------------------------------------

    def rate_limit(self, key: str, rate: Any, burst: int | None = None) -> RateLimit:
        """A handle on the cluster-wide token bucket ``key`` (``coordination.client
        .ratelimit``): ``rate`` is ``"100/s"``, ``"100/m"``, ``"100/h"`` or ``(count,
        period_ms)``; ``burst`` defaults to the count."""
        return RateLimit(self, key, rate, burst)

    # -- cache (the L1 client is ``cache.Cache``) ----------------------------------------------

    def cache_keys(self, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Keys held in cluster memory, by key: ``{key, version, size, expires_ms}``."""
        return self.run(ops.cache_keys(prefix, limit))

    def cache_stats(self) -> dict[str, Any]:
        return self.run(ops.cache_stats())

    def cache_get_versioned(self, key: str) -> tuple[bytes, int] | None:
        """``(value, version)`` of a cache key straight from the cluster (linearizable), or
        None if absent; ``Evicted`` if its value lives only in Redis now. With ``cache_cas``, a
        read-modify-write without raw commands::

            while True:
                found = coord.cache_get_versioned("hits")
                value, version = found or (b"0", None)
                if coord.cache_cas("hits", version, str(int(value) + 1).encode()):
                    break
        """
        return self.run(ops.cache_get_versioned(key))

    def cache_cas(
        self, key: str, expected_version: int | None, value: bytes, ttl: float | None = None
    ) -> int | bool:
        """Write ``key`` if its version is still ``expected_version`` (None: only if absent);
        the new version, or False if another write came first."""
        return self.run(ops.cache_cas(key, expected_version, value, ttl))


def settings_arguments(
    addresses: Any, secret: bytes | str | None, overrides: dict[str, Any]
) -> tuple[Any, bytes | str, dict[str, Any]]:
    """A client's constructor arguments from this Django project's ``COORDINATION`` settings
    (both clients' ``from_settings``)."""
    from coordination.node import node_settings, runtime

    conf = node_settings.coordination()
    _, client_ssl = node_settings.ssl_contexts(conf)
    kwargs: dict[str, Any] = {
        "timeout": conf["REQUEST_TIMEOUT"],
        "session_ttl": conf["SESSION_TTL"],
        "ssl": client_ssl,
    }
    kwargs.update(overrides)
    if not addresses:
        addresses = list(runtime.cluster_addresses(conf).values())
    if secret is None:
        secret = node_settings.cluster_secret(conf)
    return addresses, secret, kwargs


class Session(SessionKeepalive):
    """A session kept alive by a background thread with its own connection, so a long lock
    wait on the coordinator's connections never starves it (policy: ``SessionKeepalive``)."""

    def __init__(self, coord: Coordinator, ttl: float, label: str) -> None:
        super().__init__(ttl)
        self.coord = coord
        self.id: int = coord.run(ops.session_open(ttl, label))["session"]
        self._renewed()
        self._lost = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._keepalive, daemon=True, name=f"raftsync-session-{self.id}"
        )
        self._thread.start()

    @property
    def lost(self) -> bool:
        """True once the cluster may have expired this session (locks must be presumed gone)."""
        return self._lost.is_set()

    def _keepalive(self) -> None:
        client = self.coord.new_client(timeout=max(1.0, self.keepalive_interval))
        keepalive = ops.session_keepalive(self.id)
        try:
            delay = self.keepalive_interval
            while not self._closed.wait(delay):
                delay = self._keepalive_wait()
                if delay:
                    continue  # a lock acquire renewed the session meanwhile
                delay = self.keepalive_interval
                error: RaftError | None = None
                sent = time.monotonic()
                try:
                    client.propose(keepalive.body)
                except RaftError as exc:
                    error = exc
                if self._keepalive_lost(error, sent):
                    self._lost.set()
                    return
        finally:
            client.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(SessionExpired, UnknownSession, Timeout, ClusterUnavailable):
            self.coord.run(ops.session_close(self.id))
        self._lost.set()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lock(BlockingHold, LockHold):
    """A handle on a named lock for one (session, owner). Reentrant: nested acquires count."""

    def __init__(
        self,
        coord: Coordinator,
        name: str,
        mode: str,
        session: Session,
        owner: str | None,
        wait: float | None,
    ) -> None:
        owner = owner if owner is not None else f"thread-{threading.get_ident()}"
        super().__init__(name, mode, owner, wait)
        self.coord, self.session = coord, session

    def renew(self) -> int:
        """Check the hold is still ours (``NotHolder`` otherwise) and keep the session alive."""
        token = self.coord.run(self._renew_op(self.session.id))
        self.session._renewed()
        return token

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockNotAcquired(self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lost:
            return  # released by the cluster already
        self.release()
