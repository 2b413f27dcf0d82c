"""One contract for both coordination clients, run on each (``Coordinator`` and
``AsyncCoordinator``, the latter through ``client_adapters.Blocking``) against a real 3-node
cluster: locks, sessions, queues, the cache, and every registered error code across the wire
(with the HTTP status the API answers it with)."""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from client_adapters import LoopThread

from coordination import errors
from coordination.api.errors import exception_handler
from coordination.client import Coordinator, Lock, Message, Queue, Session
from coordination.client import operations as ops
from coordination.client.aio import (
    AsyncCoordinator,
    AsyncLock,
    AsyncMessage,
    AsyncQueue,
    AsyncSession,
)
from coordination.client.election import AsyncElection, Election
from coordination.client.ratelimit import AsyncRateLimit, RateLimit
from coordination.client.semaphores import AsyncSemaphore, Semaphore
from coordination.exceptions import (
    AuthenticationFailed,
    BadRequest,
    ClusterUnavailable,
    Deadlock,
    LockModeError,
    LockNotAcquired,
    NotHolder,
    NotInteger,
    OutcomeUnknown,
    SessionExpired,
    StaleToken,
    Timeout,
    UnknownKey,
    UnknownMessage,
    UnknownQueue,
    UnknownSession,
)
from raft_node.testing.launcher import LocalCluster, free_port

pytestmark = pytest.mark.realprocess

STATE_MACHINE = "tests.realprocess.probe_machine.ProbeMachine"  # see conftest


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(params=["sync", "async"])
def connect(
    request: pytest.FixtureRequest, coordination_cluster: LocalCluster, loop_thread: LoopThread
) -> Iterator[Callable[..., Any]]:
    """Makes coordinators of the client under test (closed after the test)."""
    made: list[Any] = []

    def connect(addresses: Any = None, secret: str | None = None, **kwargs: Any) -> Any:
        addresses = addresses or list(coordination_cluster.addresses.values())
        secret = secret or coordination_cluster.secret
        if request.param == "sync":
            coord = Coordinator(addresses, secret, **kwargs)
        else:
            coord = loop_thread.call(AsyncCoordinator, addresses, secret, **kwargs)
        made.append(coord)
        return coord

    yield connect
    for coord in made:
        with contextlib.suppress(Exception):
            coord.close()


@pytest.fixture
def coord(connect: Callable[..., Any]) -> Any:
    return connect()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


