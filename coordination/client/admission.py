"""Which keys may take a slot in the cache client's L1: TinyLFU-style admission.

An L1 slot is worth giving to a missed key only if that key is asked for more often (recently)
than the entry it would evict; otherwise one-off reads (a scan, a report) would flush the popular
keys. In linearizable mode admission also decides whether a miss costs a ``cache.fill`` (a log
entry that registers a holder) or only a plain read, so it keeps cold keys off the log.

``FrequencySketch`` keeps exact per-key request counts (a dict, not a count-min sketch: an L1
holds at most ``l1_size`` keys and the counts are aged away quickly, so the dict stays small).
Every ``10 * l1_size`` requests all counts are halved and the zeros dropped, so popularity can
change and the dict stays bounded by the keys seen in the last few periods.
"""

from __future__ import annotations

__all__ = ["FrequencySketch"]

AGE_PERIOD = 10  # requests per L1 slot between two halvings


class FrequencySketch:
    """Recent request counts per key. The cache client records without a lock: two threads
    racing on one count can lose an increment, which only blurs a popularity estimate."""

    def __init__(self, l1_size: int) -> None:
        self.l1_size = l1_size
        self._freq: dict[str, int] = {}
        self._requests = 0

    def record(self, key: str) -> None:
        """One request for ``key``."""
        self._freq[key] = self._freq.get(key, 0) + 1
        self._requests += 1
        if self._requests >= AGE_PERIOD * self.l1_size:  # age: halve, drop the zeros
            self._requests = 0
            self._freq = {k: n // 2 for k, n in self._freq.items() if n > 1}

    def frequency(self, key: str) -> int:
        return self._freq.get(key, 0)

    def admits(self, candidate: str, victim: str) -> bool:
        """Whether ``candidate`` should take ``victim``'s slot: strictly more popular."""
        return self._freq.get(candidate, 0) > self._freq.get(victim, 0)

    def __len__(self) -> int:
        return len(self._freq)
