"""Task results: versioned records with TTLs, atomic counters, and blocking waits for results.

What Celery's ``raft://`` result backend stores (``coordination.celery.backend``), usable by any
client through ``coordination.client.results``. Everything is decided by the applied log.

- **Records.** A key holds either a *value* (bytes, at most ``RESULT_VALUE_MAX_BYTES``) or a
  *counter* (an int64 made by ``incr``). Every record has a *version* (the index of the entry
  that last changed it), an optional expiry in log time, and two flags set by the writer:
  ``final`` (the value is a finished task's outcome: waiters are told) and ``keep`` (no later
  ``set`` replaces it: Celery never overwrites a SUCCESS, and here that rule is atomic instead
  of a read followed by a write). ``delete`` and ``expire`` still apply to a kept record.
- **Expiry.** A record whose expiry has passed reads as absent at once (queries use the log
  time of the last applied entry, via ``observe_time``; ops use their entry's time) and is
  removed by the next ``tick`` that reaches its deadline (or by the next write to the key).
- **Waits.** ``result.wait [keys, wait_ms]`` answers at once with the *final* records among
  ``keys`` (key order, up to ``RESULT_READ_BUDGET_BYTES`` of values, at least one), or ``[]``
  when there are none and ``wait_ms`` is 0. Otherwise it returns ``Pending(index)``: the wait is
  a record on the leader, completed by the first ``set`` that makes one of its keys final
  (answer: that one record), or with ``[]`` by the tick that reaches its deadline. Waiters of a
  key are completed in arrival order; at most ``RESULT_WAITERS_MAX`` wait at once, on at most
  ``RESULT_WAITED_KEYS_MAX`` keys in all (more are refused with ``limit_exceeded``). A wait is
  not tied to a session: a client that goes away leaves it to run out (``WAIT_MS``, at most 5
  minutes).
- **Counters** (``incr [key, delta, ttl_ms, member]``): an absent key counts from 0. With a
  ``member`` (a chord part: ``task_id:index``) the increment is applied once per member; a
  repeat (a redelivered task) changes nothing and answers ``counted: False``. The answer
  names ``last``, the member of the latest counted increment, so the part that completed a
  chord can recognise itself if it runs again. ``ttl_ms`` (if not None) restarts the expiry.
- **Limits** (``limits``): value size, record count, total bytes (``len(key) + len(value) +
  RECORD_OVERHEAD``, counters 8 bytes plus ``len(member) + MEMBER_OVERHEAD`` per member),
  waiters, members per counter. A write beyond one is refused with ``limit_exceeded`` naming it;
  nothing is evicted (a result is never dropped to make room).
- **Determinism.** Dicts iterate in insertion order and snapshots list them in that order;
  ``to_state``/``from_state`` round-trip exactly.

Ops and queries (positional arguments):

=============================================  =================================================
``result.set [key, value, ttl_ms, final, keep]``  ``{"version", "stored"}`` (stored False: a
                                               kept record is there; version is its version)
``result.delete [key]``                        True if the key existed
``result.expire [key, ttl_ms | None]``         True if the key existed (None: never expires)
``result.incr [key, delta, ttl_ms, member]``   ``{"value", "counted", "last"}``
``result.wait [[key, ...], wait_ms]``          ``[[key, record], ...]`` or Pending (see above)
query ``result.get [key]``                     record ``{"value", "version", "final",
                                               "expires_ms"}`` or None
query ``result.get_many [[key, ...]]``         one record or None per key, for a *prefix* of the
                                               keys (``RESULT_READ_BUDGET_BYTES``, >= 1): the
                                               caller asks again for the rest
query ``result.stats []``                      sizes, limits and counters
=============================================  =================================================
"""

from __future__ import annotations

from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Check, Ctx, Deadlines, Op, Pending, Query
from coordination.primitives.errors import BAD_COMMAND, LIMIT, NOT_INTEGER, reject

