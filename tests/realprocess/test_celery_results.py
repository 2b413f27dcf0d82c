"""The ``raft://`` result backend with a real Celery worker (prefork, ``raft://`` broker too):
values, failures, states, extended results, forget, expiry, groups, a chord, limits, waits
that never poll, and a Raft leader killed with -9 while 200 results are stored and read.

One cluster and one worker per module: the worker stores results through a bare ``raft://``
(the Django settings' cluster); this process reads them through ``raft://h:p;raft://h:p``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery, chord, group, states
from celery.app.task import Context
from celery.exceptions import ChordError, TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, GroupResult

from coordination.celery.backend import RaftBackend, cluster_key
from coordination.celery.transport import register
from coordination.client.results import Results
from coordination.exceptions import ResultTooLarge, UnknownQueue
from raft_node.client import ClusterUnavailable, Timeout
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]
ROOT = Path(__file__).resolve().parents[2]
QUEUE = "resultsq"


def _urls(cluster: LocalCluster) -> str:
    return ";".join(f"raft://{h}:{p}" for h, p in cluster.addresses.values())


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results-markers")


@pytest.fixture(scope="module")
def app(coordination_cluster: LocalCluster) -> Celery:
    register()
    producer = Celery("results-producer", broker=_urls(coordination_cluster))
    producer.conf.update(
        broker_transport_options={"secret": coordination_cluster.secret},
        result_backend=_urls(coordination_cluster),
        result_backend_transport_options={"secret": coordination_cluster.secret},
        task_default_queue=QUEUE,
        result_extended=True,
    )
    return producer


@pytest.fixture(scope="module")
def worker(coordination_cluster: LocalCluster, markers: Path, app: Celery):
    cluster = coordination_cluster
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "syncproject.test_settings",
        "RAFTSYNC_CLUSTER": ",".join(f"{n}={h}:{p}" for n, (h, p) in cluster.addresses.items()),
        "RAFTSYNC_CLUSTER_SECRET": cluster.secret,
        "RAFTSYNC_CELERY_BROKER_URL": _urls(cluster),
        "RAFTSYNC_TEST_MARKERS": str(markers),
    }
    cmd = [sys.executable, "-m", "celery", "-A", "tests.realprocess.celery_results_app"]
    cmd += ["worker", "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING"]
    cmd += ["-Q", QUEUE, "--without-heartbeat", "--without-gossip", "--without-mingle"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
    try:
        assert task(app, "results.add", 1, 1).get(timeout=90) == 2  # up and storing
        yield proc
    finally:
        # Killed, not stopped: a warm shutdown of the worker takes ~5 s (its broker side) and
        # is tested in test_celery_worker.py; the cluster goes away with the module anyway.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.fixture
def results(app: Celery) -> Results:
    return app.backend.results


def task(app: Celery, name: str, *args, **options) -> AsyncResult:
    return app.send_task(name, args=args, **options)


def meta_key(app: Celery, task_id: str) -> str:
    return cluster_key(app.backend.get_key_for_task(task_id))


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- values, failures, states ---------------------------------------------------------------------


def test_get_returns_the_value_stored_by_the_worker(app, worker, results) -> None:
    assert isinstance(app.backend, RaftBackend)
    result = app.send_task("results.add", args=(2, 3))
    assert result.get(timeout=30) == 5
    assert result.state == states.SUCCESS and result.successful()
    record = results.get(meta_key(app, result.id))
    assert record is not None and record.final and b'"SUCCESS"' in record.value


def test_a_task_exception_propagates_or_is_returned(app, worker) -> None:
    result = task(app, "results.fail", "boom 42")
    with pytest.raises(ValueError, match="boom 42"):
        result.get(timeout=30)
    assert result.state == states.FAILURE and "boom 42" in result.traceback
    assert isinstance(result.get(propagate=False), ValueError)


def test_task_track_started_is_visible_while_the_task_runs(app, worker) -> None:
    result = task(app, "results.sleep", 1.5, "slept")
    _wait_for(lambda: result.state == states.STARTED, 30, "STARTED")
    assert result.get(timeout=30) == "slept"


def test_result_extended_fields(app, worker) -> None:
    sent = app.send_task("results.add", args=(4,), kwargs={"y": 5})
    assert sent.get(timeout=30) == 9
    fresh = AsyncResult(sent.id, app=app)  # read back from the cluster, not the sender's cache
    assert fresh.name == "results.add" and fresh.args == [4] and fresh.kwargs == {"y": 5}
    assert fresh.worker.startswith("celery@") and fresh.queue == QUEUE
    assert fresh.date_done is not None


def test_get_times_out_with_celerys_timeout_error_then_gets_the_value(app, worker) -> None:
    result = task(app, "results.sleep", 2.0, "late")
    with pytest.raises(CeleryTimeoutError):
        result.get(timeout=0.3)
    assert result.get(timeout=30) == "late"


def test_get_is_a_leader_served_wait_not_a_polling_loop(app, worker, monkeypatch) -> None:
    """A 2 s task: ``.get()`` never sleeps in this process and sends a single wait, which the
    worker's store completes; a group is joined with one read and waits, again no sleep."""
    waits: list[list[str]] = []
    real_wait = Results.wait

    def counted(self, keys, timeout):
        waits.append(list(keys))
        return real_wait(self, keys, timeout)

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"a result wait slept {seconds} s in the client")

    monkeypatch.setattr(Results, "wait", counted)
    monkeypatch.setattr(app.backend, "_wait_chunk", 10.0)
    result = task(app, "results.sleep", 2.0, "patient")
    with monkeypatch.context() as m:
        m.setattr(time, "sleep", no_sleep)
        assert result.get(timeout=30) == "patient"
    assert waits == [[meta_key(app, result.id)]]

    waits.clear()
    members = group(app.signature("results.sleep", (0.5 + i / 10, i)) for i in range(4))()
    with monkeypatch.context() as m:
        m.setattr(time, "sleep", no_sleep)
        assert members.get(timeout=30) == [0, 1, 2, 3]
    assert 1 <= len(waits) <= 4