def _until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its result (or exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- locks ----------------------------------------------------------------------------------------


def test_acquire_release_and_fencing_tokens(coord, uid):
    name = f"fence-{uid}"
    session = coord.session()
    lock = coord.lock(name, session=session, owner="a")
    assert lock.acquire()
    first = lock.token
    assert lock.count == 1 and coord.check_token(name, first)
    coord.require_token(name, first)
    lock.release()
    assert (lock.token, lock.count) == (None, 0)
    assert not coord.check_token(name, first)
    with pytest.raises(StaleToken) as info:
        coord.require_token(name, first)
    assert info.value.details == {"lock": name, "token": first}
    with coord.lock(name, session=session, owner="a") as again:
        assert again.token > first  # tokens strictly increase per lock
    assert coord.inspect_lock(name)["holders"] == []


def test_a_busy_lock_fails_a_try_and_grants_a_wait_when_released(coord, uid):
    name = f"busy-{uid}"
    holder = coord.lock(name, session=coord.session(), owner="h")
    assert holder.acquire()
    waiter_session = coord.session()
    waiter = coord.lock(name, session=waiter_session, owner="w")
    assert not waiter.acquire()  # a try
    with pytest.raises(LockNotAcquired) as info, coord.lock(name, session=waiter_session):
        pass
    assert info.value.name == name
    thread, got = _in_thread(lambda: waiter.acquire(wait=20))
    _until(lambda: coord.inspect_lock(name)["waiters"])
    held_token = holder.token
    holder.release()
    thread.join(20)
    assert got == [True] and waiter.token > held_token


def test_reentrant_holds_count_and_renew_keeps_the_token(coord, uid):
    name = f"renew-{uid}"
    session = coord.session()
    outer = coord.lock(name, session=session, owner="o")
    inner = coord.lock(name, session=session, owner="o")
    assert outer.acquire() and inner.acquire()
    assert inner.token == outer.token and inner.count == 2
    before = session.last_renewed
    assert outer.renew() == outer.token
    assert session.last_renewed >= before
    inner.release()
    assert inner.count == 1 and inner.token == outer.token
    outer.release()
    with pytest.raises(NotHolder) as info:
        outer.renew()
    assert info.value.details == {"lock": name, "session": session.id, "owner": "o"}


def test_shared_holders_hold_together_and_cannot_upgrade(coord, uid):
    name = f"shared-{uid}"
    a, b = coord.session(), coord.session()
    ra = coord.lock(name, "shared", session=a, owner="r")
    rb = coord.lock(name, "shared", session=b, owner="r")
    assert ra.acquire() and rb.acquire()
    assert {h["session"] for h in coord.inspect_lock(name)["holders"]} == {a.id, b.id}
    assert not coord.lock(name, session=coord.session(), owner="w").acquire()
    with pytest.raises(LockModeError):
        coord.lock(name, "exclusive", session=a, owner="r").acquire()
    with pytest.raises(ValueError):
        coord.lock(name, "upgradable")


def test_a_wait_closing_a_cycle_is_refused_with_the_cycle(coord, uid):
    x, y = f"dx-{uid}", f"dy-{uid}"
    a, b = coord.session(), coord.session()
    assert coord.lock(x, session=a, owner="a").acquire()
    hold_y = coord.lock(y, session=b, owner="b")
    assert hold_y.acquire()
    waiting = coord.lock(y, session=a, owner="a")
    thread, got = _in_thread(lambda: waiting.acquire(wait=20))
    _until(lambda: coord.inspect_lock(y)["waiters"])
    with pytest.raises(Deadlock) as info:
        coord.lock(x, session=b, owner="b").acquire(wait=20)
    assert info.value.details["cycle"] == [b.id, a.id, b.id]
    assert sorted(info.value.details["locks"]) == sorted([x, y])
    assert "cycle" in info.value.message
    hold_y.release()
    thread.join(20)
    assert got == [True]


def test_the_default_session_holds_a_plain_lock(coord, uid):
    name = f"default-{uid}"
    with coord.lock(name) as lock:
        holders = coord.inspect_lock(name)["holders"]
        assert [h["session"] for h in holders] == [coord.default_session.id]
        assert coord.check_token(name, lock.token)
    assert coord.inspect_lock(name)["holders"] == []


# -- sessions -------------------------------------------------------------------------------------


def test_sessions_are_listed_kept_alive_and_release_their_locks_when_closed(coord, uid):
    session = coord.session(ttl=1.0, label=f"s-{uid}")
    opened = session.last_renewed
    info = coord.session_info(session.id)
    assert info["label"] == f"s-{uid}" and info["ttl_ms"] == 1000
    assert session.id in [row["session"] for row in coord.sessions()]
    lock = coord.lock(f"alive-{uid}", session=session, owner="o")
    assert lock.acquire()
    _until(lambda: session.last_renewed - opened > 2.0)  # renewed past two TTLs
    assert not session.lost and coord.check_token(f"alive-{uid}", lock.token)
    session.close()
    assert session.lost and coord.session_info(session.id) is None
    assert coord.lock(f"alive-{uid}", session=coord.session(), owner="o").acquire()


def test_a_session_ended_by_the_cluster_is_lost(coord, uid):
    session = coord.session(ttl=1.0)
    coord.run(ops.session_close(session.id))  # an operator, or an expiry
    _until(lambda: session.lost)
    with pytest.raises((SessionExpired, UnknownSession)):
        coord.lock(f"lost-{uid}", session=session, owner="o").acquire()
    with pytest.raises((SessionExpired, UnknownSession)):
        coord.run(ops.session_keepalive(session.id))


# -- queues ---------------------------------------------------------------------------------------


def test_put_get_ack_in_priority_order_with_dedup(coord, uid):
    queue = coord.queue(f"q-{uid}")
    queue.declare()
    low = queue.put(b"low")
    high = queue.put(b"high", priority=9)
    again = queue.put(b"high again", priority=9, dedup_id="d1")
    assert queue.put(b"dropped: a repeat", dedup_id="d1") == again
    session = coord.session()
    msg = queue.get(session=session)
    assert (msg.id, msg.payload, msg.priority, msg.delivery_count) == (high, b"high", 9, 1)
    assert queue.stats()["in_flight"] == 1
    msg.ack()
    with pytest.raises(UnknownMessage):
        msg.ack()
    assert [m.id for m in queue.get_many(5, session=session)] == [again, low]
    assert queue.stats()["in_flight"] == 2


def test_nack_redelivers_then_dead_letters_and_requeue_dead(coord, uid):
    queue = coord.queue(f"dl-{uid}")
    queue.declare(max_deliveries=2)
    mid = queue.put(b"poison")
    session = coord.session()
    queue.get(session=session).nack()
    again = queue.get(session=session)
    assert (again.id, again.delivery_count) == (mid, 2)
    again.nack()  # max_deliveries reached: dead-lettered, not redelivered
    assert queue.get(session=session) is None
    (dead,) = queue.dead_letters()
    assert dead["payload"] == b"poison" and dead["dead_letter"]["reason"] == "max_deliveries"
    assert queue.requeue_dead() == 1
    back = queue.get(session=session)
    assert back.payload == b"poison"
    back.nack(requeue=False)
    assert queue.stats()["dead_letters"] == 1


def test_batches_any_of_several_queues_touch_peek_purge_and_delete(coord, uid):
    a, b = coord.queue(f"qa-{uid}"), coord.queue(f"qb-{uid}")
    for i in range(3):
        a.put(f"a{i}".encode())
    assert [row["payload"] for row in a.peek()] == [b"a0", b"a1", b"a2"]
    session = coord.session()
    batch = a.get_many(2, session=session)
    assert [m.payload for m in batch] == [b"a0", b"a1"]
    batch[0].touch(60)
    assert a.ack_many(batch) == []
    b.put(b"b0")
    (got,) = coord.get_any([b.name, a.name], 5, session=session)
    assert (got.payload, got.queue.name, got.meta["queue"]) == (b"b0", b.name, b.name)
    coord.propose_nack(session, b.name, got.id)
    (again,) = b.get_many(1, session=session)
    assert again.id == got.id and coord.propose_ack_many(session, b.name, [again.id]) == []
    assert a.purge() == 1 and a.delete()
    with pytest.raises(UnknownQueue):
        a.stats()


def test_a_blocking_get_is_answered_when_a_message_arrives(coord, uid):
    queue = coord.queue(f"wait-{uid}")
    queue.declare()
    session = coord.session()
    thread, got = _in_thread(lambda: queue.get(wait=20, session=session))
    _until(lambda: queue.stats()["consumers_waiting"] == 1)
    queue.put(b"late")
    thread.join(20)
    assert got[0].payload == b"late"
    coord.propose_ack(session, queue.name, got[0].id)
    assert queue.get(wait=0.2, session=session) is None  # a wait that runs out


# -- cache ----------------------------------------------------------------------------------------


def test_cache_operations(coord, uid):
    key, text = f"k-{uid}", f"t-{uid}"
    assert coord.run(ops.cache_set(key, b"41")) > 0
    assert coord.run(ops.cache_incr(key, 1)) == 42
    assert coord.run(ops.cache_get(key))["value"] == b"42"
    assert [row["key"] for row in coord.cache_keys(prefix=key)] == [key]
    assert coord.cache_stats()["keys"] >= 1
    coord.run(ops.cache_set(text, b"words", ttl=60))
    with pytest.raises(NotInteger):
        coord.run(ops.cache_incr(text))
    with pytest.raises(UnknownKey):
        coord.run(ops.cache_incr(f"absent-{uid}"))
    assert coord.run(ops.cache_delete(key)) is True
    assert coord.run(ops.cache_get(key)) is None


def test_a_cas_round_trip_with_the_version_a_read_returns(coord, uid):
    key = f"cas-{uid}"
    assert coord.cache_get_versioned(key) is None
    first = coord.cache_cas(key, None, b"1")  # None: create, only if absent
    assert first > 0 and coord.cache_cas(key, None, b"again") is False
    assert coord.cache_get_versioned(key) == (b"1", first)
    value, version = coord.cache_get_versioned(key)
    second = coord.cache_cas(key, version, str(int(value) + 1).encode(), 60)
    assert second > first
    assert coord.cache_cas(key, first, b"stale") is False  # another write came first
    assert coord.cache_get_versioned(key) == (b"2", second)
    third = coord.run(ops.cache_set(key, b"3"))
    assert coord.cache_get_versioned(key) == (b"3", third)


# -- errors ---------------------------------------------------------------------------------------


def _probe(*args: Any) -> bytes:
    return msgpack.packb(list(args), use_bin_type=True)


def _check_http(error: BaseException, entry: errors.ErrorCode) -> None:
    response = exception_handler(error, {})
    assert response is not None and response.status_code == entry.status
    body = {"code": entry.api_code, "detail": error.message}
    if isinstance(error, OutcomeUnknown):  # may have been applied: say which request
        client_id, seq = error.request_id
        body.update(outcome="unknown", request_id={"client_id": client_id, "seq": seq})
    assert response.data == body
    assert (response.get("Retry-After") == "1") == (entry.status == 503)


@pytest.mark.parametrize("code", sorted(errors.CODES))
def test_every_registered_code_crosses_the_wire_as_its_exception(coord, code):
    entry = errors.CODES[code]
    message = f"probe of {code}"
    details = {"lock": "probe-lock", "token": 7, "nested": [1, {"k": b"v"}]}
    expected = errors.build(code, message, details)
    body = _probe("probe.reject", code, message, details)
    for op in (ops.Operation(body), ops.Operation(body, write=False)):
        with pytest.raises(entry.exception) as info:
            coord.run(op)
        error = info.value
        assert type(error) is entry.exception
        assert (error.code, error.message, error.details) == (
            expected.code,
            expected.message,
            expected.details,
        )
        _check_http(error, entry)


def test_a_failed_wait_carries_its_details(coord):
    waiting = ops.Operation(_probe("probe.wait"), wait=20)
    thread, got = _in_thread(lambda: coord.run(waiting))
    details = {"cycle": [1, 2, 1], "locks": ["a", "b"]}
    _until(lambda: coord.run(ops.Operation(_probe("probe.fail", "deadlock", "cycle", details))))
    thread.join(20)
    assert isinstance(got[0], Deadlock) and got[0].details == details


def test_engine_errors_are_typed_and_mapped(connect, coord):
    with pytest.raises(BadRequest) as info:
        coord.transfer_leadership("n9")  # the engine refuses: unknown node
    assert info.value.code == "bad_request"
    _check_http(info.value, errors.CODES["bad_request"])
    with pytest.raises(BadRequest) as info:
        coord.propose(b"\xc1")  # the state machine refuses: undecodable
    assert info.value.code == "bad_command"
    _check_http(info.value, errors.CODES["bad_command"])
    impatient = connect(timeout=0.5)
    try:
        with pytest.raises(Timeout) as info:  # old code catching Timeout still does
            impatient.run(ops.Operation(_probe("probe.wait")))  # pending past the deadline
    finally:
        coord.run(ops.Operation(_probe("probe.fail", "duplicate", "cleanup", {})))
    assert isinstance(info.value, OutcomeUnknown) and info.value.request_id[1] >= 1
    _check_http(info.value, errors.CODES["outcome_unknown"])
    with pytest.raises(ClusterUnavailable) as info:
        connect([("127.0.0.1", free_port())], timeout=0.5).sessions()
    _check_http(info.value, errors.CODES["unavailable"])
    with pytest.raises(AuthenticationFailed) as info:
        connect(secret="not-the-cluster-secret").sessions()
    _check_http(info.value, errors.CODES["auth_failed"])


# -- both clients offer the same operations -------------------------------------------------------

PAIRS = [
    (Coordinator, AsyncCoordinator),
    (Session, AsyncSession),
    (Lock, AsyncLock),
    (Queue, AsyncQueue),
    (Message, AsyncMessage),
    (Semaphore, AsyncSemaphore),
    (RateLimit, AsyncRateLimit),
    (Election, AsyncElection),
]
ONLY_BLOCKING = {"new_client", "thread_session", "default_session"}  # threads; a property
HANDLE_MAKERS = {"lock", "queue", "semaphore", "rate_limit", "election", "watch", "fenced"}


@pytest.mark.parametrize(("blocking", "asynchronous"), PAIRS)
def test_the_asyncio_client_has_every_operation_of_the_blocking_one(blocking, asynchronous):
    for name, member in inspect.getmembers(blocking):
        if name.startswith("_") or name in ONLY_BLOCKING:
            continue
        assert hasattr(asynchronous, name), f"{asynchronous.__name__} lacks {name}"
        if not inspect.isfunction(member):
            continue
        twin = getattr(asynchronous, name)
        awaited = inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin)
        assert awaited == (name not in HANDLE_MAKERS), name  # an iterator: an async generator
        theirs = list(inspect.signature(member).parameters)
        assert list(inspect.signature(twin).parameters) == theirs, name