__all__ = ["MEMBER_OVERHEAD", "RECORD_OVERHEAD", "Results"]

RECORD_OVERHEAD = 64  # bytes accounted per record on top of its key and value
MEMBER_OVERHEAD = 16  # bytes accounted per counter member on top of its length
COUNTER_BYTES = 8
INT64 = (-(2**63), 2**63 - 1)


class _Rec:
    __slots__ = ("expires", "final", "keep", "last", "members", "size", "value", "version")

    def __init__(
        self, value: bytes | int, version: int, final: bool, keep: bool, expires: int | None
    ) -> None:
        self.value, self.version, self.final, self.keep = value, version, final, keep
        self.expires = expires
        self.members: dict[str, None] | None = None  # counters incremented per member
        self.last: str | None = None  # member of the latest counted increment
        self.size = 0  # accounted bytes (see module doc)

    def view(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "version": self.version,
            "final": self.final,
            "expires_ms": self.expires,
        }


def _key(value: Any) -> str:
    return limits.name(value, "result key")


def _member(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        reject(BAD_COMMAND, "member must be a non-empty string or null")
    if len(value.encode()) > limits.NAME_MAX_BYTES:
        reject(LIMIT, f"member longer than {limits.NAME_MAX_BYTES} bytes")
    return value


def _keys(value: Any, op: str) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= limits.BATCH_MAX:
        reject(BAD_COMMAND, f"{op}: keys must be a list of 1..{limits.BATCH_MAX} keys")
    return list(dict.fromkeys(_key(k) for k in value))


def _value_size(value: bytes | int) -> int:
    return len(value) if isinstance(value, bytes) else COUNTER_BYTES


def _member_size(member: str) -> int:
    return len(member.encode()) + MEMBER_OVERHEAD


class Results:
    name = "results"

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.records: dict[str, _Rec] = {}  # creation order
        self.bytes = 0
        self.now_ms = 0  # log time of the last applied entry (queries judge expiry by it)
        self.expired = 0  # records removed by their TTL, in total
        self.waiters: dict[int, list[Any]] = {}  # token -> [keys, deadline]; arrival order
        self._by_key: dict[str, dict[int, None]] = {}  # key -> waiting tokens (derived)
        self._waited = 0  # keys of all waiters (derived)
        self._deadlines = Deadlines()

    def ops(self) -> dict[str, Op]:
        return {
            "result.set": self.set,
            "result.delete": self.delete,
            "result.expire": self.expire,
            "result.incr": self.incr,
            "result.wait": self.wait,
        }

    def checks(self) -> dict[str, Check]:
        """Arity only: the next checks are cheap but not worth a second copy."""
        return limits.arities(
            {
                "result.set": 5,
                "result.delete": 1,
                "result.expire": 2,
                "result.incr": 4,
                "result.wait": 2,
            }
        )

    def queries(self) -> dict[str, Query]:
        return {
            "result.get": self.get,
            "result.get_many": self.get_many,
            "result.stats": self.stats,
        }

    def observe_time(self, now_ms: int) -> None:
        """Called before every applied entry (a rejected one too: log time moved all the
        same)."""
        self.now_ms = max(self.now_ms, now_ms)

    # -- ops ------------------------------------------------------------------------------------

    def set(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        key, value, ttl, final, keep = limits.args(args, 5, "result.set")
        key = _key(key)
        if not isinstance(value, bytes):
            reject(BAD_COMMAND, "result value must be bytes")
        if len(value) > limits.RESULT_VALUE_MAX_BYTES:
            reject(
                LIMIT,
                f"result value for {key!r} is {len(value)} bytes, over the "
                f"{limits.RESULT_VALUE_MAX_BYTES}-byte limit (RESULT_VALUE_MAX_BYTES)",
            )
        ttl = limits.optional_integer(ttl, limits.RESULT_TTL_MS, "ttl_ms")
        final = limits.boolean(final, "final")
        keep = limits.boolean(keep, "keep")
        rec = self._live(key, ctx.now_ms)
        if rec is not None and rec.keep:
            return {"version": rec.version, "stored": False}
        size = len(key) + len(value) + RECORD_OVERHEAD
        self._check_room(key, rec, size)
        expires = None if ttl is None else ctx.now_ms + ttl
        if rec is None:
            rec = self.records[key] = _Rec(value, ctx.index, final, keep, expires)
        else:
            self.bytes -= rec.size
            rec.value, rec.version, rec.final, rec.keep = value, ctx.index, final, keep
            rec.expires, rec.members, rec.last = expires, None, None
        rec.size = size
        self.bytes += size
        if expires is not None:
            self._deadlines.push(expires, ("x", key))
        if final:
            self._wake(ctx, key, rec)
        return {"version": ctx.index, "stored": True}

    def delete(self, ctx: Ctx, args: list[Any]) -> bool:
        (key,) = limits.args(args, 1, "result.delete")
        key = _key(key)
        if self._live(key, ctx.now_ms) is None:
            return False
        self._remove(key)
        return True

    def expire(self, ctx: Ctx, args: list[Any]) -> bool:
        key, ttl = limits.args(args, 2, "result.expire")
        key = _key(key)
        ttl = limits.optional_integer(ttl, limits.RESULT_TTL_MS, "ttl_ms")
        rec = self._live(key, ctx.now_ms)
        if rec is None:
            return False
        self._set_expiry(key, rec, ctx.now_ms, ttl)
        return True

    def incr(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        key, delta, ttl, member = limits.args(args, 4, "result.incr")
        key = _key(key)
        delta = limits.integer(delta, INT64, "delta")
        ttl = limits.optional_integer(ttl, limits.RESULT_TTL_MS, "ttl_ms")
        member = _member(member)
        rec = self._live(key, ctx.now_ms)
        if rec is not None and not isinstance(rec.value, int):
            reject(NOT_INTEGER, f"result key {key!r} holds a stored value, not a counter")
        counted = rec is None or member is None or not rec.members or member not in rec.members
        if counted:
            value = delta + (0 if rec is None else rec.value)  # type: ignore[operator]
            if not INT64[0] <= value <= INT64[1]:
                reject(LIMIT, f"counter {key!r} would leave the int64 range")
            grow = 0 if rec is not None else len(key) + COUNTER_BYTES + RECORD_OVERHEAD
            if member is not None:
                grow += _member_size(member)
                members = 0 if rec is None or rec.members is None else len(rec.members)
                if members >= limits.RESULT_COUNTER_MEMBERS_MAX:
                    reject(
                        LIMIT,
                        f"counter {key!r} already has {limits.RESULT_COUNTER_MEMBERS_MAX}"
                        " members (RESULT_COUNTER_MEMBERS_MAX)",
                    )
            self._check_room(key, rec, (0 if rec is None else rec.size) + grow)
            if rec is None:
                rec = self.records[key] = _Rec(0, ctx.index, False, False, None)
            rec.value, rec.version, rec.last = value, ctx.index, member
            if member is not None:
                if rec.members is None:
                    rec.members = {}
                rec.members[member] = None
            rec.size += grow
            self.bytes += grow
        assert rec is not None
        if ttl is not None:
            self._set_expiry(key, rec, ctx.now_ms, ttl)
        return {"value": rec.value, "counted": counted, "last": rec.last}

    def wait(self, ctx: Ctx, args: list[Any]) -> list[list[Any]] | Pending:
        keys, wait = limits.args(args, 2, "result.wait")
        keys = _keys(keys, "result.wait")
        wait = limits.integer(wait, limits.WAIT_MS, "wait_ms")
        found = self._finals(keys, ctx.now_ms)
        if found or wait == 0:
            return found
        if len(self.waiters) >= limits.RESULT_WAITERS_MAX:
            reject(
                LIMIT,
                f"{limits.RESULT_WAITERS_MAX} result waits are already blocked "
                "(RESULT_WAITERS_MAX); retry later",
            )
        if self._waited + len(keys) > limits.RESULT_WAITED_KEYS_MAX:
            reject(
                LIMIT,
                f"blocked result waits would wait on more than {limits.RESULT_WAITED_KEYS_MAX}"
                " keys in all (RESULT_WAITED_KEYS_MAX); retry later",
            )
        token, deadline = ctx.index, ctx.now_ms + wait
        self._add_waiter(token, keys, deadline)
        self._deadlines.push(deadline, ("w", token))
        return Pending(token)

    # -- queries --------------------------------------------------------------------------------

    def get(self, args: list[Any]) -> dict[str, Any] | None:
        (key,) = limits.args(args, 1, "result.get")
        rec = self._peek(_key(key), self.now_ms)
        return None if rec is None else rec.view()

    def get_many(self, args: list[Any]) -> list[dict[str, Any] | None]:
        (keys,) = limits.args(args, 1, "result.get_many")
        if not isinstance(keys, list) or not 1 <= len(keys) <= limits.BATCH_MAX:
            reject(BAD_COMMAND, f"result.get_many: keys must be a list of 1..{limits.BATCH_MAX}")
        out: list[dict[str, Any] | None] = []
        budget = 0
        for key in keys:
            rec = self._peek(_key(key), self.now_ms)
            size = 0 if rec is None else _value_size(rec.value)
            if out and budget + size > limits.RESULT_READ_BUDGET_BYTES:
                break  # the caller asks again for the rest
            budget += size
            out.append(None if rec is None else rec.view())
        return out

    def stats(self, args: list[Any]) -> dict[str, Any]:
        limits.args(args, 0, "result.stats")
        return {
            "records": len(self.records),
            "counters": sum(1 for r in self.records.values() if isinstance(r.value, int)),
            "bytes": self.bytes,
            "waiters": len(self.waiters),
            "waited_keys": self._waited,
            "expired": self.expired,
            "max_records": limits.RESULT_RECORDS_MAX,
            "max_bytes": limits.RESULT_TOTAL_MAX_BYTES,
            "max_value_bytes": limits.RESULT_VALUE_MAX_BYTES,
            "max_waiters": limits.RESULT_WAITERS_MAX,
        }

    # -- time and sessions ----------------------------------------------------------------------

    def _deadline_of(self, key: tuple[str, Any]) -> int | None:
        if key[0] == "w":
            waiter = self.waiters.get(key[1])
            return None if waiter is None else waiter[1]
        rec = self.records.get(key[1])
        return None if rec is None else rec.expires

    def next_deadline(self) -> int | None:
        return self._deadlines.next(self._deadline_of)

    def tick(self, ctx: Ctx) -> None:
        now = ctx.now_ms
        for due in self._deadlines.due(now, self._deadline_of):
            if due[0] == "x":
                self._remove(due[1])
                self.expired += 1
            else:
                self._drop_waiter(due[1])
                ctx.complete(due[1], [])

    def session_ended(self, ctx: Ctx, session_id: int) -> None:
        """Results do not belong to sessions (a result outlives the worker that stored it)."""

    # -- internals ------------------------------------------------------------------------------

    def _peek(self, key: str, now: int) -> _Rec | None:
        rec = self.records.get(key)
        if rec is None or (rec.expires is not None and rec.expires <= now):
            return None
        return rec

    def _live(self, key: str, now: int) -> _Rec | None:
        """The key's record, after removing it if it has expired (a write sees it absent)."""
        rec = self.records.get(key)
        if rec is not None and rec.expires is not None and rec.expires <= now:
            self._remove(key)
            self.expired += 1
            return None
        return rec

    def _remove(self, key: str) -> None:
        self.bytes -= self.records.pop(key).size  # a stale deadline of it is skipped later

    def _set_expiry(self, key: str, rec: _Rec, now: int, ttl: int | None) -> None:
        rec.expires = None if ttl is None else now + ttl
        if rec.expires is not None:
            self._deadlines.push(rec.expires, ("x", key))

    def _check_room(self, key: str, rec: _Rec | None, size: int) -> None:
        """Refuse a write that would make ``key`` take ``size`` bytes beyond a limit."""
        if rec is None and len(self.records) >= limits.RESULT_RECORDS_MAX:
            reject(
                LIMIT,
                f"the result store holds {limits.RESULT_RECORDS_MAX} records "
                f"(RESULT_RECORDS_MAX); cannot add {key!r}",
            )
        total = self.bytes - (0 if rec is None else rec.size) + size
        if total > limits.RESULT_TOTAL_MAX_BYTES:
            reject(
                LIMIT,
                f"storing {key!r} would take the result store to {total} bytes, over "
                f"{limits.RESULT_TOTAL_MAX_BYTES} (RESULT_TOTAL_MAX_BYTES)",
            )

    def _finals(self, keys: list[str], now: int) -> list[list[Any]]:
        out: list[list[Any]] = []
        budget = 0
        for key in keys:
            rec = self._peek(key, now)
            if rec is None or not rec.final:
                continue
            size = _value_size(rec.value)
            if out and budget + size > limits.RESULT_READ_BUDGET_BYTES:
                break  # the caller waits again: the rest are final, it is answered at once
            budget += size
            out.append([key, rec.view()])
        return out

    def _wake(self, ctx: Ctx, key: str, rec: _Rec) -> None:
        tokens = self._by_key.pop(key, None)
        if not tokens:
            return
        answer = [[key, rec.view()]]
        for token in tokens:
            self._drop_waiter(token)
            ctx.complete(token, answer)

    def _add_waiter(self, token: int, keys: list[str], deadline: int) -> None:
        self.waiters[token] = [keys, deadline]
        for key in keys:
            self._by_key.setdefault(key, {})[token] = None
        self._waited += len(keys)

    def _drop_waiter(self, token: int) -> None:
        keys, _ = self.waiters.pop(token)
        self._waited -= len(keys)
        for key in keys:
            tokens = self._by_key.get(key)
            if tokens is not None:
                tokens.pop(token, None)
                if not tokens:
                    del self._by_key[key]

    # -- snapshots ------------------------------------------------------------------------------

    def to_state(self) -> Any:
        records = [
            [
                key,
                r.value,
                r.version,
                r.final,
                r.keep,
                r.expires,
                None if r.members is None else list(r.members),
                r.last,
            ]
            for key, r in self.records.items()
        ]
        waiters = [[token, list(keys), until] for token, (keys, until) in self.waiters.items()]
        return {"records": records, "waiters": waiters, "counters": [self.now_ms, self.expired]}

    def from_state(self, state: Any) -> None:
        """``None``: a snapshot taken before this part existed (nothing stored yet)."""
        self._reset()
        if state is None:
            return
        self.now_ms, self.expired = state["counters"]
        deadlines: list[tuple[int, Any]] = []
        for key, value, version, final, keep, expires, members, last in state["records"]:
            rec = _Rec(value, version, final, keep, expires)
            rec.size = len(key) + _value_size(value) + RECORD_OVERHEAD
            if members is not None:
                rec.members = dict.fromkeys(members)
                rec.size += sum(_member_size(m) for m in members)
            rec.last = last
            self.records[key] = rec
            self.bytes += rec.size
            if expires is not None:
                deadlines.append((expires, ("x", key)))
        for token, keys, deadline in state["waiters"]:
            self._add_waiter(token, keys, deadline)
            deadlines.append((deadline, ("w", token)))
        self._deadlines.rebuild(deadlines)
