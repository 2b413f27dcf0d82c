"""Transactions on the cache: an etcd-style compare-and-set over several keys and locks in one log
entry (``cache.txn``), and the fenced write (``cache.fenced``): a txn whose one compare is "this
token is the lock's current grant" and whose failure is a ``stale_token`` rejection.

Why this lives with the cache: a txn's puts and deletes are cache writes, so they obey the cache's
L1 rule (a write takes effect only when no L1 can still serve the old value; ``cache``'s doc). A
txn is one more write *kind* (``"txn"``): parsed here, queued by ``Cache`` like any write, and
*evaluated when it takes effect*. Its compares, the branch they choose, and that branch's puts,
deletes and lock releases all happen in that one entry, against the state of that moment, on
every replica alike. For a fenced write that is the point: the token is checked in the very
entry that changes the key, so no write of a superseded holder lands after its successor's grant
(``require_token`` followed by a write leaves a gap between the two in which the lock can move).

Wire forms (msgpack arrays; ``commands.cache_txn`` / ``commands.cache_fenced`` build them):

=============================================  ===============================================
``cache.txn [compares, success, failure]``     ``{"succeeded": bool, "results": [...]}``: the
                                               results of the branch that ran, one per op
``cache.fenced [lock, token, ops]``            ``[result, ...]`` (one per op), or rejected
                                               ``stale_token`` (details: lock, token)
compare ``["version", key, cmp, n]``           ``cmp`` one of ``== != < >``; an absent key's
                                               version is 0 (versions are entry indexes, >= 1)
compare ``["value", key, cmp, bytes|None]``    ``cmp`` ``==`` or ``!=``; None is "absent"; a
                                               value evicted to Redis is refused (``evicted``)
compare ``["lock", name, token]``              ``token`` is a current grant of lock ``name``
op ``["put", key, value, ttl_ms|None]``        the new version (the txn's entry index)
op ``["delete", key]``                         True if the key existed
op ``["release", session, name, owner]``       ``{"released": True, "count": n}`` (as
                                               ``lock.release``; not in ``cache.fenced``)
=============================================  ===============================================

Bounds and refusals, all checked before anything changes: at most ``TXN_OPS_MAX`` compares and
ops over both branches (``limit_exceeded``); a key written at most once per branch and a hold
released at most once per branch (``bad_command``: the result of a second write to the same key
in one entry would be ambiguous). The chosen branch's releases are checked before its first put
(``not_holder``, ``session_expired``), so a refused txn changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from coordination.primitives import limits
from coordination.primitives.base import Check, Ctx
from coordination.primitives.cache_commands import Write, entry
from coordination.primitives.cache_store import CacheStore
from coordination.primitives.errors import BAD_COMMAND, EVICTED, LIMIT, STALE_TOKEN, reject
from coordination.primitives.sessions import Sessions

KIND = "txn"  # the write kind of both ops (``CacheWrites`` evaluates it through ``Txns``)
VERSION_CMPS = ("==", "!=", "<", ">")
VALUE_CMPS = ("==", "!=")
TOKEN_BOUNDS = (1, 2**63 - 1)
Evaluation = tuple[Any, list[str]]


class LockTable(Protocol):
    """What a txn needs of the locks part (``Locks`` provides it)."""

    def is_current(self, name: str, token: int) -> bool: ...

    def require_holder(self, sid: int, name: str, owner: str) -> None: ...

    def release_hold(self, ctx: Ctx, sid: int, name: str, owner: str) -> dict[str, Any]: ...


# -- parsing (stateless: these are also the leader's pre-log checks) ----------------------------


def parse_txn(args: list[Any], sessions: Sessions | None = None) -> Write:
    compares, success, failure = limits.args(args, 3, "cache.txn")
    for what, items in (("compares", compares), ("success", success), ("failure", failure)):
        if not isinstance(items, list):
            reject(BAD_COMMAND, f"txn {what} must be a list")
    _count(len(compares) + len(success) + len(failure))
    checked = [_compare(item) for item in compares]
    then = _ops(success, releases=True)
    otherwise = _ops(failure, releases=True)
    return KIND, [checked, then, otherwise, None], _written(then, otherwise)


def parse_fenced(args: list[Any], sessions: Sessions | None = None) -> Write:
    name, token, ops = limits.args(args, 3, "cache.fenced")
    name = limits.name(name, "lock name")
    token = limits.integer(token, TOKEN_BOUNDS, "token")
    if not isinstance(ops, list):
        reject(BAD_COMMAND, "fenced ops must be a list")
    _count(len(ops))
    then = _ops(ops, releases=False)
    return KIND, [[["lock", name, token]], then, [], [name, token]], _written(then, [])


TXN_WRITES: dict[str, Callable[[list[Any], Sessions], Write]] = {
    "cache.txn": parse_txn,
    "cache.fenced": parse_fenced,
}
TXN_CHECKS: dict[str, Check] = {"cache.txn": parse_txn, "cache.fenced": parse_fenced}


def _count(total: int) -> None:
    if total > limits.TXN_OPS_MAX:
        reject(LIMIT, f"a txn takes at most {limits.TXN_OPS_MAX} compares and ops, got {total}")


def _compare(item: Any) -> list[Any]:
    if not isinstance(item, list) or not item:
        reject(BAD_COMMAND, "a compare must be a non-empty array")
    kind = item[0]
    if kind == "version" and len(item) == 4:
        _, key, cmp, version = item
        key = limits.name(key, "key")
        if cmp not in VERSION_CMPS:
            reject(BAD_COMMAND, f"version compare must be one of {' '.join(VERSION_CMPS)}")
        return ["version", key, cmp, limits.integer(version, (0, 2**63 - 1), "version")]
    if kind == "value" and len(item) == 4:
        _, key, cmp, value = item
        key = limits.name(key, "key")
        if cmp not in VALUE_CMPS:
            reject(BAD_COMMAND, "value compare must be == or !=")
        if value is not None:
            value = limits.blob(value, limits.VALUE_MAX_BYTES, "value")
        return ["value", key, cmp, value]
    if kind == "lock" and len(item) == 3:
        _, name, token = item
        name = limits.name(name, "lock name")
        return ["lock", name, limits.integer(token, TOKEN_BOUNDS, "token")]
    reject(
        BAD_COMMAND,
        "a compare must be [version, key, cmp, n], [value, key, cmp, v] or [lock, name, token]",
    )


def _ops(items: list[Any], releases: bool) -> list[list[Any]]:
    out: list[list[Any]] = []
    keys: set[str] = set()
    holds: set[tuple[int, str, str]] = set()
    for item in items:
        if not isinstance(item, list) or not item:
            reject(BAD_COMMAND, "an op must be a non-empty array")
        kind = item[0]
        if kind == "put" and len(item) == 4:
            key, value, ttl = entry(item[1], item[2], item[3])
            op: list[Any] = ["put", key, value, ttl]
        elif kind == "delete" and len(item) == 2:
            key = limits.name(item[1], "key")
            op = ["delete", key]
        elif kind == "release" and len(item) == 4 and releases:
            sid = limits.session_id(item[1])
            name = limits.name(item[2], "lock name")
            owner = limits.owner(item[3])
            if (sid, name, owner) in holds:
                reject(BAD_COMMAND, f"lock {name} released twice in one txn branch")
            holds.add((sid, name, owner))
            out.append(["release", sid, name, owner])
            continue
        else:
            allowed = "put, delete or release" if releases else "put or delete"
            reject(BAD_COMMAND, f"an op must be {allowed} with its arguments")
        if key in keys:
            reject(BAD_COMMAND, f"key {key!r} written twice in one txn branch")
        keys.add(key)
        out.append(op)
    return out


def _written(*branches: list[list[Any]]) -> list[str]:
    """Every key either branch may write: what the write queues on (``Cache._write``)."""
    return list(dict.fromkeys(op[1] for ops in branches for op in ops if op[0] != "release"))


# -- evaluating ---------------------------------------------------------------------------------


class Txns:
    """The evaluator of the ``txn`` write kind (``CacheWrites.evaluate`` calls it)."""

    def __init__(self, store: CacheStore, locks: LockTable | None) -> None:
        self.store = store
        self.locks = locks

    def _lock_table(self) -> LockTable:
        if self.locks is None:  # a machine assembled without locks (fixed config: deterministic)
            reject(BAD_COMMAND, "this machine has no locks part for txn lock compares")
        return self.locks

    def evaluate(self, ctx: Ctx, version: int, args: list[Any], commit: bool) -> Evaluation:
        compares, success, failure, fence = args
        succeeded = all(self._holds(compare) for compare in compares)
        if not succeeded and fence is not None:
            name, token = fence
            reject(
                STALE_TOKEN,
                f"token {token} is not the current grant of {name!r}",
                lock=name,
                token=token,
            )
        branch = success if succeeded else failure
        for op in branch:  # every refusal before the first change
            if op[0] == "release":
                self._lock_table().require_holder(op[1], op[2], op[3])
        store = self.store
        changes = [
            op[1]
            for op in branch
            if op[0] == "put" or (op[0] == "delete" and store.version(op[1]) is not None)
        ]
        results: list[Any] = []
        for op in branch:
            if op[0] == "put":
                if commit:
                    _, key, value, ttl = op
                    store.put(key, value, None if ttl is None else ctx.now_ms + ttl, version)
                results.append(version)
            elif op[0] == "delete":
                existed = store.version(op[1]) is not None
                if commit and existed:
                    store.remove(op[1], version)
                results.append(existed)
            elif commit:
                results.append(self._lock_table().release_hold(ctx, op[1], op[2], op[3]))
            else:
                results.append({"released": True, "count": None})  # a dry run's placeholder
        answer = results if fence is not None else {"succeeded": succeeded, "results": results}
        return answer, changes

    def _holds(self, compare: list[Any]) -> bool:
        kind, target, cmp, expected = (*compare, None)[:4]
        if kind == "lock":
            return self._lock_table().is_current(target, cmp)
        if kind == "version":
            return _compared(self.store.version(target) or 0, cmp, expected)
        return _compared(self._value(target), cmp, expected)

    def _value(self, key: str) -> bytes | None:
        rec = self.store.data.get(key)
        if rec is not None:
            return rec[0] if self.store.alive(rec[2]) else None
        version = self.store.version(key)
        if version is not None:
            reject(EVICTED, f"cache key {key!r} was evicted; compare its version instead", key=key)
        return None


def _compared(actual: Any, cmp: str, expected: Any) -> bool:
    if cmp == "==":
        return actual == expected
    if cmp == "!=":
        return actual != expected
    return actual < expected if cmp == "<" else actual > expected
