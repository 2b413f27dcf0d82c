"""The rate-limit check of the primitives' simulation: it holds on the real part (the seeded
sweeps of ``test_simulation`` run it), takes happen, and it catches a bucket that refills too
fast."""

from __future__ import annotations

from coordination.primitives import ratelimits
from coordination.simulation.workload import CoordinationWorkload
from raft_node.sim.cluster import Simulation, SimulationFailure

REPLAY = "python -m coordination.simulation"


def _run(seed: int) -> tuple[CoordinationWorkload, str | None]:
    workload = CoordinationWorkload()
    sim = Simulation(seed, workload=workload, replay=REPLAY, liveness_ms=15_000)
    try:
        sim.run()
    except SimulationFailure as exc:
        return workload, str(exc)
    return workload, None


def test_takes_are_granted_and_refused_within_the_bound() -> None:
    granted = 0
    for seed in range(10):
        workload, failure = _run(seed)
        assert failure is None, failure
        granted += workload.ratelimits.check()
    assert granted >= 20  # the check had grants to judge


def test_the_bound_catches_a_bucket_that_refills_twice_as_fast(monkeypatch) -> None:
    plain = ratelimits._Bucket.level_at

    def fast(self, now: int) -> int:  # the bug: twice the refill
        return plain(self, now + max(0, now - self.last))

    monkeypatch.setattr(ratelimits._Bucket, "level_at", fast)
    failures = []
    for seed in range(60):
        _, failure = _run(seed)
        if failure is not None:
            failures.append(failure)
            if "rate limit exceeded" in failure:
                break
    assert any("rate limit exceeded" in f for f in failures), failures[:2]
    assert f"replay: {REPLAY} --seed" in failures[-1]
