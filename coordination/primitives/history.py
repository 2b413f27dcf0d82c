"""``History``: the numbered record of cache and lock changes that ``coord.watch`` follows.

etcd users expect a watch to be a *history*, not a live feed: every change has a revision, a
watcher that reconnects resumes from the last revision it saw, and one that fell too far behind
is told so (``compacted``) instead of silently missing changes. The L1 invalidation stream
(``session:<id>`` topics) cannot do that: it is fire-and-forget, and a reconnect loses events.

So the state machine itself numbers changes. Each change (a cache put, delete, expiry or clear; a
lock granted or released) gets the next **version** ``1, 2, 3...``, assigned while applying the
log, hence identical on every replica and gap-free: a watcher that sees ``v`` and then ``v + 2``
knows it missed one and resumes. The last ``MAX_EVENTS`` changes (and at most ``MAX_BYTES`` of
them) are retained, in snapshots too, so any node, a follower included, can replay them.

Each retained change is also emitted on the ``watch`` topic as it is applied; a node streams
those to its watchers after replaying the history they asked for (``history.since``), in one
step of its event loop, so the replay and the live stream neither overlap nor leave a gap.

An event is ``[version, index, time_ms, kind, type, key, value, details]``:

- ``kind`` ``"cache"``: ``type`` is ``put`` (``value`` is the new value, ``details`` its
  ``key_version`` and ``expires_ms``), ``delete``, ``expire`` or ``clear`` (every key, ``key``
  is ``""``);
- ``kind`` ``"lock"``: ``type`` is ``acquired`` or ``released``; ``details`` has the hold's
  ``token``, ``owner``, ``mode`` and ``session``.

The bounds are fixed here, not per node: retention is replicated state, so every replica must
use the same ones.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from coordination.primitives.base import Ctx, Op, Query
from coordination.primitives.errors import BAD_COMMAND, COMPACTED, reject

TOPIC = "watch"
MAX_EVENTS = 50_000
MAX_BYTES = 32 * 1024 * 1024
EVENT_OVERHEAD = 96  # bytes accounted per retained event on top of its key and value
MAX_PAGE = 10_000  # events per ``history.since`` answer (the client asks again for the rest)

Event = list[Any]


class History:
    name = "history"

    def __init__(self, max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES) -> None:
        self.max_events, self.max_bytes = max_events, max_bytes
        self.events: deque[Event] = deque()
        self.revision = 0  # version of the last change
        self.bytes = 0
        self._index, self._now_ms = 0, 0
        self._emitted: list[tuple[str, Event]] = []

    # -- recording (called by the parts while they apply) ---------------------------------------

    def begin(self, ctx: Ctx) -> None:
        """The entry being applied: its changes carry its index and log time."""
        self._index, self._now_ms = ctx.index, ctx.now_ms

    def record(
        self,
        kind: str,
        type_: str,
        key: str,
        value: bytes | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.revision += 1
        event = [
            self.revision,
            self._index,
            self._now_ms,
            kind,
            type_,
            key,
            value,
            details or {},
        ]
        self.events.append(event)
        self.bytes += _size(event)
        self._emitted.append((TOPIC, event))
        while len(self.events) > self.max_events or (
            self.bytes > self.max_bytes and len(self.events) > 1
        ):
            self.bytes -= _size(self.events.popleft())

    def drain_events(self) -> list[tuple[str, Event]]:
        emitted, self._emitted = self._emitted, []
        return emitted

    @property
    def oldest(self) -> int:
        """The oldest version still retained (``revision + 1`` when none is)."""
        return self.revision - len(self.events) + 1

    # -- Part ----------------------------------------------------------------------------------

    def ops(self) -> dict[str, Op]:
        return {}

    def queries(self) -> dict[str, Query]:
        return {"history.since": self.since, "history.status": self.status}

    def since(self, args: list[Any]) -> dict[str, Any]:
        """``[prefix, exact, after, limit]``: the retained changes with a version above
        ``after`` (``None``: none, only the current revision) whose key matches ``prefix`` (the
        whole key if ``exact``; a ``clear`` matches every prefix), at most ``limit``. A version
        older than the history fails with ``compacted``, naming the oldest one retained."""
        if len(args) != 4:
            reject(BAD_COMMAND, "history.since takes [prefix, exact, after, limit]")
        prefix, exact, after, limit = args
        if not isinstance(prefix, str) or not isinstance(exact, bool):
            reject(BAD_COMMAND, "prefix must be a string and exact a boolean")
        if after is not None and (not isinstance(after, int) or after < 0):
            reject(BAD_COMMAND, "after must be a version >= 0 or null")
        if not isinstance(limit, int) or not 0 < limit <= MAX_PAGE:
            reject(BAD_COMMAND, f"limit must be an integer in 1..{MAX_PAGE}")
        position = {"revision": self.revision, "oldest": self.oldest}
        if after is None or after >= self.revision:
            return {"events": [], **position, "more": False}
        if after + 1 < self.oldest:
            reject(
                COMPACTED,
                f"version {after + 1} is no longer retained; the oldest is {self.oldest}",
                **position,
            )
        start = after + 1 - self.oldest
        out: list[Event] = []
        more = False
        for event in itertools.islice(self.events, start, None):
            if matches(event, prefix, exact):
                if len(out) == limit:
                    more = True
                    break
                out.append(event)
        return {"events": out, **position, "more": more}

    def status(self, args: list[Any]) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "oldest": self.oldest,
            "retained": len(self.events),
            "bytes": self.bytes,
            "max_events": self.max_events,
            "max_bytes": self.max_bytes,
        }

    def next_deadline(self) -> int | None:
        return None

    def tick(self, ctx: Ctx) -> None:
        pass

    def session_ended(self, ctx: Ctx, session_id: int) -> None:
        pass

    def to_state(self) -> Any:
        return [self.revision, list(self.events)]

    def from_state(self, state: Any) -> None:
        """A snapshot taken before the history existed starts an empty one at revision 0."""
        self.revision, events = state if state is not None else (0, [])
        self.events = deque(events)
        self.bytes = sum(_size(e) for e in self.events)
        self._emitted = []


def matches(event: Event, prefix: str, exact: bool) -> bool:
    """Whether a watcher of ``prefix`` (a whole key if ``exact``) sees ``event``."""
    key = event[5]
    if event[4] == "clear":
        return True
    return key == prefix if exact else key.startswith(prefix)


def _size(event: Event) -> int:
    value = event[6]
    return len(event[5]) + (len(value) if value is not None else 0) + EVENT_OVERHEAD
