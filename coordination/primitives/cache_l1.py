"""L1 coherence for the cache: who holds which key in a per-process L1.

Chubby's scheme, ordered by the log. A client fills its L1 through ``cache.fill`` (a write, so
it has a place in the log); that registers ``(session, key)`` as a *holder* until its lease runs
out. The holder may serve the value it got until ``lease_until`` (log time), unless told
otherwise by an ``invalidate`` event. A write to a held key does not change the key until every
holder dropped it (``cache_queue``): it emits one ``invalidate`` event per live holder and waits.
A holder drops a key by acknowledging with ``cache.release``, by re-filling it, by letting its
lease run out, or by losing its session.

Client rule: a release names a key, not a registration, so a client must not let a release of a
key be applied after it re-filled that key (the fill already dropped the old registration; a
late release would drop the new one while the client still serves its value). Send releases in
order with fills (same client id, so the applier rejects a reordered older request) or drop a
not-yet-sent release when re-filling.

State (all replicated, all iterated in insertion order):

- ``holders``: key -> {session: [lease_until_ms, notified]}; ``notified`` is set once an
  invalidation was emitted for this registration (one event per registration is enough: the
  client drops the key, and no new registration is accepted while writes wait on the key);
- ``by_session``: session -> {key: None}, the same registrations per session (for release on
  session end, in registration order).

A registration is *live* while ``lease_until > now``. The cache drops registrations whose lease
ran out at the end of every cache entry (``expire``) and at ticks, so when queued writes are
examined every remaining registration is live. ``freed`` collects the keys left without any
holder during the current entry (the cache drains it before the entry ends; never in snapshots).
"""

from __future__ import annotations

from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Deadlines
from coordination.primitives.errors import LIMIT, reject

LEASE_MS = (100, 60_000)  # L1 lease bounds for cache.fill
HOLDS_PER_SESSION_MAX = 100_000  # L1 registrations one session may hold at once
EVENTS_MAX = 100_000  # undrained events kept (oldest dropped: a lost event costs only latency)


