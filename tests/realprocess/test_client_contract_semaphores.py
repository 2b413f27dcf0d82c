"""The semaphore contract, run on both clients (``Coordinator`` and ``AsyncCoordinator`` through
``client_adapters.Blocking``) against a real 3-node cluster: slots and tokens, waits granted in
arrival order by the leader, session death, limit errors, inspection."""

from __future__ import annotations

import pytest
import test_client_contract as contract

from coordination.exceptions import (
    LimitExceeded,
    NotHolder,
    SemaphoreLimitError,
    SemaphoreNotAcquired,
    SessionExpired,
)

pytestmark = pytest.mark.realprocess

# The contract suite's fixtures: both clients, one parametrized run each.
loop_thread, connect, coord, uid = (
    contract.loop_thread,
    contract.connect,
    contract.coord,
    contract.uid,
)
_in_thread, _until = contract._in_thread, contract._until


def test_limit_slots_tokens_and_release(coord, uid):
    name = f"sem-{uid}"
    slots = [coord.semaphore(name, 2, session=coord.session(), owner="o") for _ in range(3)]
    assert slots[0].acquire() and slots[1].acquire()
    assert slots[1].token > slots[0].token  # tokens strictly increase per semaphore
    assert not slots[2].acquire()  # a try: both slots are taken
    with pytest.raises(SemaphoreNotAcquired) as info, slots[2]:
        pass
    assert info.value.name == name
    info = coord.inspect_semaphore(name)
    assert info["limit"] == 2
    assert [h["token"] for h in info["holders"]] == [slots[0].token, slots[1].token]
    assert coord.check_semaphore_token(name, slots[0].token)
    first = slots[0].token
    slots[0].release()
    assert slots[0].token is None and not coord.check_semaphore_token(name, first)
    with slots[2] as slot:
        assert slot.token > slots[1].token
        assert [s["name"] for s in coord.semaphores(prefix=name)] == [name]
    slots[1].release()
    assert coord.inspect_semaphore(name)["holders"] == []
    with pytest.raises(NotHolder):
        slots[1].release()


def test_waits_are_granted_by_the_leader_in_arrival_order(coord, uid):
    name = f"fifo-{uid}"
    holder = coord.semaphore(name, 1, session=coord.session(), owner="h")
    assert holder.acquire()
    waiters = [coord.semaphore(name, 1, session=coord.session(), owner="w") for _ in range(3)]
    runs = []
    for i, waiter in enumerate(waiters):
        runs.append(_in_thread(lambda waiter=waiter: waiter.acquire(wait=30)))
        _until(lambda i=i: len(coord.inspect_semaphore(name)["waiters"]) == i + 1)
    order = [w["session"] for w in coord.inspect_semaphore(name)["waiters"]]
    assert order == [w.session.id for w in waiters]
    holder.release()
    tokens = []
    for i, (thread, got) in enumerate(runs):
        thread.join(30)  # granted only once every earlier waiter had its turn
        assert got == [True], got
        assert all(not t.is_alive() for t, _ in runs[: i + 1])
        tokens.append(waiters[i].token)
        waiters[i].release()
    assert tokens == sorted(tokens) and tokens[0] > 0


def test_a_wait_times_out_and_a_dead_session_frees_its_slot(coord, uid):
    name = f"dead-{uid}"
    dying = coord.session(ttl=2)
    holder = coord.semaphore(name, 1, session=dying, owner="h")
    assert holder.acquire()
    waiter = coord.semaphore(name, 1, session=coord.session(), owner="w")
    assert waiter.acquire(wait=0.3) is False  # timed out: nobody released
    thread, got = _in_thread(lambda: waiter.acquire(wait=30))
    _until(lambda: coord.inspect_semaphore(name)["waiters"])
    dying.close()  # a closed (or expired) session releases its slot to the waiter
    thread.join(30)
    assert got == [True] and waiter.token > 0
    assert [h["session"] for h in coord.inspect_semaphore(name)["holders"]] == [waiter.session.id]
    waiter.release()


def test_a_waiting_session_that_ends_fails_its_wait(coord, uid):
    name = f"endwait-{uid}"
    assert coord.semaphore(name, 1, session=coord.session(), owner="h").acquire()
    session = coord.session()
    thread, got = _in_thread(
        lambda: coord.semaphore(name, 1, session=session, owner="w").acquire(wait=30)
    )
    _until(lambda: coord.inspect_semaphore(name)["waiters"])
    session.close()
    thread.join(30)
    assert isinstance(got[0], SessionExpired)


def test_limit_errors_are_typed(coord, uid):
    name = f"limit-{uid}"
    assert coord.semaphore(name, 3, session=coord.session()).acquire()
    with pytest.raises(SemaphoreLimitError) as info:
        coord.semaphore(name, 4, session=coord.session()).acquire()
    assert info.value.details["limit"] == 3
    for bad in (0, -2):
        with pytest.raises(LimitExceeded):
            coord.semaphore(name, bad)


def test_the_default_session_holds_slots_per_owner(coord, uid):
    name = f"default-{uid}"
    with coord.semaphore(name, 2) as slot:
        holders = coord.inspect_semaphore(name)["holders"]
        assert [h["token"] for h in holders] == [slot.token]
    assert coord.inspect_semaphore(name)["holders"] == []
