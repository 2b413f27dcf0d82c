"""A Celery app for the kill -9 test, run by a worker *subprocess* (configured through env).

``slow`` records each start in ``RAFTSYNC_TEST_MARKERS`` and then sleeps ``RAFTSYNC_TEST_SLEEP``
seconds before recording completion, so the test can kill a worker while a task is in flight.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

app = Celery("raft-kill", broker=os.environ["RAFTSYNC_TEST_BROKER"])
app.conf.broker_transport_options = {
    "secret": os.environ["RAFTSYNC_TEST_SECRET"],
    "visibility_timeout": 60,
    "session_ttl": 2.0,  # a killed worker's session, and so its leases, end about 2 s later
}
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1


@app.task(name="kill_test.slow")
def slow(tag: str) -> None:
    markers = Path(os.environ["RAFTSYNC_TEST_MARKERS"])
    with (markers / "started").open("a") as f:
        f.write(f"{tag} {os.getpid()}\n")
    time.sleep(float(os.environ.get("RAFTSYNC_TEST_SLEEP", "0")))
    with (markers / "done").open("a") as f:
        f.write(f"{tag} {os.getpid()}\n")
