"""Queue puts that do not wait for their commit: the ``raft://`` transport's
``confirm_publish=False``.

By default a publish (Celery's ``delay()``) returns once its put is committed on a majority, so
one producer thread publishes at most one message per commit (about a millisecond on the
project's 2-core VM, where etcd's own commit takes as long). With ``confirm_publish=False`` a
publish hands its put to this pipeline and returns at once. A background thread sends what has
gathered, one ``queue.put_many`` per queue (``PutSender``), while the batch before it commits
(group commit, one batch in flight), so the puts of one producer keep their order.

This is what Celery users know from RabbitMQ, whose publishes are unconfirmed unless the
transport sets ``confirm_publish``, and from Redis, which answers before anything is on disk.
The price is the same: a put that fails after ``put`` returned (the cluster unavailable for
longer than the client's timeout, a full queue) cannot be reported to the caller. It is logged
(``event=publish_failed``, ERROR, with the queue, the count and the error) and counted in
``failed``; a put whose outcome is unknown is logged as such (``event=publish_unknown``: it may
be queued). Every outcome is also counted in Prometheus (``publish_metrics``), where the
``metrics`` extra is installed. ``flush`` waits until everything handed over is answered and
says whether all of it was queued. The transport flushes when its channel closes, and every
pipeline still open is flushed when the interpreter exits (``atexit``), so a management command
that publishes and exits loses nothing to the daemon thread dying with it. Puts that need their
answer (a ``@once`` task's held key) stay confirmed.

``max_pending`` bounds the puts waiting to be sent: a producer faster than the cluster then
blocks in ``put`` (back-pressure) instead of growing memory without limit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from coordination.client import publish_metrics
from coordination.client.put_combiner import PendingPut, PutSender
from raft_node.client import OutcomeUnknown

log = logging.getLogger("coordination.client.put_pipeline")

Propose = Callable[[bytes], Any]  # blocking: a coordinator's propose
MAX_PENDING = 10_000


class PutPipeline:
    """Unconfirmed puts to one cluster through ``propose``, sent in order by one thread."""

    def __init__(self, propose: Propose, *, max_pending: int = MAX_PENDING) -> None:
        self._propose = propose
        self.max_pending = max_pending
        self._cv = threading.Condition()
        self._pending: list[PendingPut] = []
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self.sent = 0  # puts answered as queued
        self.failed = 0  # puts refused, or lost with the cluster; their outcome is known
        self.unknown = 0  # puts whose outcome is unknown (may be queued)
        self._troubled = 0  # failed or unknown since the last flush
        _OPEN.add(self)

    def put(self, name: str, row: list[Any]) -> None:
        """Hand over one put (``ops.put_row(...)``) for queue ``name``; returns at once unless
        ``max_pending`` puts are already waiting."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the publish pipeline is closed")
            if self._pid != os.getpid():  # a forked child: the parent sends what it handed over
                self._pid, self._pending, self._in_flight, self._thread = os.getpid(), [], 0, None
            while len(self._pending) >= self.max_pending and not self._closed:
                self._cv.wait()
            if self._closed:
                raise RuntimeError("the publish pipeline is closed")
            self._pending.append(PendingPut(self._propose, name, row))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="raftsync-publish"
                )
                self._thread.start()
            self._cv.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every put handed over so far to be answered.
        True if all were, and none failed or ended unknown since the last flush."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._pending or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cv.wait(left)
            clean, self._troubled = not self._troubled, 0
            return clean

    def close(self, timeout: float) -> bool:
        """Flush, then stop the thread. Puts still waiting after ``timeout`` are dropped and
        logged (``event=publish_lost``); a batch still committing may yet land."""
        clean = self.flush(timeout)
        with self._cv:
            self._closed = True
            dropped, committing = len(self._pending), self._in_flight
            for queue, count in Counter(put.name for put in self._pending).items():
                publish_metrics.count(queue, "lost", count)
            self._pending = []
            self._cv.notify_all()
        if dropped:
            log.error("event=publish_lost count=%d reason=not sent before close", dropped)
        if committing:
            log.error("event=publish_unknown count=%d reason=still committing at close", committing)
        _OPEN.discard(self)
        return clean and not (dropped or committing)

    def _run(self) -> None:
        sender = PutSender()
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed or self._pid != os.getpid():
                    return
                batch, self._pending = self._pending, []
                self._in_flight = len(batch)
                self._cv.notify_all()  # room for producers blocked on max_pending
            try:
                sender.send(batch)
            except BaseException as exc:  # never leave puts unanswered: count them as lost
                for put in batch:
                    if put.answer is None and put.error is None:
                        put.error = exc
            finally:
                self._account(batch)

    def _account(self, batch: list[PendingPut]) -> None:
        failed: dict[tuple[str, str], int] = {}
        unknown: dict[tuple[str, str], int] = {}
        queued: dict[str, int] = {}
        for put in batch:
            if put.error is None:
                queued[put.name] = queued.get(put.name, 0) + 1
                continue
            into = unknown if isinstance(put.error, OutcomeUnknown) else failed
            key = (put.name, f"{type(put.error).__name__}: {put.error}")
            into[key] = into.get(key, 0) + 1
        for (queue, error), count in failed.items():
            log.error("event=publish_failed queue=%s count=%d error=%s", queue, count, error)
            publish_metrics.count(queue, "failed", count)
        for (queue, error), count in unknown.items():
            log.error("event=publish_unknown queue=%s count=%d error=%s", queue, count, error)
            publish_metrics.count(queue, "unknown", count)
        for queue, count in queued.items():
            publish_metrics.count(queue, "queued", count)
        with self._cv:
            lost, maybe = sum(failed.values()), sum(unknown.values())
            self.failed += lost
            self.unknown += maybe
            self.sent += len(batch) - lost - maybe
            self._troubled += lost + maybe
            self._in_flight = 0
            self._cv.notify_all()


_OPEN: weakref.WeakSet[PutPipeline] = weakref.WeakSet()
EXIT_FLUSH_SECONDS = 10.0


def _forget_after_fork() -> None:
    """A forked child (a Celery prefork pool process) starts each inherited pipeline empty,
    with a fresh lock (one a parent's thread held at the fork would never be released) and no
    thread: the parent sends what was handed over before the fork."""
    for pipeline in list(_OPEN):
        pipeline._cv = threading.Condition()
        pipeline._pid, pipeline._pending, pipeline._in_flight = os.getpid(), [], 0
        pipeline._thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _flush_at_exit() -> None:
    """The sending thread is a daemon: without this, puts handed over just before the
    interpreter exits would die with it."""
    deadline = time.monotonic() + EXIT_FLUSH_SECONDS
    for pipeline in list(_OPEN):
        if pipeline._pid == os.getpid():
            pipeline.close(max(0.0, deadline - time.monotonic()))
