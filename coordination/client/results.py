"""Client of the ``results`` primitive: stored values, counters and server-side waits.

    results = Results(coordinator)
    results.set("job:1", b"done", ttl=3600, final=True)
    results.wait(["job:1", "job:2"], timeout=30)     # {key: Record} of the final ones (or {})
    results.incr("chord:7", member="task-a:0")        # Count(value=1, counted=True, last=...)

A ``wait`` is one log entry answered by the leader when a key becomes final (or when its
timeout, at most ``MAX_WAIT`` seconds, runs out): there is no polling. Times are seconds here
(milliseconds on the wire); keys follow the cluster's name rules (``limits.name``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from coordination.client.coordinator import WAIT_MARGIN, Coordinator
from coordination.exceptions import LimitExceeded
from coordination.primitives import commands as c
from coordination.primitives import limits

MAX_WAIT = limits.WAIT_MS[1] / 1000  # longest single wait (s)
MAX_VALUE_BYTES = limits.RESULT_VALUE_MAX_BYTES

__all__ = ["MAX_VALUE_BYTES", "MAX_WAIT", "Count", "Record", "Results"]


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    value: Any  # bytes (a stored value) or int (a counter)
    version: int  # index of the entry that last changed it
    final: bool
    expires_ms: int | None  # log time


@dataclass(frozen=True, slots=True)
class Count:
    value: int
    counted: bool  # False: this member was counted before, nothing changed
    last: str | None  # member of the latest counted increment


def _ttl_ms(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, round(ttl * 1000))


def _record(key: str, row: dict[str, Any]) -> Record:
    return Record(key, row["value"], row["version"], row["final"], row["expires_ms"])


class Results:
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        final: bool = False,
        keep: bool = False,
    ) -> tuple[int, bool]:
        """Store ``value`` (``ttl`` seconds, None: no expiry); returns ``(version, stored)``.
        ``final`` wakes the key's waiters; ``keep`` makes later sets no-ops (``stored`` False,
        with the kept record's version)."""
        if len(value) > MAX_VALUE_BYTES:
            raise LimitExceeded(
                "limit_exceeded",
                f"result value for {key!r} is {len(value)} bytes, over the {MAX_VALUE_BYTES}-byte"
                " limit (RESULT_VALUE_MAX_BYTES)",
            )
        answer = self.coord.propose(c.result_set(key, value, _ttl_ms(ttl), final, keep))
        return answer["version"], answer["stored"]

    def get(self, key: str) -> Record | None:
        row = self.coord.query(c.result_get(key))
        return None if row is None else _record(key, row)

    def get_many(self, keys: Iterable[str]) -> dict[str, Record]:
        """The records among ``keys`` that exist (linearizable reads, as few as the cluster's
        answer budget allows)."""
        rest = list(dict.fromkeys(keys))
        out: dict[str, Record] = {}
        while rest:
            batch = rest[: limits.BATCH_MAX]
            rows = self.coord.query(c.result_get_many(batch))  # a prefix of the batch
            for key, row in zip(batch, rows, strict=False):
                if row is not None:
                    out[key] = _record(key, row)
            rest = rest[len(rows) :]
        return out

    def wait(self, keys: Iterable[str], timeout: float) -> dict[str, Record]:
        """The final records among ``keys`` (at most 1,000 keys), at once if there are any, else
        the first to become final within ``timeout`` seconds (at most ``MAX_WAIT``); ``{}`` if
        none did. Several may come back at once; not necessarily every final one (the answer
        is size-capped: wait again for the rest)."""
        keys = list(dict.fromkeys(keys))
        timeout = min(max(timeout, 0.0), MAX_WAIT)
        rows = self.coord.propose(
            c.result_wait(keys, round(timeout * 1000)),
            timeout=max(self.coord.timeout, timeout + WAIT_MARGIN),
        )
        return {key: _record(key, row) for key, row in rows}

    def delete(self, key: str) -> bool:
        return bool(self.coord.propose(c.result_delete(key)))

    def expire(self, key: str, ttl: float | None) -> bool:
        """Expire ``key`` ``ttl`` seconds from now (None: never); False if it does not exist."""
        return bool(self.coord.propose(c.result_expire(key, _ttl_ms(ttl))))

    def incr(
        self, key: str, delta: int = 1, *, ttl: float | None = None, member: str | None = None
    ) -> Count:
        """Add ``delta`` to the counter at ``key`` (absent: 0), once per ``member`` if given;
        ``ttl`` (seconds) restarts its expiry."""
        answer = self.coord.propose(c.result_incr(key, delta, _ttl_ms(ttl), member))
        return Count(answer["value"], answer["counted"], answer["last"])

    def stats(self) -> dict[str, Any]:
        return self.coord.query(c.result_stats())
