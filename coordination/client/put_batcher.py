"""Coalesce concurrent queue puts of one ``AsyncCoordinator`` into ``queue.put_many`` entries.

Many coroutines putting to one queue (a producer pool, a web handler per request) each paid a
log entry: the request, its replication, an fsync on a majority, the reply. Here the puts that
callers start in one event-loop turn go out together, one ``queue.put_many`` per queue, as soon
as that turn ends; a lone put still goes out as a plain ``queue.put``, one turn later (a few
microseconds). Under load the batches form by themselves: while one entry commits, the callers
it answers put again in the same turn. Kafka's producer batches the same way, but with a linger
time; none is needed here, because nothing is held back waiting for more.

What a caller sees does not change: each put is checked, applied and answered on its own, in
the order the puts were made (the messages' ids increase in that order), and a refusal (a full
queue, a payload over the limit) fails that put alone. A batch that may or may not have been
applied fails every put in it with its own ``OutcomeUnknown``, which ``coord.resolve`` turns into
that put's result. Against a node without ``queue.put_many`` (an older release) the batcher
falls back to one ``queue.put`` per message, for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import coordination.client.operations as ops
from coordination.exceptions import BadRequest
from coordination.primitives import commands as c
from coordination.primitives import limits
from raft_node.client import OutcomeUnknown

# A batch is closed early at this many payload bytes, well inside one client request (1 MiB).
BATCH_BYTES = 512 * 1024

E = TypeVar("E", bound=BaseException)
Propose = Callable[[bytes], Any]  # awaitable: the coordinator's propose with its timeout


class _Batch:
    __slots__ = ("bytes", "name", "puts")

    def __init__(self, name: str) -> None:
        self.name = name
        self.puts: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self.bytes = 0

    def full(self, row: list[Any]) -> bool:
        return bool(self.puts) and (
            len(self.puts) >= limits.BATCH_MAX or self.bytes + payload_size(row) > BATCH_BYTES
        )

    def add(self, row: list[Any], future: asyncio.Future[Any]) -> None:
        self.puts.append((row, future))
        self.bytes += payload_size(row)


def payload_size(row: list[Any]) -> int:
    """A put row's payload bytes (0 for a payload of the wrong type: the cluster refuses it)."""
    return len(row[0]) if isinstance(row[0], bytes | bytearray | str) else 0


class PutBatcher:
    """One per ``AsyncCoordinator``: ``await put(name, row)`` answers one put's result row."""

    def __init__(self, propose: Propose) -> None:
        self._propose = propose
        self._open: dict[str, _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self.batches_supported = True

    async def put(self, name: str, row: list[Any]) -> ops.PutResult:
        """``row``: ``ops.put_row(...)``. Returns the put's result, raises its refusal."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        batch = self._open.get(name)
        if batch is None or batch.full(row):
            batch = self._open[name] = _Batch(name)
            loop.call_soon(self._close, batch)
        batch.add(row, future)
        return await future

    def _close(self, batch: _Batch) -> None:
        if self._open.get(batch.name) is batch:
            del self._open[batch.name]
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Batch) -> None:
        if len(batch.puts) > 1 and self.batches_supported:
            try:
                await self._send_many(batch)
                return
            except BadRequest as exc:
                if "unknown command" not in str(exc):
                    _fail_all(batch, exc)
                    return
                self.batches_supported = False  # an older node: one put per message from now on
        await asyncio.gather(*(self._send_one(batch.name, row, f) for row, f in batch.puts))

    async def _send_many(self, batch: _Batch) -> None:
        body = c.queue_put_many(batch.name, [row for row, _ in batch.puts])
        try:
            answers = await self._propose(body)
        except OutcomeUnknown as exc:
            for position, (_, future) in enumerate(batch.puts):
                _settle(future, exception=unknown_for(exc, position))
            return
        except BadRequest:
            raise
        except asyncio.CancelledError:  # the coordinator's loop is shutting down
            for _, future in batch.puts:
                future.cancel()
            raise
        except Exception as exc:
            _fail_all(batch, exc)
            return
        for (_, future), answer in zip(batch.puts, answers, strict=True):
            try:
                _settle(future, result=ops.put_answer(answer))
            except Exception as refused:
                _settle(future, exception=refused)

    async def _send_one(self, name: str, row: list[Any], future: asyncio.Future[Any]) -> None:
        try:
            answer = await self._propose(ops.queue_put_row(name, row).body)
        except OutcomeUnknown as exc:
            exc.decode = ops.PutResult  # type: ignore[attr-defined]
            _settle(future, exception=exc)
        except Exception as exc:
            _settle(future, exception=exc)
        else:
            _settle(future, result=ops.PutResult(answer))


def unknown_for(exc: OutcomeUnknown, position: int) -> OutcomeUnknown:
    """The batch's ``OutcomeUnknown`` for the put at ``position``: resolving it gives that
    put's result (or raises its refusal)."""
    mine = copy_error(exc)
    mine.decode = lambda answers: ops.put_answer(answers[position])  # type: ignore[attr-defined]
    return mine


def _fail_all(batch: _Batch, exc: Exception) -> None:
    """Every put of ``batch`` fails with ``exc`` (a copy each: one raise per caller)."""
    for _, future in batch.puts:
        _settle(future, exception=copy_error(exc))


def copy_error(exc: E) -> E:
    """``exc`` again, with its attributes (an ``OutcomeUnknown`` keeps the request it can
    resolve), for one caller: one exception object per raise. Not ``copy.copy``, which goes
    through ``__reduce__``, shaped for pickling and dropping what does not travel."""
    mine = type(exc).__new__(type(exc), *exc.args)
    mine.__dict__.update(exc.__dict__)
    mine.args = exc.args
    return mine


def _settle(future: asyncio.Future[Any], *, result: Any = None, exception: Any = None) -> None:
    """Answer one caller, unless it stopped waiting (cancelled: its put may still apply, as a
    cancelled single put may)."""
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
