"""The two threads' worth of plumbing behind the ``raft://`` transport: pushed messages coming in
(``Inbox``) and acknowledgements going out (``AckBatcher``).

The push stream's thread receives messages; kombu delivers them on its own thread (a worker's
event loop, or the thread calling ``drain_events``). ``Inbox`` hands them over with a file
descriptor that becomes readable when something is waiting, which is what kombu's event loop
(``Hub.add_reader``) polls, as it polls a Redis socket; a blocking ``drain_events`` waits on the
same descriptor with ``select``. The descriptor is written once per batch that finds the inbox
empty, not once per message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from typing import Any

from coordination.client.coordinator import Coordinator, Session
from coordination.exceptions import SessionExpired, UnknownQueue, UnknownSession
from coordination.primitives import limits
from raft_node.client import ClusterUnavailable, Timeout

log = logging.getLogger("coordination.celery")


class Inbox:
    """Rows pushed by one thread, taken by another; ``fileno()`` is readable while any wait."""

    def __init__(self) -> None:
        self._rows: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._signalled = False  # a byte is in the pipe (or about to be)
        self.closed = False

    def fileno(self) -> int:
        return self._read_fd

    def put(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            if self.closed:
                return
            self._rows.extend(rows)
            if not self._signalled:  # one byte in the pipe while anything waits, never more
                self._signalled = True
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(self._write_fd, b"!")

    def take(self) -> list[dict[str, Any]]:
        """Everything waiting, oldest first (and the descriptor is quiet again)."""
        with self._lock:
            if self._signalled:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._read_fd, 64)
                self._signalled = False
            rows = list(self._rows)
            self._rows.clear()
        return rows

    def give_back(self, rows: list[dict[str, Any]]) -> None:
        """Rows taken but not delivered (a callback raised): first in line again."""
        if rows:
            with self._lock:
                self._rows.extendleft(reversed(rows))
            self.put([])

    def wait(self, timeout: float | None) -> bool:
        """Block until something waits (True) or ``timeout`` seconds pass (False)."""
        if self._rows:
            return True
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([self._read_fd], [], [], timeout)
            return bool(readable) or bool(self._rows)
        return bool(self._rows)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._rows.clear()
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class AckBatcher:
    """Acks go to the cluster from a background thread, batched: while one ``ack_many`` entry
    commits, the acks that arrive meanwhile gather for the next (group commit), and a first ack
    waits up to ``linger`` seconds for others unless ``flush_at`` of them are waiting already.
    The worker never waits for an ack, and a worker pays about one entry per several tasks
    instead of one per task, also when tasks trickle in one at a time (then every ack was an
    entry of its own, as many as the puts). ``flush_at`` is half the channel's window, so the
    room that acks give back comes in time. An ack is a promise that may still be lost (a crash
    before it commits): the message is then delivered again, which ``acks_late`` already allows
    for. Each committed ack also gives the channel's subscription its room back, so the next
    message is pushed in the same entry.
    """

    def __init__(self, coord: Coordinator, session: Session, linger: float = 0.0) -> None:
        self.coord, self.session = coord, session
        self.linger = linger
        self.flush_at = 1
        self._pending: dict[str, list[int]] = {}
        self._count = 0
        self._first_at = 0.0
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, queue: str, msg_id: int) -> None:
        with self._cv:
            if not self._count:
                self._first_at = time.monotonic()
            self._count += 1
            self._pending.setdefault(queue, []).append(msg_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name=f"raftsync-acks-{self.session.id}"
                )
                self._thread.start()
            self._cv.notify()

    def close(self, timeout: float) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return
                while not self._closed and self._count < self.flush_at:
                    left = self._first_at + self.linger - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                batch, self._pending, self._count = self._pending, {}, 0
            for queue, ids in batch.items():
                for start in range(0, len(ids), limits.BATCH_MAX):
                    self._send(queue, ids[start : start + limits.BATCH_MAX])

    def _send(self, queue: str, ids: list[int]) -> None:
        try:
            self.coord.propose_ack_many(self.session, queue, ids)
        except (SessionExpired, UnknownSession, UnknownQueue):
            pass  # the leases ended with the session: those messages are delivered again
        except (ClusterUnavailable, Timeout) as exc:
            log.warning("event=acks_not_sent queue=%s count=%d error=%s", queue, len(ids), exc)
