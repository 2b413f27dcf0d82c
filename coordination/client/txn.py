"""Fenced writes and transactions, for both clients: ``coord.fenced(lock)`` and ``coord.txn``.

    with coord.lock("orders") as lock:
        coord.fenced(lock).set("order:7", b"paid")      # StaleToken if lock's token is stale

    from coordination.client.txn import delete, lock_current, put, release, value, version
    result = coord.txn(
        compare=[version("order:7") == 12, lock_current(lock)],
        success=[put("order:7", b"shipped"), delete("cart:7"), release(lock)],
        failure=[],
    )
    result.succeeded, result.results

Why a fenced write and not ``require_token`` then a write: between the check and the write the
holder can pause, its session expire and another holder be granted the lock; the write then
lands stale. Here the token is checked in the log entry that applies the write (the cluster's
``cache_txn``), so a superseded holder's write is refused with ``StaleToken`` whenever it
arrives. A txn does the same for several keys and locks at once: every compare, the branch they
choose and its puts, deletes and lock releases happen in one entry, identically on every replica.

Compares are built with operators: ``version(key) == 12`` (also ``!=``, ``<``, ``>``; an absent
key's version is 0), ``value(key) == b"x"`` (or ``!=``; None is "absent"), and
``lock_current(lock)`` (a ``Lock`` handle's token, or a name and a token, is the current grant).
At most 64 compares and ops in all (``LimitExceeded``); a key is written at most once per branch.
A ``release(lock)`` that runs updates the handle as ``lock.release()`` would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import coordination.client.operations as ops
from coordination.exceptions import StaleToken

__all__ = [
    "AsyncTransactions",
    "Compare",
    "Fenced",
    "Op",
    "Transactions",
    "TxnResult",
    "delete",
    "lock_current",
    "put",
    "release",
    "value",
    "version",
]


@dataclass(frozen=True, slots=True)
class Compare:
    """One compare of a txn, as sent (``cache_txn``'s forms)."""

    wire: list[Any]


@dataclass(frozen=True, slots=True)
class Op:
    """One put, delete or release of a txn branch; ``hold`` is the lock handle a release
    updates once it ran."""

    wire: list[Any]
    hold: Any = field(default=None, compare=False)


class _Target:
    """``version(key)`` or ``value(key)``: compared with an operator, it becomes a ``Compare``."""

    __hash__ = None  # type: ignore[assignment]  # compares build Compares, not booleans

    def __init__(self, kind: str, key: str, cmps: tuple[str, ...]) -> None:
        self.kind, self.key, self.cmps = kind, key, cmps

    def _compare(self, cmp: str, other: Any) -> Compare:
        if cmp not in self.cmps:
            raise TypeError(f"a {self.kind} compare takes {' '.join(self.cmps)}, not {cmp}")
        return Compare([self.kind, self.key, cmp, other])

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._compare("==", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._compare("!=", other)

    def __lt__(self, other: int) -> Compare:
        return self._compare("<", other)

    def __gt__(self, other: int) -> Compare:
        return self._compare(">", other)


def version(key: str) -> _Target:
    """The version of ``key`` (0 if absent), to compare: ``version("k") == 12``."""
    return _Target("version", key, ("==", "!=", "<", ">"))


def value(key: str) -> _Target:
    """The value of ``key`` (None if absent), to compare: ``value("k") == b"x"``."""
    return _Target("value", key, ("==", "!="))


def lock_current(lock: Any, token: int | None = None) -> Compare:
    """True when the lock's token is its current grant: a ``Lock`` handle (its token), or a
    lock name and a token."""
    name, token = fence_of(lock, token)
    return Compare(["lock", name, token])


def put(key: str, value: bytes, ttl: float | None = None) -> Op:
    """Write ``key`` (result: the new version); ``ttl`` in seconds."""
    return Op(["put", key, value, None if ttl is None else ops.ms(ttl)])


def delete(key: str) -> Op:
    """Delete ``key`` (result: whether it existed)."""
    return Op(["delete", key])


def release(lock: Any) -> Op:
    """Release a held ``Lock`` handle (once; result ``{"released", "count"}``)."""
    if lock.session is None or lock.token is None:
        raise StaleToken(lock.name, 0)
    return Op(["release", lock.session.id, lock.name, lock.owner], lock)


def fence_of(lock: Any, token: int | None) -> tuple[str, int]:
    """``(name, token)`` of a lock handle or of a name and a token; ``StaleToken`` for a
    handle that holds nothing (never acquired, released, or lapsed)."""
    if isinstance(lock, str):
        if token is None:
            raise TypeError("a fenced write by lock name needs its token")
        return lock, token
    token = lock.token if token is None else token
    if token is None:
        raise StaleToken(lock.name, 0)
    return lock.name, token


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Which branch ran (``succeeded``: the compares all held) and its ops' results, in order."""

    succeeded: bool
    results: list[Any]


def txn_operation(
    compare: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op]
) -> ops.Operation[TxnResult]:
    """The operation of ``coord.txn``; its decoding updates released lock handles."""
    compares, then, otherwise = list(compare), list(success), list(failure)

    def decode(answer: dict[str, Any]) -> TxnResult:
        ran = then if answer["succeeded"] else otherwise
        for op, result in zip(ran, answer["results"], strict=True):
            if op.hold is not None:
                _released(op.hold, result)
        return TxnResult(bool(answer["succeeded"]), list(answer["results"]))

    return ops.cache_txn(_wire(compares, Compare), _wire(then, Op), _wire(otherwise, Op), decode)


def _wire(items: list[Any], kind: type[Compare] | type[Op]) -> list[list[Any]]:
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"expected a txn {kind.__name__} (coordination.client.txn): {item!r}")
    return [item.wire for item in items]


