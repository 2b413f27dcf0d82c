"""The Celery app of the end-to-end benchmark, shared by the worker subprocess and the producer.

    celery -A celery_app worker --pool prefork --concurrency 2 ...   (started by bench_celery.py)

Everything comes from one JSON document in ``BENCH_CELERY_CONFIG`` (``make_app`` takes the same
dict in the producer), so the worker and the producer of a contender cannot disagree and the two
contenders differ only in ``broker_url`` and ``broker_transport_options``.

Completion of the no-op task is recorded without the broker and without a result backend
(``task_ignore_result``): the task appends
``rep seq task_id time.time()`` to a file of its own process under ``marks_dir`` (one ``write``
per line, so nothing is lost in a buffer and no lock is shared between processes). The same code
runs for both brokers; the orchestrator reads the files. The result round trip uses a second
task, ``bench.echo``, whose result *is* stored, in the contender's own result backend
(``result_backend`` in the config: ``raft://`` on the same cluster, or Redis), and read back by
the producer with ``.get()``.

With ``profile`` set, the worker's main process times the raft:// transport's
``Transport._deliver_pushed`` (handing pushed messages to Celery; kombu's Redis transport reads
BRPOP replies in its event loop instead, so it has no such call) and the channel's ``basic_ack``,
and writes the samples to ``marks_dir/profile-worker-<pid>.jsonl`` at shutdown; the producer
does the same for ``_put``.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals

TASK_NAME = "bench.noop"
ECHO_NAME = "bench.echo"  # the result round trip's task: returns its argument, result stored
CONFIG_ENV = "BENCH_CELERY_CONFIG"

_marks: Any = None  # this process's completion file, opened on first use
_samples: list[tuple[str, float, float, str]] = []  # (method, wall start, seconds, thread)
_samples_lock = threading.Lock()


def make_app(config: dict[str, Any]) -> Celery:
    """The app for one contender; identical Celery settings whatever the broker."""
    if config["broker_url"].startswith("raft://"):
        from coordination.celery.transport import register

        register()  # before the app creates its first connection
    app = Celery("bench-celery", broker=config["broker_url"], set_as_current=True)
    app.conf.update(
        result_backend=config.get("result_backend"),
        result_backend_transport_options=config.get("result_options") or {},
        broker_transport_options=config["transport_options"],
        broker_connection_retry_on_startup=True,
        task_default_queue=config["queue"],
        task_acks_late=True,
        task_ignore_result=True,  # the no-op's completion is recorded by the task itself
        worker_prefetch_multiplier=config["prefetch_multiplier"],
        worker_enable_remote_control=False,  # no pidbox consumer next to the task queue
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
    )
    if config.get("result_expires") is not None:  # the soak: results stay a minute, not a day
        app.conf.result_expires = config["result_expires"]

    @app.task(name=TASK_NAME, bind=True)
    def noop(self: Any, rep: int, seq: int) -> None:
        record_done(config["marks_dir"], rep, seq, self.request.id)

    @app.task(name=ECHO_NAME, ignore_result=False)
    def echo(value: int) -> int:
        return value

    return app


def record_done(marks_dir: str, rep: int, seq: int, task_id: str) -> None:
    """Append this task's completion instant to the process's own file (unbuffered)."""
    global _marks
    if _marks is None:
        _marks = open(  # noqa: SIM115 - lives as long as the pool process
            Path(marks_dir) / f"done-{os.getpid()}.log", "a", buffering=1
        )
    _marks.write(f"{rep} {seq} {task_id} {time.time():.6f}\n")


# -- optional profiling of the transport calls (worker and producer) -------------------------------


def _timed(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, t0 = time.time(), time.perf_counter()
        ok = "ok"
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            ok = type(exc).__name__  # raft:// _get raises queue.Empty after an empty wait
            raise
        finally:
            sample = (
                f"{name}:{ok}",
                start,
                time.perf_counter() - t0,
                threading.current_thread().name,
            )
            with _samples_lock:
                _samples.append(sample)

    return wrapper


def install_profiling(app: Celery, methods: tuple[str, ...]) -> None:
    """Wrap these methods of the transport's channel class (``Transport.<name>``: of the
    transport class) with timers, once per process; a method the transport lacks is skipped."""
    with app.connection_for_read() as conn:  # not connected: only its transport class is used
        transport_cls = type(conn.transport)
    for name in methods:
        owner, _, attr = name.rpartition(".")
        cls = transport_cls if owner == "Transport" else transport_cls.Channel
        fn = getattr(cls, attr, None)
        if fn is not None and not getattr(fn, "_bench_timed", False):
            wrapped = _timed(attr, fn)
            wrapped._bench_timed = True  # type: ignore[attr-defined]
            setattr(cls, attr, wrapped)


def dump_profile(marks_dir: str, role: str) -> None:
    """Write (and forget) this process's samples to ``profile-<role>-<pid>.jsonl``."""
    with _samples_lock:
        rows = list(_samples)
        _samples.clear()
    path = Path(marks_dir) / f"profile-{role}-{os.getpid()}.jsonl"
    with path.open("w") as f:
        for method, start, seconds, thread in rows:
            f.write(json.dumps({"m": method, "t": start, "s": seconds, "th": thread}) + "\n")


def _from_env() -> Celery | None:
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        return None  # imported by the orchestrator, which calls make_app itself
    config = json.loads(raw)
    worker_app = make_app(config)
    marks_dir = config["marks_dir"]

    @signals.worker_ready.connect(weak=False)
    def on_ready(**_: Any) -> None:
        (Path(marks_dir) / f"ready-{os.getpid()}").write_text(str(time.time()))

    if config.get("profile"):
        install_profiling(worker_app, ("Transport._deliver_pushed", "basic_ack"))

        @signals.worker_shutdown.connect(weak=False)
        def on_shutdown(**_: Any) -> None:
            dump_profile(marks_dir, "worker")

    return worker_app


app = _from_env()
