"""The Raft simulator running the coordination primitives, and proofs its checks can fail."""

from __future__ import annotations

import itertools

import pytest

from coordination.primitives import locks, queues, queues_keys, semaphores
from coordination.simulation.workload import CoordinationWorkload
from raft_node.sim.cluster import Simulation, SimulationFailure

REPLAY = "python -m coordination.simulation"
CHUNKS = 24  # fixed, so the default run (60 seeds) and the deep one (600) have the same tests


def _sweep(seeds: range, until: str | None = None, **kw) -> list[str]:
    """Run ``seeds``; the failures' reports. With ``until``, stop at the first report that
    contains it: a proof that a check can fail needs one catch, not every seed's."""
    failures = []
    for seed in seeds:
        sim = Simulation(
            seed, workload=CoordinationWorkload(), replay=REPLAY, liveness_ms=15_000, **kw
        )
        try:
            sim.run()
        except SimulationFailure as exc:
            failures.append(str(exc))
            if until is not None and until in failures[-1]:
                break
    return failures


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "prim_chunk" in metafunc.fixturenames:
        total = max(CHUNKS, metafunc.config.getoption("sim_seeds") // 5)
        # Exactly CHUNKS near-equal ranges whatever the total, so the test ids are the same set.
        edges = [500_000 + total * i // CHUNKS for i in range(CHUNKS + 1)]
        chunks = [range(lo, hi) for lo, hi in itertools.pairwise(edges)]
        metafunc.parametrize("prim_chunk", chunks, ids=[f"{c.start}-{c.stop - 1}" for c in chunks])


def test_primitives_under_faults(prim_chunk: range, sim_steps: int) -> None:
    failures = _sweep(prim_chunk, steps=sim_steps)
    assert not failures, "\n".join(failures)


def test_mutual_exclusion_check_catches_a_lock_that_admits_everyone(monkeypatch) -> None:
    monkeypatch.setattr(locks._Lock, "admits", lambda self, mode: True)
    failures = _sweep(range(40), until="mutual exclusion broken")
    assert any("mutual exclusion broken" in f for f in failures), failures[:2]
    assert f"replay: {REPLAY} --seed" in failures[0]


def test_queue_accounting_catches_a_queue_that_drops_expired_leases(monkeypatch) -> None:
    def drop(self, ctx, q, mid, delay):
        del q.messages[mid]  # the bug: an expired lease loses the message

    monkeypatch.setattr(queues.Queues, "_redeliver", drop)
    failures = _sweep(range(60), until="acknowledged puts lost")
    assert any("acknowledged puts lost" in f for f in failures), failures[:2]


def test_held_key_check_catches_a_queue_that_ignores_held_keys(monkeypatch) -> None:
    plain = queues_keys.duplicate_of
    monkeypatch.setattr(queues_keys, "duplicate_of", lambda q, d, held, now: plain(q, d, None, now))
    failures = _sweep(range(60), until="share a held key")
    assert any("share a held key" in f for f in failures), failures[:2]


def test_cache_linearizability_check_catches_writes_that_skip_l1_holders(monkeypatch) -> None:
    """The old rule (a write takes effect at once, only its answer waits for L1 holders) lets a
    process serve an old value from its L1 after another saw the new one in the cluster."""
    from coordination.primitives import cache

    monkeypatch.setattr(cache.Cache, "waits_for_holders", False)
    failures = _sweep(range(120), until="cache history not linearizable")
    assert any("cache history not linearizable" in f for f in failures), failures[:2]


def test_priority_check_catches_a_queue_that_serves_fifo_regardless_of_priority(monkeypatch):
    import heapq

    from coordination.primitives import queues_state

    def fifo_pop(self) -> int:  # the bug: oldest message first, whatever its priority
        entry = min(self.ready, key=lambda item: item[1])
        self.ready.remove(entry)
        heapq.heapify(self.ready)
        self.ready_by_priority[self.messages[entry[1]][1]] -= 1
        return entry[1]

    monkeypatch.setattr(queues_state.QueueState, "pop_ready", fifo_pop)
    failures = _sweep(range(80), until="priority order")
    assert any("priority order" in f for f in failures), failures[:2]


def test_semaphore_check_catches_a_semaphore_that_admits_one_too_many(monkeypatch) -> None:
    plain_acquire = semaphores.Semaphores.acquire

    def one_more(self, ctx, args):  # every acquire admits limit + 1 holders
        sid, name, limit, owner, wait_ms = args
        return plain_acquire(self, ctx, [sid, name, limit + 1, owner, wait_ms])

    monkeypatch.setattr(semaphores.Semaphores, "acquire", one_more)
    failures = _sweep(range(80), until="holders at index")
    assert any("semaphore gamma has 3 holders" in f for f in failures), failures[:1]


def test_push_check_catches_a_stream_that_resumes_without_its_replay(monkeypatch) -> None:
    """A resumed stream must hand out what was leased to it while it was down."""
    from coordination.client import push

    handle = push.PushCursor.on_response

    def without_replay(self, resp):
        rows = handle(self, resp)
        return [] if resp.ok and resp.value[0] == "subscribed" else rows

    monkeypatch.setattr(push.PushCursor, "on_response", without_replay)
    failures = _sweep(range(150), until="never reached it")  # first catch: seed 69
    assert any("never reached it" in f for f in failures), failures[:2]


def test_delivery_check_catches_a_stream_that_hands_a_lease_out_twice(monkeypatch) -> None:
    """A cursor that forgets which index it has seen replays (or re-sends) leases it gave."""
    from coordination.client import push

    def forgetful(self, resp):
        tag = resp.value[0]
        return list(resp.value[2]) if tag in ("subscribed", "event") else []

    monkeypatch.setattr(push.PushCursor, "on_response", forgetful)
    failures = _sweep(range(60), until="delivered twice")
    assert any("delivered twice" in f for f in failures), failures[:2]


def test_subscription_check_catches_room_that_is_never_refilled(monkeypatch) -> None:
    from coordination.primitives import queue_consumers

    def released(self, name, mid):  # the bug: an ended lease gives no room back to fill
        sub_id = self._lease_sub.pop((name, mid), None)
        if sub_id is not None:
            del self.subs[sub_id].leases[(name, mid)]

    monkeypatch.setattr(queue_consumers.Consumers, "released", released)
    failures = _sweep(range(60), until="beside subscription")
    assert any("beside subscription" in f for f in failures), failures[:2]
