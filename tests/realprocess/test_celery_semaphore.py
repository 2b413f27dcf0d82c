"""``@distributed_semaphore`` in real prefork Celery workers on ``raft://`` (the tasks of
``celery_lock_app``, which write start/end markers): the limit holds across worker processes,
a worker killed with -9 gives its slot back within one session TTL, and ``revoke`` with
terminate frees slots and locks in under a second, even with SIGKILL (no unwinding in the
child: the worker's main process releases on its behalf)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import test_celery_worker as cw
from chaos_workload import leaderships, log_time

pytestmark = [pytest.mark.realprocess]
TTL = 3.0
coord = cw.coord  # the fixture: a client of the module's cluster


def _peak(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = running = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


def _warnings(cluster) -> list[str]:
    """The nodes' lines at WARNING or worse: with the elections, what a failed timing
    assertion needs to be explained after the run's logs are gone."""
    lines = []
    for node in cluster.ids:
        for line in cluster.log_path(node).read_text(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line:
                lines.append(f"{node}: {line}")
    return lines[-20:]


def _started(markers, tag: str) -> list[list[str]]:
    return [e for e in cw._events(markers) if e[0] == "start" and e[1] == tag]


def test_limit_3_across_4_worker_processes_then_a_killed_worker_frees_its_slot_in_a_ttl(
    coordination_cluster, coord, tmp_path
):
    app = cw._producer(coordination_cluster, "sem-producer")
    # Two workers of two prefork processes each: four processes compete for three slots.
    first = cw._worker(coordination_cluster, tmp_path, session_ttl=TTL, queues="semq,w1")
    second = cw._worker(coordination_cluster, tmp_path, session_ttl=TTL, queues="semq,w2")
    try:
        cw._wait_for(
            lambda: (
                len(cw._worker_sessions(coord, first) + cw._worker_sessions(coord, second)) == 6
            ),
            60,
            "both workers' sessions",
        )
        for i in range(12):
            app.send_task("sem_test.hold", args=("peak", f"t{i}", 1.0), queue="semq")
        cw._wait_for(
            lambda: len(cw._intervals(cw._events(tmp_path), "peak")) == 12, 120, "all 12 runs"
        )
        events = [e for e in cw._events(tmp_path) if e[2] == "peak"]
        intervals = cw._intervals(events, "peak")
        peak = _peak(intervals)
        tokens = [int(e[3]) for e in events if e[0] == "start"]
        pids = {e[4] for e in events}
        print(f"12 runs, peak concurrency {peak}, {len(pids)} processes used")
        assert peak == 3, intervals
        assert sorted(e[1] for e in events if e[0] == "start") == sorted(f"t{i}" for i in range(12))
        assert len(set(tokens)) == 12  # every grant fenced by its own token
        assert len(pids) >= 3
        assert coord.inspect_semaphore("sem:peak")["holders"] == []

        # A slot held by the first worker; a run waiting for it in the cluster on the second.
        app.send_task("sem_test.hold_one", args=("kill", "long", 600), queue="w1")
        cw._wait_for(lambda: _started(tmp_path, "long"), 60, "the long run")
        app.send_task("sem_test.hold_one", args=("kill", "next", 0.2), queue="w2")
        cw._wait_for(lambda: coord.inspect_semaphore("one:kill")["waiters"], 60, "the waiting run")
        killed_stamp = log_time()
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool, mid-task
        killed_at = time.time()
        cw._wait_for(lambda: _started(tmp_path, "next"), 30, "the slot's reuse")
        reused_after = float(_started(tmp_path, "next")[0][5]) - killed_at
        # The session's expiry, not at once: within one TTL of the kill. A leader elected
        # meanwhile (a loaded machine) first gives every live session one more TTL (the grace
        # period, ``primitives.sessions``), so then the bound is two TTLs and the election.
        # (CI once measured 4.9 s, against 2.2-2.5 s here; whether a leader was elected then
        # was not recorded, and now is, from the nodes' logs as the chaos checks read them.)
        elected = [x for x in leaderships(coordination_cluster) if x[0] >= killed_stamp]
        bound = 2 * TTL + 1.5 if elected else TTL + 0.5
        print(f"slot reused {reused_after:.3f} s after kill -9 (session TTL {TTL} s, {elected=})")
        assert 1.0 < reused_after <= bound, (
            reused_after,
            elected,
            _warnings(coordination_cluster),
        )
        long_token = int(_started(tmp_path, "long")[0][3])
        assert int(_started(tmp_path, "next")[0][3]) > long_token
    finally:
        cw._stop(first, second)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_revoke_with_terminate_frees_a_slot_and_a_lock_in_under_a_second(
    coordination_cluster, coord, tmp_path, signame
):
    """SIGTERM unwinds the child (billiard's handler): the decorators' ``finally`` releases.
    SIGKILL does not: the main process closes the dead child's session (``celery.worker``)."""
    app = cw._producer(coordination_cluster, "revoke-producer")
    worker = cw._worker(coordination_cluster, tmp_path, session_ttl=TTL, queues="revq")
    try:
        cw._wait_for(lambda: len(cw._worker_sessions(coord, worker)) == 3, 60, "worker start")
        key = f"rev-{signame}"
        held = app.send_task("sem_test.hold", args=(key, "s", 600), queue="revq")
        locked = app.send_task("lock_test.hold", args=(key, "l", 600), queue="revq")
        cw._wait_for(lambda: _started(tmp_path, "s") and _started(tmp_path, "l"), 60, "start")
        assert coord.inspect_semaphore(f"sem:{key}")["holders"]
        assert coord.inspect_lock(f"job:{key}")["holders"]

        for result, free in (
            (held, lambda: not coord.inspect_semaphore(f"sem:{key}")["holders"]),
            (locked, lambda: not coord.inspect_lock(f"job:{key}")["holders"]),
        ):
            revoked_at = time.monotonic()
            app.control.revoke(result.id, terminate=True, signal=signame)
            cw._wait_for(free, 30, "release")
            released_after = time.monotonic() - revoked_at
            print(f"{signame}: released {released_after:.3f} s after revoke")
            assert released_after < 1.0, released_after  # a TTL expiry takes >= 2 s here
        assert not any(e[0] == "end" for e in cw._events(tmp_path))
    finally:
        cw._stop(worker)
