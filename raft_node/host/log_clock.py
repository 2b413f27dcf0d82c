"""``LeaderClock``: the time a leader stamps into the log, which leases and TTLs run on.

The stamp used to be the leader's wall clock, so a wall clock stepped forward (NTP after a
long drift, an operator, a VM restored from a pause) expired every session and TTL at once,
and one stepped back froze them until it caught up. A leader now takes the wall clock once, when
it wins (never behind the log time it found: ``max(last log time, wall)``, so a cluster's own
downtime still counts), and from then on advances it by its **monotonic** clock only. A wall
clock that jumps during a term moves nothing; the next leader starts from the log time again.
Followers never stamp.
"""

from __future__ import annotations

from collections.abc import Callable


class LeaderClock:
    def __init__(
        self,
        wall_ms: Callable[[], int],
        monotonic: Callable[[], float],
        log_ms: Callable[[], int],
    ) -> None:
        self._wall_ms, self._monotonic, self._log_ms = wall_ms, monotonic, log_ms
        self._base: tuple[int, float] | None = None  # (log ms, monotonic s) when we won

    def lead(self, last_log_ms: int) -> None:
        """We became leader; the log's clock stood at ``last_log_ms``."""
        self._base = (max(last_log_ms, self._wall_ms()), self._monotonic())

    def follow(self) -> None:
        self._base = None

    def now_ms(self) -> int:
        """The stamp for a command proposed now. Asked before the host has handled its own
        election (a proposal in the same loop step), it bases itself on the log time then;
        ``lead`` re-bases it when the host handles the election."""
        if self._base is None:
            self.lead(self._log_ms())
        assert self._base is not None
        log_ms, since = self._base
        return log_ms + int((self._monotonic() - since) * 1000)