def test_long_timeouts_are_waited_in_chunks(app, worker, monkeypatch) -> None:
    """Waits of at most ``wait_chunk`` seconds each, until the value or the deadline."""
    waits: list[float] = []
    real_wait = Results.wait

    def counted(self, keys, timeout):
        waits.append(timeout)
        return real_wait(self, keys, timeout)

    monkeypatch.setattr(Results, "wait", counted)
    monkeypatch.setattr(app.backend, "_wait_chunk", 0.3)
    result = task(app, "results.sleep", 1.2, "chunked")
    assert result.get(timeout=30) == "chunked"
    assert len(waits) >= 3 and max(waits) <= 0.3
    waits.clear()
    slow = task(app, "results.sleep", 2.0, "too slow")
    with pytest.raises(CeleryTimeoutError):
        slow.get(timeout=0.7)
    assert len(waits) >= 3 and max(waits) <= 0.3
    assert slow.get(timeout=30) == "too slow"


# -- forget, expiry, revoke, limits ---------------------------------------------------------------


def test_forget_removes_the_result(app, worker, results) -> None:
    result = task(app, "results.add", 1, 1)
    assert result.get(timeout=30) == 2
    result.forget()
    assert results.get(meta_key(app, result.id)) is None
    assert AsyncResult(result.id, app=app).state == states.PENDING


def test_result_expires_removes_results_by_log_time(app, worker, results) -> None:
    """``results.short_lived`` stores through a backend with ``result_expires=2``."""
    expired_before = results.stats()["expired"]
    result = task(app, "results.short_lived", 7)
    assert result.get(timeout=30) == 7
    record = results.get(meta_key(app, result.id))
    assert record is not None and record.expires_ms is not None
    _wait_for(lambda: results.get(meta_key(app, result.id)) is None, 15, "expiry")
    assert AsyncResult(result.id, app=app).state == states.PENDING
    _wait_for(lambda: results.stats()["expired"] > expired_before, 15, "the tick removing it")
    other = task(app, "results.add", 0, 1)
    assert other.get(timeout=30) == 1
    kept = results.get(meta_key(app, other.id))  # stored later, with the app's 1 h expiry
    assert kept is not None and kept.expires_ms >= record.expires_ms + 3_500_000


