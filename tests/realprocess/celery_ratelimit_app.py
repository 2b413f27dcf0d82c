"""A Django-configured Celery app run by worker *subprocesses* in test_ratelimit_celery.py.

One task, limited cluster-wide by ``@rate_limit`` (rate and burst from
``RAFTSYNC_TEST_RATE``/``RAFTSYNC_TEST_BURST``); each run appends ``ran <i> <pid> <time>`` to
its process's own file under ``RAFTSYNC_TEST_MARKERS`` (one writer per file, no interleaving).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncproject.test_settings")
django.setup()

from celery import Celery  # noqa: E402

from coordination.celery.ratelimit import rate_limit  # noqa: E402

app = Celery("raft-ratelimit")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(bind=True, name="rl_test.run", max_retries=0, ignore_result=True)
@rate_limit(
    os.environ.get("RAFTSYNC_TEST_RATE", "50/s"),
    key="acceptance:{bucket}",
    burst=int(os.environ.get("RAFTSYNC_TEST_BURST", "25")),
)
def run(self, bucket: str, i: int) -> None:
    line = f"ran {i} {os.getpid()} {time.time():.4f}\n"
    with (Path(os.environ["RAFTSYNC_TEST_MARKERS"]) / f"ran-{os.getpid()}").open("a") as f:
        f.write(line)
