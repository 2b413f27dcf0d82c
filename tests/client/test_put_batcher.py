"""``PutBatcher`` without a cluster: its ``propose`` applies each command to an in-process
``CoordinationMachine`` at the next index, as the leader would, and records the commands, so a
test sees how many entries the puts cost and what each caller got. The real-process side (one
``AsyncCoordinator``, 64 producers) is ``tests/realprocess/test_primitives.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

import coordination.client.operations as ops
from coordination.client.put_batcher import PutBatcher
from coordination.errors import typed
from coordination.exceptions import BadRequest, LimitExceeded
from coordination.primitives import limits
from coordination.primitives.machine import CoordinationMachine
from coordination.primitives.queues_put import MSG_ID_STRIDE
from raft_node.client import OutcomeUnknown, Rejected
from raft_node.core.fsm import CommandRejected


class Leader:
    """Applies what it is proposed, in order; ``refuse`` makes it answer like an older node."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.machine = CoordinationMachine()
        self.index = 0
        self.ops: list[str] = []
        self.refuse = refuse or set()
        self.lose_answer = False

    async def propose(self, body: bytes) -> Any:
        await asyncio.sleep(0)  # an answer never comes back in the caller's own turn
        op = msgpack.unpackb(body, raw=False)[0]
        self.ops.append(op)
        if op in self.refuse:
            raise typed(Rejected("bad_command", f"unknown command {op!r}", {}))
        try:
            self.machine.validate(body)
            self.index += 1
            result = self.machine.apply(self.index, body, 1_000)
        except CommandRejected as exc:
            raise typed(Rejected(exc.code, exc.message, exc.details)) from None
        if self.lose_answer:
            error = OutcomeUnknown("the answer was lost")
            error.resolve_value = result  # what resolve would learn
            raise error
        return result


def _row(payload: bytes, priority: int = 0) -> list[Any]:
    return ops.put_row(payload, priority)


def test_puts_started_in_one_turn_share_one_entry_and_keep_their_order() -> None:
    leader = Leader()
    batcher = PutBatcher(leader.propose)

    async def main() -> list[Any]:
        return await asyncio.gather(*(batcher.put("q", _row(b"m%d" % i)) for i in range(50)))

    ids = asyncio.run(main())
    assert leader.ops == ["queue.put_many"]  # one entry for fifty puts
    assert ids == [MSG_ID_STRIDE + i for i in range(50)]  # in the order the callers put
    assert all(isinstance(i, ops.PutResult) and not i.duplicate for i in ids)


def test_a_lone_put_goes_out_as_a_plain_put() -> None:
    leader = Leader()
    batcher = PutBatcher(leader.propose)

    async def main() -> list[Any]:
        return [await batcher.put("q", _row(b"a")), await batcher.put("q", _row(b"b"))]

    assert asyncio.run(main()) == [1, 2]
    assert leader.ops == ["queue.put", "queue.put"]


def test_each_queue_gets_its_own_batch() -> None:
    leader = Leader()
    batcher = PutBatcher(leader.propose)

    async def main() -> None:
        puts = [batcher.put(name, _row(b"x")) for name in ("a", "b", "a", "b")]
        await asyncio.gather(*puts)

    asyncio.run(main())
    assert leader.ops == ["queue.put_many", "queue.put_many"]
    stats = [leader.machine.query(msgpack.packb(["queue.stats", n]))["depth"] for n in "ab"]
    assert stats == [2, 2]


def test_a_refused_message_fails_its_own_put_only() -> None:
    leader = Leader()
    batcher = PutBatcher(leader.propose)
    too_big = b"x" * (limits.PAYLOAD_MAX_BYTES + 1)

    async def main() -> list[Any]:
        puts = [batcher.put("q", _row(p)) for p in (b"a", too_big, b"c")]
        return await asyncio.gather(*puts, return_exceptions=True)

    first, refused, third = asyncio.run(main())
    assert isinstance(refused, LimitExceeded) and "payload" in str(refused)
    assert (first, third) == (MSG_ID_STRIDE, MSG_ID_STRIDE + 2)


def test_a_batch_closes_at_the_batch_limit() -> None:
    leader = Leader()
    batcher = PutBatcher(leader.propose)

    async def main() -> None:
        count = limits.BATCH_MAX + 5
        await asyncio.gather(*(batcher.put("q", _row(b"x")) for _ in range(count)))

    asyncio.run(main())
    assert leader.ops == ["queue.put_many", "queue.put_many"]


def test_against_an_older_node_it_falls_back_to_single_puts_for_good() -> None:
    leader = Leader(refuse={"queue.put_many"})
    batcher = PutBatcher(leader.propose)

    async def main() -> list[Any]:
        first = await asyncio.gather(*(batcher.put("q", _row(b"%d" % i)) for i in range(3)))
        again = await asyncio.gather(*(batcher.put("q", _row(b"%d" % i)) for i in range(2)))
        return [*first, *again]

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]  # ids stay entry indexes: no batch applied
    assert leader.ops == ["queue.put_many"] + ["queue.put"] * 5
    assert not batcher.batches_supported


def test_a_whole_batch_refusal_reaches_every_caller() -> None:
    leader = Leader()
    batcher = PutBatcher(leader.propose)

    async def main() -> list[Any]:
        puts = [batcher.put("bad name", _row(b"x")) for _ in range(3)]
        return await asyncio.gather(*puts, return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, BadRequest) for e in errors) and len({id(e) for e in errors}) == 3


def test_an_unknown_outcome_resolves_to_each_callers_own_result() -> None:
    leader = Leader()
    leader.lose_answer = True
    batcher = PutBatcher(leader.propose)

    async def main() -> list[Any]:
        puts = [batcher.put("q", _row(b"m%d" % i)) for i in range(3)]
        return await asyncio.gather(*puts, return_exceptions=True)

    unknowns = asyncio.run(main())
    assert all(isinstance(u, OutcomeUnknown) for u in unknowns)
    resolved = [u.decode(u.resolve_value) for u in unknowns]  # as coord.resolve does
    assert resolved == [MSG_ID_STRIDE + i for i in range(3)]


def test_a_caller_that_stops_waiting_does_not_break_the_batch() -> None:
    leader = Leader()
    batcher = PutBatcher(leader.propose)

    async def main() -> Any:
        doomed = asyncio.ensure_future(batcher.put("q", _row(b"a")))
        kept = asyncio.ensure_future(batcher.put("q", _row(b"b")))
        await asyncio.sleep(0)
        doomed.cancel()
        return await kept

    assert asyncio.run(main()) == MSG_ID_STRIDE + 1
    assert leader.machine.query(msgpack.packb(["queue.stats", "q"]))["depth"] == 2


def test_put_many_returns_refusals_instead_of_raising() -> None:
    """``Queue.put_many``'s decode: a refused message's place holds its typed exception."""
    machine = CoordinationMachine()
    machine.apply(1, msgpack.packb(["queue.declare", "q", None, None, 2]), 1_000)
    op = ops.queue_put_many("q", [_row(b"a"), _row(b"b"), _row(b"c")])
    answers = machine.apply(2, op.body, 1_000)
    results = op.decode(answers)
    assert results[:2] == [2 * MSG_ID_STRIDE, 2 * MSG_ID_STRIDE + 1]
    assert isinstance(results[2], LimitExceeded)
