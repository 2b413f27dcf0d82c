"""A Django-configured Celery app run by worker *subprocesses* in test_celery_worker.py.

It loads the project's settings (so the ``coordination`` app connects its worker hooks), takes
the cluster from ``RAFTSYNC_CLUSTER``/``RAFTSYNC_CLUSTER_SECRET`` like a deployed worker, and
records what its tasks do as lines ``event tag key token pid time`` in ``RAFTSYNC_TEST_MARKERS``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncproject.test_settings")
django.setup()

from celery import Celery  # noqa: E402

from coordination.celery.decorators import current_lock, distributed_lock  # noqa: E402
from coordination.celery.once import once  # noqa: E402
from coordination.celery.semaphores import current_slot, distributed_semaphore  # noqa: E402

app = Celery("raft-locks")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.broker_transport_options = {
    "session_ttl": float(os.environ.get("RAFTSYNC_TEST_BROKER_TTL", "30"))
}
if os.environ.get("RAFTSYNC_TEST_VISIBILITY"):  # unset: session-held leases, the default
    app.conf.broker_transport_options["visibility_timeout"] = float(
        os.environ["RAFTSYNC_TEST_VISIBILITY"]
    )


def record(event: str, tag: str, key: str = "-", token: int = 0) -> None:
    line = f"{event} {tag} {key} {token} {os.getpid()} {time.time():.3f}\n"
    with (Path(os.environ["RAFTSYNC_TEST_MARKERS"]) / "events").open("a") as f:
        f.write(line)


@app.task(bind=True, name="lock_test.hold", max_retries=None)
@distributed_lock(key="job:{key}", countdown=0.5)
def hold(self, key: str, tag: str, seconds: float) -> None:
    token = current_lock().token
    record("start", tag, key, token)
    time.sleep(min(seconds, float(os.environ.get("RAFTSYNC_TEST_MAX_SLEEP", "inf"))))
    record("end", tag, key, token)


@app.task(name="lock_test.sleep")
def sleep(tag: str, seconds: float) -> None:
    """A long ``acks_late`` task (the project's settings ack late)."""
    record("start", tag)
    time.sleep(seconds)
    record("end", tag)


@app.task(name="lock_test.mark")
def mark(tag: str) -> None:
    record("ran", tag)


@app.task(bind=True, name="sem_test.hold", max_retries=None)
@distributed_semaphore(limit=3, key="sem:{key}")
def sem_hold(self, key: str, tag: str, seconds: float) -> None:
    token = current_slot().token
    record("start", tag, key, token)
    time.sleep(min(seconds, float(os.environ.get("RAFTSYNC_TEST_MAX_SLEEP", "inf"))))
    record("end", tag, key, token)


@app.task(bind=True, name="sem_test.hold_one", max_retries=None)
@distributed_semaphore(limit=1, key="one:{key}", wait=60)
def sem_hold_one(self, key: str, tag: str, seconds: float) -> None:
    """One slot, waited for in the cluster's queue (granted the moment a slot frees)."""
    token = current_slot().token
    record("start", tag, key, token)
    time.sleep(seconds)
    record("end", tag, key, token)


@once(key="once:{customer}")
@app.task(bind=True, name="once_test.report")
def once_report(self, customer: str, tag: str, seconds: float) -> None:
    """A ``@once`` task (test_celery_once.py); a redelivered run takes 0.3 s, not ``seconds``."""
    record("start", tag, customer)
    redelivered = (self.request.delivery_info or {}).get("redelivered")
    time.sleep(0.3 if redelivered else seconds)
    record("end", tag, customer)
