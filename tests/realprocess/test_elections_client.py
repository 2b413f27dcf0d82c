"""Leader election through both clients (``Coordinator``, and ``AsyncCoordinator`` through
``client_adapters.Blocking``) against a real 3-node cluster: a try and a leader-served blocking
campaign, resign handing over to the waiting campaigner, ``leader()`` and ``is_leader()``,
leadership dying with its session, ``observe`` seeing each change, and bad names as typed
errors."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from client_adapters import LoopThread

from coordination.client import Coordinator
from coordination.client.aio import AsyncCoordinator
from coordination.exceptions import BadRequest, LimitExceeded, StaleToken
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


def _name() -> str:
    return f"el-{uuid.uuid4().hex[:8]}"


def test_campaign_try_resign_and_leader(connect: Callable[..., Any]) -> None:
    a, b = connect(), connect()
    name = _name()
    ea, eb = a.election(name), b.election(name)
    assert ea.leader() is None
    first = ea.campaign("alpha", wait=0)
    assert first is not None and first.value == "alpha" and first.token > 0
    assert eb.campaign("beta", wait=0) is None  # a try: taken
    seen = eb.leader()
    assert (seen.value, seen.token, seen.session) == ("alpha", first.token, first.session)
    assert ea.is_leader() and not eb.is_leader()
    assert ea.check() == first
    with pytest.raises(StaleToken):
        eb.check()
    assert ea.campaign("alpha", wait=0) == first  # already leading: the same term
    ea.resign()
    assert not ea.is_leader() and ea.leader() is None
    second = eb.campaign("beta", wait=0)
    assert second is not None and second.token > first.token  # tokens only grow
    assert ea.leader().value == "beta"


def test_blocking_campaign_is_granted_on_resign(connect: Callable[..., Any]) -> None:
    a, b = connect(), connect()
    name = _name()
    ea, eb = a.election(name), b.election(name)
    assert ea.campaign("a", wait=0) is not None
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(eb.campaign("b", wait=20)))
    waiter.start()
    time.sleep(0.5)
    assert not got  # still waiting (not elected while "a" leads)
    resigned = time.monotonic()
    ea.resign()
    waiter.join(10)
    assert got and got[0] is not None and got[0].value == "b"
    assert time.monotonic() - resigned < 2.0  # served by the cluster, not a slow poll
    assert eb.is_leader()
    assert eb.campaign("b", wait=0.3) == got[0]


def test_leadership_dies_with_its_session(connect: Callable[..., Any]) -> None:
    a, b = connect(), connect()
    name = _name()
    session = a.session(ttl=1.0)
    ea = a.election(name, session=session)
    assert ea.campaign("short", wait=0) is not None
    session.close()
    successor = b.election(name).campaign("next", wait=10)
    assert successor is not None and successor.value == "next"
    assert not ea.is_leader()


def test_timed_campaign_gives_up(connect: Callable[..., Any]) -> None:
    a, b = connect(), connect()
    name = _name()
    assert a.election(name).campaign("a", wait=0) is not None
    started = time.monotonic()
    assert b.election(name).campaign("b", wait=0.5) is None
    assert 0.4 < time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("name", "error"),
    [("", BadRequest), ("x" * (limits.NAME_MAX_BYTES + 1), LimitExceeded), ("a b", BadRequest)],
)
def test_bad_names_are_typed_errors(connect: Callable[..., Any], name: str, error: type) -> None:
    with pytest.raises(error):
        connect().election(name)


def test_over_long_value_is_a_limit(connect: Callable[..., Any]) -> None:
    with pytest.raises(LimitExceeded):
        connect().election(_name()).campaign("v" * (limits.OWNER_MAX_BYTES + 1), wait=0)


def test_observe_sees_each_change(coordination_cluster: LocalCluster, loop_thread) -> None:
    addresses = list(coordination_cluster.addresses.values())
    name = _name()
    with Coordinator(addresses, coordination_cluster.secret) as a:
        seen: list[Any] = []
        watcher = a.election(name)
        t = threading.Thread(
            target=lambda: seen.extend(watcher.observe(interval=0.05, timeout=3.0))
        )
        t.start()
        time.sleep(0.5)
        with Coordinator(addresses, coordination_cluster.secret) as b:
            eb = b.election(name)
            eb.campaign("one", wait=0)
            time.sleep(0.5)
            eb.resign()
            time.sleep(0.5)
            eb.campaign("two", wait=0)
            t.join(10)
    assert [s.value if s else None for s in seen] == [None, "one", None, "two"]

    async def observe_async() -> list[Any]:
        coord = AsyncCoordinator(addresses, coordination_cluster.secret)
        try:
            election = coord.election(name)
            return [s async for s in election.observe(interval=0.05, timeout=0.5)]
        finally:
            await coord.close()

    got = asyncio.run_coroutine_threadsafe(observe_async(), loop_thread.loop).result(30)
    assert got == [None]  # "two"'s session ended with its coordinator