def test_a_revoked_task_reports_revoked(app, worker) -> None:
    result = app.send_task("results.add", args=(1, 1), countdown=3)
    app.control.revoke(result.id)
    assert isinstance(result.get(timeout=30, propagate=False), TaskRevokedError)
    assert result.state == states.REVOKED


def test_a_result_over_the_size_limit_is_a_typed_failure(app, worker) -> None:
    """What the caller gets: the worker refused to send the 600 kB result
    (``ResultTooLarge``, before anything reached the cluster) and Celery stored that as the
    task's FAILURE, so ``.get()`` raises it, naming the task and the limit."""
    result = task(app, "results.big", 600_000)
    with pytest.raises(ResultTooLarge) as info:
        result.get(timeout=30)
    assert result.id in str(info.value) and "RESULT_VALUE_MAX_BYTES" in str(info.value)
    assert info.value.limit == 512 * 1024 and info.value.size > 600_000
    assert result.state == states.FAILURE


def test_disable_sync_subtasks_refuses_get_inside_a_task(app, worker) -> None:
    with pytest.raises(RuntimeError, match=r"Never call result\.get\(\)"):
        task(app, "results.waits_on_subtask").get(timeout=30)


# -- groups and chords ----------------------------------------------------------------------------


def test_group_results_save_restore_and_delete(app, worker) -> None:
    saved = group(app.signature("results.add", (i, i)) for i in range(10))()
    saved.save()
    restored = GroupResult.restore(saved.id, app=app)
    assert restored is not None and [r.id for r in restored.results] == [
        r.id for r in saved.results
    ]
    assert restored.get(timeout=30) == [2 * i for i in range(10)]
    assert restored.join(timeout=30) == [2 * i for i in range(10)]  # one get() per result
    restored.delete()
    assert GroupResult.restore(saved.id, app=app) is None


def test_a_chord_of_ten_runs_its_callback_once(app, worker, results, markers) -> None:
    header = [app.signature("results.add", (i, 1)) for i in range(10)]
    result = chord(header)(app.signature("results.tsum"))
    assert result.get(timeout=60) == sum(range(1, 11))
    runs = [line for line in (markers / "callbacks").read_text().splitlines() if result.id in line]
    assert len(runs) == 1, runs
    counter = results.get(cluster_key(app.backend.get_key_for_chord(result.parent.id)))
    assert counter is not None and counter.value == 11  # ten parts, each once, and the mark


def test_a_chord_with_a_failing_part_fails_its_callback(app, worker, markers) -> None:
    header = [app.signature("results.add", (i, 1)) for i in range(3)]
    header.append(app.signature("results.fail", ("part failed",)))
    result = chord(header)(app.signature("results.tsum"))
    with pytest.raises(Exception, match="part failed"):
        result.get(timeout=60)  # the failed header part itself, or the callback's ChordError
    callback = AsyncResult(result.id, app=app)  # the callback's own result: its chord error
    error = callback.get(timeout=30, propagate=False)
    assert isinstance(error, ChordError) and "part failed" in str(error)
    assert callback.state == states.FAILURE
    runs = (markers / "callbacks").read_text() if (markers / "callbacks").exists() else ""
    assert result.id not in runs


# -- the backend in this process (no worker) ------------------------------------------------------


def _backend_app(cluster: LocalCluster, url: str | None = None, **conf) -> Celery:
    other = Celery("results-unit", broker=_urls(cluster))
    other.conf.update(
        broker_transport_options={"secret": cluster.secret},
        result_backend=url or _urls(cluster),
        result_backend_transport_options={"secret": cluster.secret},
        **conf,
    )
    return other


