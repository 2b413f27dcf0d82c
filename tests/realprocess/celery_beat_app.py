"""A Celery app run by ``celery beat`` *subprocesses* in test_celery_beat.py, on the elected
scheduler (``coordination.celery.beat``) with the test cluster as its ``raft://`` broker.

Its one schedule entry is due at every whole second of the wall clock (``WholeSeconds``), so
the beats share one timetable: two beats sending for the same second would be a duplicate.
Every send is recorded, in the beat process at publish time, as a line
``sent <scheduled second> <pid> <time>`` in ``RAFTSYNC_TEST_MARKERS``/events. The scheduled
second is the one in which ``is_due`` found the entry due (the beat publishes right after, on
the same thread), not the publish time's: on a loaded machine a publish may cross into the
next second, and labelling by it would count two ticks as one second.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery
from celery.schedules import schedstate, schedule
from celery.signals import after_task_publish

app = Celery("raft-beat", broker=os.environ["RAFTSYNC_TEST_BROKER"])
app.conf.broker_transport_options = {"secret": os.environ["RAFTSYNC_CLUSTER_SECRET"]}
app.conf.task_default_queue = os.environ.get("RAFTSYNC_TEST_QUEUE", "beatq")
app.conf.beat_scheduler = "coordination.celery.beat:ElectedScheduler"
app.conf.beat_election_ttl = float(os.environ.get("RAFTSYNC_TEST_TTL", "2"))
app.conf.beat_max_loop_interval = 1.0


_due_second = [0]  # the second of the last tick found due (the beat loop is one thread)


class WholeSeconds(schedule):
    """Due once per whole second of the wall clock (the second after the last run's)."""

    def __init__(self) -> None:
        super().__init__(run_every=1.0)

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = time.time()
        until_next = max(0.001, math.floor(now) + 1 - now)
        due = math.floor(now) > math.floor(last_run_at.timestamp())
        if due:
            _due_second[0] = math.floor(now)
        return schedstate(due, until_next)

    def __reduce__(self) -> Any:
        return self.__class__, ()


app.conf.beat_schedule = {"tick": {"task": "beat_test.tick", "schedule": WholeSeconds()}}


@app.task(name="beat_test.tick")
def tick() -> None:
    """Never run (no worker): the test counts the sends."""


@after_task_publish.connect
def record(sender: str | None = None, **kwargs: Any) -> None:
    now = time.time()
    line = f"sent {_due_second[0]} {os.getpid()} {now:.3f}\n"
    with (Path(os.environ["RAFTSYNC_TEST_MARKERS"]) / "events").open("a") as f:
        f.write(line)