def _released(hold: Any, result: dict[str, Any]) -> None:
    """What ``lock.release()`` does to a handle, for a release a txn ran."""
    hold.count = result.get("count", 0)
    if hold.count == 0:
        hold.token = None
    end_turn = getattr(hold, "_end_turn", None)  # an asyncio lock's local turn (``aio``)
    if end_turn is not None:
        end_turn()


class _FencedBase:
    """Writes guarded by one lock's token (the handle's at each call, or a fixed one)."""

    def __init__(self, coord: Any, lock: Any, token: int | None) -> None:
        fence_of(lock, token)  # refuse a name without a token at once
        self.coord, self.lock, self.token = coord, lock, token

    def _op(self, writes: list[Op]) -> ops.Operation[list[Any]]:
        name, token = fence_of(self.lock, self.token)
        return ops.cache_fenced(name, token, [w.wire for w in writes])


class Fenced(_FencedBase):
    """``coord.fenced(lock)`` on the blocking client."""

    def set(self, key: str, value: bytes, ttl: float | None = None) -> int:
        """Write ``key`` if the token is current (else ``StaleToken``); the new version."""
        return self.coord.run(self._op([put(key, value, ttl)]))[0]

    def delete(self, key: str) -> bool:
        """Delete ``key`` if the token is current (else ``StaleToken``); whether it existed."""
        return self.coord.run(self._op([delete(key)]))[0]

    def apply(self, writes: Iterable[Op]) -> list[Any]:
        """Several puts and deletes in one entry, all or none (``StaleToken``)."""
        return self.coord.run(self._op(list(writes)))


class AsyncFenced(_FencedBase):
    """``coord.fenced(lock)`` on the asyncio client (as ``Fenced``, awaited)."""

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> int:
        return (await self.coord.run(self._op([put(key, value, ttl)])))[0]

    async def delete(self, key: str) -> bool:
        return (await self.coord.run(self._op([delete(key)])))[0]

    async def apply(self, writes: Iterable[Op]) -> list[Any]:
        return await self.coord.run(self._op(list(writes)))


class Transactions:
    """``fenced`` and ``txn`` of ``Coordinator`` (a mixin: its ``run`` blocks)."""

    run: Callable[[ops.Operation[Any]], Any]

    def fenced(self, lock: Any, token: int | None = None) -> Fenced:
        """Cache writes fenced by ``lock`` (a ``Lock`` handle, or a name and a token): each is
        applied only if the token is the lock's current grant, checked in the same log entry;
        else ``StaleToken``. ``coord.fenced(lock).set(key, value)``."""
        return Fenced(self, lock, token)

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> TxnResult:
        """If every compare holds, run ``success``, else ``failure``: in one log entry, the
        compares checked when the writes take effect (module doc)."""
        return self.run(txn_operation(compare, success, failure))


class AsyncTransactions:
    """``fenced`` and ``txn`` of ``AsyncCoordinator`` (as ``Transactions``, awaited)."""

    run: Callable[[ops.Operation[Any]], Awaitable[Any]]

    def fenced(self, lock: Any, token: int | None = None) -> AsyncFenced:
        """As ``Coordinator.fenced``; the writes are awaited."""
        return AsyncFenced(self, lock, token)

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> TxnResult:
        """As ``Coordinator.txn``."""
        return await self.run(txn_operation(compare, success, failure))