def test_urls_name_the_members_or_the_settings_cluster(coordination_cluster, settings) -> None:
    cluster = coordination_cluster
    (h1, p1), (h2, p2), _ = cluster.addresses.values()
    comma = _backend_app(cluster, f"raft://{h1}:{p1},{h2}:{p2}").backend
    semicolon = _backend_app(cluster, f"raft://{h1}:{p1};raft://{h2}:{p2}").backend
    assert comma._hosts == semicolon._hosts == [f"{h1}:{p1}", f"{h2}:{p2}"]
    masked = _backend_app(cluster, f"raft://u:pw@{h1}:{p1};raft://u:pw@{h2}:{p2}").backend
    assert masked.as_uri() == f"raft://u:**@{h1}:{p1};raft://u:**@{h2}:{p2}"  # worker banner
    assert comma.as_uri() == f"raft://{h1}:{p1},{h2}:{p2}"
    copy = pickle.loads(pickle.dumps(semicolon))  # Celery pickles backends with their app
    assert isinstance(copy, RaftBackend) and copy._hosts == semicolon._hosts
    settings.COORDINATION = {
        **settings.COORDINATION,
        "CLUSTER": ",".join(f"{n}={h}:{p}" for n, (h, p) in cluster.addresses.items()),
        "CLUSTER_SECRET": cluster.secret,
    }
    bare = Celery("results-bare")
    bare.conf.result_backend = "raft://"  # no hosts, no secret: the COORDINATION settings
    backend = bare.backend
    assert isinstance(backend, RaftBackend) and backend._hosts == []
    assert sorted(backend.results.coord.addresses) == sorted(cluster.addresses.values())
    backend.store_result("bare-url-task", {"ok": 1}, states.SUCCESS)
    assert semicolon.get_task_meta("bare-url-task")["result"] == {"ok": 1}
    assert comma.results is semicolon.results  # one client per process and cluster


def test_each_process_gets_its_own_client(coordination_cluster) -> None:
    backend = _backend_app(coordination_cluster).backend
    parent = backend.results
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new client (new sockets), which works
        try:
            ok = backend.results is not parent and backend.results.get("nothing-here") is None
            backend.store_result("forked-child", "from the child", states.SUCCESS)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert backend.results is parent
    assert backend.get_task_meta("forked-child")["result"] == "from the child"


def test_a_success_is_never_replaced_and_expiries_follow_the_settings(coordination_cluster):
    backend = _backend_app(
        coordination_cluster, result_expires=timedelta(seconds=60), result_failure_expires=5
    ).backend
    backend.store_result("kept-success", 1, states.SUCCESS)
    backend.store_result("kept-success", ValueError("lost duplicate"), states.FAILURE)
    assert backend.get_task_meta("kept-success", cache=False)["status"] == states.SUCCESS
    backend.store_result("short-failure", ValueError("x"), states.FAILURE)
    success = backend.results.get(cluster_key(backend.get_key_for_task("kept-success")))
    failure = backend.results.get(cluster_key(backend.get_key_for_task("short-failure")))
    assert 54_000 <= success.expires_ms - failure.expires_ms <= 56_000  # 60 s vs 5 s
    forever = _backend_app(coordination_cluster, result_expires=None).backend
    forever.store_result("no-expiry", 1, states.SUCCESS)
    assert (
        forever.results.get(cluster_key(forever.get_key_for_task("no-expiry"))).expires_ms is None
    )


def test_a_too_large_result_is_refused_before_anything_is_sent(coordination_cluster, monkeypatch):
    backend = _backend_app(coordination_cluster).backend
    sent: list[bytes] = []
    monkeypatch.setattr(backend.results.coord, "propose", lambda body, **_: sent.append(body))
    with pytest.raises(ResultTooLarge) as info:
        backend.store_result("too-big", "x" * (512 * 1024), states.SUCCESS)
    assert "too-big" in str(info.value) and sent == []


def test_a_failure_is_always_recorded_slimmed_if_needed(coordination_cluster) -> None:
    """A failure whose traceback, or exception, is over the limit is still stored: traceback
    tail only, or the exception replaced by ``ResultTooLarge``."""
    backend = _backend_app(coordination_cluster).backend
    backend.store_result("long-trace", ValueError("short"), states.FAILURE, "t" * 600_000)
    meta = backend.get_task_meta("long-trace", cache=False)
    assert meta["status"] == states.FAILURE and isinstance(meta["result"], ValueError)
    assert meta["traceback"].startswith("[truncated") and len(meta["traceback"]) < 20_000
    backend.store_result("huge-error", ValueError("x" * 600_000), states.FAILURE)
    meta = backend.get_task_meta("huge-error", cache=False)
    assert meta["status"] == states.FAILURE and isinstance(meta["result"], ResultTooLarge)
    assert "huge-error" in str(meta["result"])


