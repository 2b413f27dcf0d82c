"""A plain Celery app run by worker *subprocesses* in test_celery_parity.py, on either broker:
``RAFTSYNC_TEST_BROKER`` / ``RAFTSYNC_TEST_BACKEND`` are ``raft://`` (the test's cluster, with
``RAFTSYNC_TEST_SECRET``) or ``redis://``, so one test runs the same tasks against both.

Tasks record each run as a line ``run <tag> <redelivered> <pid>`` in
``RAFTSYNC_TEST_MARKERS/runs``. ``succeed_then_die`` kills its worker (``--pool solo``: the
task runs in the worker's main process) right after its result is stored and before the message
is acked, which is the window ``worker_deduplicate_successful_tasks`` exists for; Celery's line
saying it skipped such a redelivery ("already completed successfully") goes to
``RAFTSYNC_TEST_MARKERS/ignored``, so the test sees the skip itself, not only its absence.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.exceptions import Reject

import coordination  # noqa: F401  (registers the raft:// transport)

BROKER = os.environ["RAFTSYNC_TEST_BROKER"]
MARKERS = Path(os.environ["RAFTSYNC_TEST_MARKERS"])

app = Celery("parity", broker=BROKER, backend=os.environ["RAFTSYNC_TEST_BACKEND"])
if BROKER.startswith("raft://"):
    secret = os.environ["RAFTSYNC_TEST_SECRET"]
    # A killed worker's session, and with it its leases, ends about 2 s later.
    broker_options: dict[str, Any] = {"secret": secret, "session_ttl": 2.0}
    app.conf.result_backend_transport_options = {"secret": secret}
else:
    # Unacked messages of a killed worker come back after 2 s, swept every second.
    broker_options = {
        "visibility_timeout": 2,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
app.conf.update(
    broker_transport_options=broker_options,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_deduplicate_successful_tasks=True,
    result_expires=600,
)


class _SkippedAsDone(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "already completed successfully" in record.getMessage()


_ignored = logging.FileHandler(MARKERS / "ignored")
_ignored.addFilter(_SkippedAsDone())
_trace_log = logging.getLogger("celery.app.trace")  # Celery logs the skip there, at INFO
_trace_log.addHandler(_ignored)
_trace_log.setLevel(logging.INFO)


def record(tag: str, redelivered: bool) -> None:
    with (MARKERS / "runs").open("a") as f:
        f.write(f"run {tag} {int(bool(redelivered))} {os.getpid()}\n")


@app.task(bind=True, shared=False, name="parity.mark")
def mark(self: Any, tag: str) -> str:
    record(tag, self.request.delivery_info.get("redelivered"))
    return tag


@app.task(bind=True, shared=False, name="parity.reject_once")
def reject_once(self: Any, tag: str) -> str:
    """Rejected with requeue on its first delivery; done on the redelivery."""
    redelivered = self.request.delivery_info.get("redelivered")
    record(tag, redelivered)
    if not redelivered:
        raise Reject("first delivery: requeue", requeue=True)
    return tag


@app.task(bind=True, shared=False, name="parity.succeed_then_die")
def succeed_then_die(self: Any, tag: str) -> str:
    record(tag, self.request.delivery_info.get("redelivered"))
    return tag


@signals.task_success.connect
def _die_before_the_ack(sender: Any = None, result: Any = None, **_: Any) -> None:
    """After the SUCCESS is stored, before the ack: kill -9 this worker, the first time."""
    if sender is None or sender.name != "parity.succeed_then_die":
        return
    first = MARKERS / f"died-{result}"
    if not first.exists():
        first.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
