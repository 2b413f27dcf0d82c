"""Rate limits through both coordination clients (``Coordinator``, and ``AsyncCoordinator``
through ``client_adapters.Blocking``) against a real 3-node cluster: try_acquire and its
countdown, a blocking acquire that sleeps the computed wait (one take per wait, not a polling
loop), timeouts, inspect, bad input as typed errors with their HTTP status, and one bucket
shared by several clients."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from client_adapters import LoopThread

from coordination import errors
from coordination.api.errors import exception_handler
from coordination.client import Coordinator
from coordination.client.aio import AsyncCoordinator
from coordination.exceptions import BadRequest, InvalidRate, LimitExceeded
from coordination.primitives import limits
from raft_node.testing.launcher import LocalCluster

pytestmark = pytest.mark.realprocess


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(params=["sync", "async"])
def connect(
    request: pytest.FixtureRequest, coordination_cluster: LocalCluster, loop_thread: LoopThread
) -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def connect(**kwargs: Any) -> Any:
        addresses = list(coordination_cluster.addresses.values())
        secret = coordination_cluster.secret
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
def key() -> str:
    return f"rl:{uuid.uuid4().hex[:10]}"


def test_try_acquire_grants_the_burst_then_answers_a_countdown(coord, key):
    limit = coord.rate_limit(key, "10/s", burst=3)
    assert [limit.try_acquire() for _ in range(3)] == [(True, 0.0)] * 3
    granted, retry_after = limit.try_acquire()
    assert not granted and 0 < retry_after <= 0.1  # one token every 100 ms
    view = limit.inspect()
    assert (view["key"], view["count"], view["period_ms"], view["burst"]) == (key, 10, 1000, 3)
    assert view["tokens"] < 1


def test_acquire_sleeps_the_computed_wait_instead_of_polling(coord, key, coordination_cluster):
    limit = coord.rate_limit(key, "5/s", burst=1)  # a token every 200 ms
    assert limit.acquire()

    def applied() -> int:
        return coordination_cluster.status(coordination_cluster.leader())["applied"]

    before, started = applied(), time.monotonic()
    for _ in range(3):
        assert limit.acquire()
    elapsed = time.monotonic() - started
    assert 0.55 <= elapsed < 2.0, elapsed  # three more tokens at 5/s: about 600 ms
    # One take per wait (plus the odd tick): a polling loop would write hundreds of entries.
    assert applied() - before <= 12


def test_acquire_gives_up_at_once_when_the_wait_would_pass_the_timeout(coord, key):
    limit = coord.rate_limit(key, "1/m", burst=1)
    assert limit.acquire(timeout=0)
    started = time.monotonic()
    assert limit.acquire(timeout=2) is False  # the next token is ~60 s away
    assert time.monotonic() - started < 1.0


def test_several_clients_share_one_bucket(connect, key):
    clients = [connect() for _ in range(3)]
    handles = [c.rate_limit(key, "100/h", burst=4) for c in clients]
    grants = [h.try_acquire()[0] for h in handles for _ in range(2)]
    assert grants.count(True) == 4  # the burst, across all clients
    assert all(not h.try_acquire()[0] for h in handles)


@pytest.mark.parametrize("rate", ["0/s", "-3/m", "10/d", "ten", (5, 0)])
def test_a_bad_rate_raises_invalid_rate_before_sending(coord, key, rate):
    with pytest.raises(InvalidRate) as info:
        coord.rate_limit(key, rate)
    _check_http(info.value)


def test_bad_takes_are_refused_by_the_cluster_with_typed_errors(coord, key):
    with pytest.raises(LimitExceeded) as info:
        coord.rate_limit("k" * (limits.NAME_MAX_BYTES + 1), "1/s").try_acquire()
    _check_http(info.value)
    with pytest.raises(LimitExceeded):
        coord.rate_limit(key, "10/s", burst=2).try_acquire(3)  # never grantable
    with pytest.raises(BadRequest):
        coord.rate_limit(key, "10/s").try_acquire(0)
    with pytest.raises(InvalidRate):
        coord.rate_limit(key, "10/s", burst=0)


def _check_http(error: Any) -> None:
    entry = errors.lookup(error)
    assert entry is not None and entry.status == 400
    response = exception_handler(error, {})
    assert response.status_code == 400 and response.data["code"] == entry.api_code