class L1Registry:
    def __init__(self) -> None:
        self.holders: dict[str, dict[int, list[Any]]] = {}
        self.by_session: dict[int, dict[str, None]] = {}
        self.events: list[tuple[str, list[Any]]] = []
        self.freed: list[str] = []
        self._leases = Deadlines()
        self._pushes = 0
        self._count = 0

    # -- registrations --------------------------------------------------------------------------

    def register(self, sid: int, key: str, lease_until: int, reg_id: int = 0) -> None:
        """``sid`` now holds ``key`` until ``lease_until``; a re-fill replaces the old one.
        Rejects (before changing anything) when the session holds too many keys."""
        held = self.by_session.get(sid)
        if held is not None and key in held:
            self.drop(sid, key)
        elif held is not None and len(held) >= HOLDS_PER_SESSION_MAX:
            reject(LIMIT, f"session {sid} holds {HOLDS_PER_SESSION_MAX} L1 keys; release some")
        self.holders.setdefault(key, {})[sid] = [lease_until, False, reg_id]
        self.by_session.setdefault(sid, {})[key] = None
        self._count += 1
        self._push(lease_until, (sid, key))

    def drop(self, sid: int, key: str) -> bool:
        """Remove one registration; a key left without holders goes to ``freed``."""
        regs = self.holders.get(key)
        if regs is None or regs.pop(sid, None) is None:
            return False
        if not regs:
            del self.holders[key]
            self.freed.append(key)
        held = self.by_session[sid]
        del held[key]
        if not held:
            del self.by_session[sid]
        self._count -= 1
        return True

    def release(self, sid: int, keys: list[str], regs: list[int | None] | None = None) -> int:
        """Drop ``sid``'s registrations of ``keys``. With ``regs``, only a registration made by
        that fill (its entry index) is dropped: a release that arrives late, after the client
        re-filled the key, must not drop the newer registration it knows nothing about."""
        dropped = 0
        for i, key in enumerate(keys):
            want = regs[i] if regs is not None else None
            if want is not None:
                reg = self.holders.get(key, {}).get(sid)
                if reg is None or reg[2] != want:
                    continue
            dropped += self.drop(sid, key)
        return dropped

    def renew(self, sid: int, key: str, reg_id: int, lease_until: int, now_ms: int) -> bool:
        """Extend ``sid``'s registration ``reg_id`` of ``key`` to ``lease_until``, only if it is
        live and not told of a waiting write. Such a registration proves no write to the key
        was applied since its fill (a write to a held key waits for its holders), so the value
        the holder keeps is the current one: extending it is a fill that changes nothing."""
        reg = self.holders.get(key, {}).get(sid)
        if reg is None or reg[2] != reg_id or reg[1] or reg[0] <= now_ms:
            return False
        if lease_until > reg[0]:
            reg[0] = lease_until
            self._push(lease_until, (sid, key))
        return True

    def session_ended(self, sid: int) -> None:
        for key in list(self.by_session.get(sid, ())):
            self.drop(sid, key)

    def take_freed(self) -> list[str]:
        out, self.freed = self.freed, []
        return out

    # -- reading --------------------------------------------------------------------------------

    def held(self, key: str) -> bool:
        return key in self.holders

    def live(self, key: str, now_ms: int) -> bool:
        """Whether some registration of ``key`` may still serve a value at ``now_ms``."""
        return any(reg[0] > now_ms for reg in self.holders.get(key, {}).values())

    def any_live(self, now_ms: int) -> bool:
        return any(self.live(key, now_ms) for key in self.holders)

    def count(self) -> int:
        return self._count

    # -- invalidations --------------------------------------------------------------------------

    def notify(self, key: str, version: int, now_ms: int) -> None:
        """Tell every live holder of ``key`` not told yet that a write at ``version`` waits."""
        for sid, reg in self.holders.get(key, {}).items():
            if reg[0] > now_ms and not reg[1]:
                reg[1] = True
                self._emit(f"session:{sid}", ["invalidate", key, version])

    def notify_all(self, version: int, now_ms: int) -> None:
        for key in self.holders:
            self.notify(key, version, now_ms)

    def _emit(self, topic: str, payload: list[Any]) -> None:
        self.events.append((topic, payload))
        if len(self.events) > EVENTS_MAX:
            del self.events[: len(self.events) - EVENTS_MAX]

    def drain_events(self) -> list[tuple[str, list[Any]]]:
        out, self.events = self.events, []
        return out

    # -- time -----------------------------------------------------------------------------------

    def _lease_of(self, item: tuple[int, str]) -> int | None:
        regs = self.holders.get(item[1])
        reg = regs.get(item[0]) if regs is not None else None
        return reg[0] if reg is not None else None

    def _push(self, deadline: int, item: tuple[int, str]) -> None:
        self._leases.push(deadline, item)
        self._pushes += 1
        if self._pushes > 2 * self._count + 1024:  # mostly stale entries: rebuild the heap
            self._rebuild()

    def _rebuild(self) -> None:
        items = [
            (reg[0], (sid, key)) for key, regs in self.holders.items() for sid, reg in regs.items()
        ]
        self._leases.rebuild(items)
        self._pushes = len(items)

    def next_deadline(self) -> int | None:
        return self._leases.next(self._lease_of)

    def expire(self, now_ms: int) -> None:
        """Drop every registration whose lease ran out by ``now_ms``."""
        for sid, key in self._leases.due(now_ms, self._lease_of):
            self.drop(sid, key)

    # -- snapshots ------------------------------------------------------------------------------

    def to_state(self) -> Any:
        holders = [
            [key, [[sid, reg[0], reg[1], reg[2]] for sid, reg in regs.items()]]
            for key, regs in self.holders.items()
        ]
        by_session = [[sid, list(keys)] for sid, keys in self.by_session.items()]
        return [holders, by_session]

    def from_state(self, state: Any) -> None:
        holders, by_session = state
        self.holders = {
            key: {row[0]: [row[1], row[2], row[3] if len(row) > 3 else 0] for row in regs}
            for key, regs in holders
        }
        self.by_session = {sid: dict.fromkeys(keys) for sid, keys in by_session}
        self.events, self.freed = [], []
        self._count = sum(len(regs) for regs in self.holders.values())
        self._rebuild()


def lease(value: Any) -> int:
    return limits.integer(value, LEASE_MS, "lease_ms")
