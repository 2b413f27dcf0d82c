"""Combine the blocking queue puts of many threads of one process into ``queue.put_many``
entries (group commit), for publishers such as Celery's producer threads.

A threaded web server publishing tasks makes one ``raft://`` channel, one coordinator and one
blocking put per thread, each a log entry of its own. Here a put that finds no other put of the
process in flight goes out at once, as a plain ``queue.put`` (a lone publisher pays nothing
more). A put that arrives while one is in flight waits for it; when the in-flight put returns,
the thread that sent it hands the puts that gathered meanwhile to the first of their threads,
which sends them as one ``queue.put_many`` per queue and answers the others. So under load a
commit carries every put that arrived during the one before (as ``PutBatcher`` does for
coroutines, and as a database's group commit does for transactions). One batch in flight, not
more: letting a second go out while the first commits made 8 Celery producer threads slower end
to end in each of 4 alternating rounds (1,046/1,032, 925/869, 895/725, 1,030/940 tasks/s; 0.64
log entries per task instead of 0.50), because the extra entries cost the nodes more than the
shorter wait saves the producers.

Each put is still checked and answered on its own (a refusal fails that put alone); a batch
whose outcome is unknown fails each of its puts with an ``OutcomeUnknown`` that resolves to that
put's result. A batch is sent through the coordinator of the thread that leads it: all of them
name the same cluster (``combiner_for`` keys combiners by cluster). Against a node without
``queue.put_many`` (an older release) the combiner sends the gathered puts one by one, for good.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import coordination.client.operations as ops
from coordination.client.put_batcher import BATCH_BYTES, copy_error, payload_size, unknown_for
from coordination.exceptions import BadRequest
from coordination.primitives import commands as c
from coordination.primitives import limits
from raft_node.client import OutcomeUnknown

Propose = Callable[[bytes], Any]  # blocking: a coordinator's propose


class PendingPut:
    """One put, and then its answer (``result``) once ``done`` is set."""

    __slots__ = ("answer", "batch", "done", "error", "name", "propose", "row")

    def __init__(self, propose: Propose, name: str, row: list[Any]) -> None:
        self.propose, self.name, self.row = propose, name, row
        self.done = threading.Event()
        self.batch: list[PendingPut] | None = None  # set when this thread is to send a batch
        self.answer: Any = None
        self.error: BaseException | None = None

    def result(self) -> ops.PutResult:
        if self.error is not None:
            raise self.error
        return self.answer


class PutCombiner:
    """One per cluster and process (``combiner_for``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._gathered: list[PendingPut] = []
        self._sender = PutSender()

    @property
    def batches_supported(self) -> bool:
        return self._sender.batches_supported

    def put(self, propose: Propose, name: str, row: list[Any]) -> ops.PutResult:
        """``row``: ``ops.put_row(...)``. Returns the put's result, raises its refusal."""
        mine = PendingPut(propose, name, row)
        with self._lock:
            lead = not self._busy
            if lead:
                self._busy = True
            else:
                self._gathered.append(mine)
        if lead:
            self._lead([mine])
            return mine.result()
        mine.done.wait()
        if mine.batch is not None:  # handed the next batch (ours is in it): send it
            batch, mine.batch = mine.batch, None
            self._lead(batch)
        return mine.result()

    def _lead(self, batch: list[PendingPut]) -> None:
        """Send ``batch``, answer its puts, then hand what gathered meanwhile to its first."""
        try:
            self._sender.send(batch)
        finally:
            for put in batch:
                if put.answer is None and put.error is None:  # interrupted (KeyboardInterrupt)
                    put.error = RuntimeError("the thread sending this put was interrupted")
            with self._lock:
                gathered, self._gathered = self._gathered, []
                if not gathered:
                    self._busy = False
            for put in batch:
                put.done.set()
            if gathered:
                gathered[0].batch = gathered
                gathered[0].done.set()


class PutSender:
    """Sends gathered puts: one ``queue.put_many`` per queue and chunk, in order, and answers
    each put. Against a node without ``queue.put_many`` it sends them one by one, for good."""

    def __init__(self) -> None:
        self.batches_supported = True

    def send(self, batch: list[PendingPut]) -> None:
        by_queue: dict[str, list[PendingPut]] = {}
        for put in batch:
            by_queue.setdefault(put.name, []).append(put)
        propose = batch[0].propose
        for puts in by_queue.values():
            for chunk in _chunks(puts):
                if len(chunk) > 1 and self.batches_supported and self._send_many(propose, chunk):
                    continue
                for put in chunk:
                    _send_one(propose, put)

    def _send_many(self, propose: Propose, puts: list[PendingPut]) -> bool:
        """One ``queue.put_many``; False if the cluster does not know it (send one by one)."""
        try:
            answers = propose(c.queue_put_many(puts[0].name, [p.row for p in puts]))
        except OutcomeUnknown as exc:
            for position, put in enumerate(puts):
                put.error = unknown_for(exc, position)
            return True
        except BadRequest as exc:
            if "unknown command" in str(exc):
                self.batches_supported = False
                return False
            for put in puts:
                put.error = copy_error(exc)
            return True
        except Exception as exc:
            for put in puts:
                put.error = copy_error(exc)
            return True
        for put, answer in zip(puts, answers, strict=True):
            try:
                put.answer = ops.put_answer(answer)
            except Exception as refused:
                put.error = refused
        return True


def _chunks(puts: list[PendingPut]) -> list[list[PendingPut]]:
    """``puts`` in order, cut at ``BATCH_MAX`` messages or ``BATCH_BYTES`` of payload."""
    chunks: list[list[PendingPut]] = [[]]
    size = 0
    for put in puts:
        length = payload_size(put.row)
        if chunks[-1] and (len(chunks[-1]) >= limits.BATCH_MAX or size + length > BATCH_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(put)
        size += length
    return chunks


def _send_one(propose: Propose, put: PendingPut) -> None:
    try:
        put.answer = ops.PutResult(propose(ops.queue_put_row(put.name, put.row).body))
    except OutcomeUnknown as exc:
        exc.decode = ops.PutResult  # type: ignore[attr-defined]
        put.error = exc
    except Exception as exc:
        put.error = exc


_COMBINERS: dict[Any, PutCombiner] = {}
_COMBINERS_LOCK = threading.Lock()


def combiner_for(cluster: Any) -> PutCombiner:
    """The process's combiner for ``cluster`` (any hashable that names one cluster: its
    addresses and secret). Look it up for each put rather than keeping it: a forked child gets
    new ones (``_forget_after_fork``)."""
    with _COMBINERS_LOCK:
        combiner = _COMBINERS.get(cluster)
        if combiner is None:
            combiner = _COMBINERS[cluster] = PutCombiner()
        return combiner


def _forget_after_fork() -> None:
    """A forked child (a Celery prefork pool process) starts with no combiner and a free lock:
    one inherited while a parent's thread had a put in flight would make the child's first put
    wait forever for a hand-off that no thread of the child will make."""
    global _COMBINERS_LOCK
    _COMBINERS.clear()
    _COMBINERS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
