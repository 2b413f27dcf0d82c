"""A Django-configured Celery app on ``raft://`` for both the broker and the result backend, run
by worker *subprocesses* in test_celery_results.py.

The broker URL names the members (``RAFTSYNC_CELERY_BROKER_URL``); the result backend is a bare
``raft://``, i.e. the cluster of the ``COORDINATION`` settings, which the worker takes from
``RAFTSYNC_CLUSTER``/``RAFTSYNC_CLUSTER_SECRET`` like a deployed one. Chord callbacks record each
run as a line ``callback <group> <pid>`` in ``RAFTSYNC_TEST_MARKERS/callbacks``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncproject.test_settings")
django.setup()

from celery import Celery  # noqa: E402

from coordination.celery.backend import RaftBackend  # noqa: E402
from coordination.celery.transport import register  # noqa: E402

register()
app = Celery("raft-results")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    result_backend="raft://",
    task_default_queue="resultsq",  # where chord callbacks sent by the worker go
    task_track_started=True,
    result_extended=True,
    result_expires=3600,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": 60, "session_ttl": 10.0},
)


@app.task(name="results.add")
def add(x: int, y: int = 0) -> int:
    return x + y


@app.task(name="results.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="results.sleep")
def sleep(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


@app.task(name="results.big")
def big(size: int) -> str:
    return "x" * size


@app.task(name="results.waits_on_subtask")
def waits_on_subtask() -> int:
    return add.delay(1, 2).get(timeout=10)  # refused: disable_sync_subtasks is the default


@app.task(name="results.tsum")
def tsum(values: list[int]) -> int:
    request = tsum.request
    with (Path(os.environ["RAFTSYNC_TEST_MARKERS"]) / "callbacks").open("a") as f:
        f.write(f"callback {request.id} {os.getpid()}\n")
    return sum(values)


# Stored with a 2 s result_expires: the expiry test's task (the same setting, on its own backend).
@app.task(name="results.short_lived", backend=RaftBackend(app=app, url="raft://", expires=2))
def short_lived(value: int) -> int:
    return value