def test_chord_parts_that_run_twice_are_counted_once_and_fire_once(coordination_cluster):
    """``on_chord_part_return`` for parts 0 and 1, part 1 again (a redelivery), part 2 (the
    callback is sent), then parts 2 and 0 again: one callback message. Then the recovery rule:
    a chord whose completing part died before sending its callback gets it when that part
    runs again."""
    app = _backend_app(coordination_cluster)
    backend, coord = app.backend, app.backend.results.coord
    queue = f"chord-unit-{uuid.uuid4().hex[:8]}"

    def depth() -> int:
        try:
            return coord.queue(queue).stats()["depth"]
        except UnknownQueue:
            return 0

    def chord_of_three(gid: str) -> tuple[list[str], dict]:
        ids = [f"{gid}-part{i}" for i in range(3)]
        backend.apply_chord((gid, [AsyncResult(i, app=app) for i in ids]), None)
        callback = dict(app.signature("results.tsum", queue=queue))
        return ids, callback

    def part_returns(gid: str, ids: list[str], callback: dict, i: int) -> None:
        request = Context(id=ids[i], group=gid, group_index=i, chord=callback)
        backend.store_result(ids[i], i, states.SUCCESS, request=request)
        backend.on_chord_part_return(request, states.SUCCESS, i)

    gid = f"unit-chord-{uuid.uuid4().hex[:8]}"
    ids, callback = chord_of_three(gid)
    for i in (0, 1, 1):
        part_returns(gid, ids, callback, i)
    assert depth() == 0
    part_returns(gid, ids, callback, 2)
    assert depth() == 1
    for i in (2, 0):
        part_returns(gid, ids, callback, i)
    assert depth() == 1
    assert backend.results.get(cluster_key(backend.get_key_for_chord(gid))).value == 4

    gid = f"unit-chord-{uuid.uuid4().hex[:8]}"
    ids, callback = chord_of_three(gid)
    for i in (0, 1):
        part_returns(gid, ids, callback, i)
    key = cluster_key(backend.get_key_for_chord(gid))
    backend.results.incr(key, member=f"{ids[2]}:2")  # part 2 counted, then its worker died
    part_returns(gid, ids, callback, 1)  # another part's duplicate does not send it
    assert depth() == 1
    part_returns(gid, ids, callback, 2)  # part 2, redelivered, sends it
    assert depth() == 2


# -- fault: the leader killed while results flow -------------------------------------------------


def test_killing_the_leader_loses_no_stored_result(app, worker, coordination_cluster) -> None:
    """200 tasks; 4 producer threads each send one and ``.get()`` it, in turn. After 40 results
    the leader is killed with -9. Every ``.get()`` returns its task's value or raises a typed
    timeout; afterwards every one of the 200 results is readable, with its value."""
    cluster = coordination_cluster
    sent: dict[int, AsyncResult] = {}
    outcomes: dict[int, object] = {}
    typed = (CeleryTimeoutError, Timeout, ClusterUnavailable)
    lock = threading.Lock()
    next_index = iter(range(200))

    def producer() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            result = app.send_task("results.add", args=(i, 1000))
            sent[i] = result
            try:
                outcomes[i] = result.get(timeout=20)
            except typed as exc:
                outcomes[i] = exc

    threads = [threading.Thread(target=producer) for _ in range(4)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: len(outcomes) >= 40, 60, "40 results")
    leader = cluster.leader()
    cluster.kill(leader)
    at_kill = len(outcomes)
    for thread in threads:
        thread.join(120)
    cluster.start_node(leader)
    assert len(outcomes) == 200
    assert at_kill < 200  # the leader died while results were being stored and read
    for i, outcome in outcomes.items():
        assert outcome == i + 1000 or isinstance(outcome, typed), (i, outcome)
    # After the fault: all 200 are stored and readable, each with its own value.
    reader = GroupResult(results=[AsyncResult(sent[i].id, app=app) for i in range(200)], app=app)
    assert reader.join_native(timeout=60) == [i + 1000 for i in range(200)]
    cluster.wait_for_leader()
