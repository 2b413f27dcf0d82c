"""A seeded, numpy-free Zipf workload for the cache benchmark (``bench_primitives.py``).

Rank ``k`` (1..n) is drawn with probability ``k**-s / H(n, s)``: the CDF is precomputed once and
each draw is one ``random()`` and one ``bisect``, so a run with the same seed replays the same
keys and operations. ``ideal_hit_rate`` is the exact read-probability mass of the ``size`` most
popular keys, the best any cache of that many keys can do when every operation is a read.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random


def weights(n: int, s: float) -> list[float]:
    return [k**-s for k in range(1, n + 1)]


def ideal_hit_rate(n: int, s: float, size: int) -> float:
    """Probability mass of the ``size`` most popular of ``n`` Zipf(``s``) keys (exact sum)."""
    w = weights(n, s)
    return math.fsum(w[: min(size, n)]) / math.fsum(w)


class ZipfSampler:
    """Ranks 0..n-1 (0 = most popular) drawn from Zipf(s) with a private seeded RNG."""

    def __init__(self, n: int, s: float, seed: int) -> None:
        w = weights(n, s)
        total = math.fsum(w)
        self.cdf = [x / total for x in itertools.accumulate(w)]
        self.cdf[-1] = 1.0  # no draw can fall past the last rank through rounding
        self.rng = random.Random(seed)

    def rank(self) -> int:
        return bisect.bisect_left(self.cdf, self.rng.random())


def workload(
    n: int, s: float, seed: int, read_fraction: float, count: int
) -> list[tuple[bool, int]]:
    """``count`` operations ``(is_read, rank)``: the key is Zipf, the kind independent of it."""
    keys = ZipfSampler(n, s, seed)
    kinds = random.Random(seed ^ 0x5EED)
    return [(kinds.random() < read_fraction, keys.rank()) for _ in range(count)]


def simulate(ops: list[tuple[bool, int]], size: int, policy: str, warmup: int = 0) -> float:
    """Hit rate (hits / reads after ``warmup`` operations) of a ``size``-key cache replaying
    ``ops`` with no leases, where a write keeps a cached key cached (as the L1 does with its own
    writes, ``cache.set_hold``):

    - ``"static"``: caches exactly the ``size`` most popular keys (ranks below ``size``), each
      from its first read; the best static choice for this distribution;
    - ``"lru"``: admits every miss and evicts the least recently used key;
    - ``"lfu"``: counts every request from the first operation on (perfect memory, no aging),
      evicts the least frequently requested cached key and admits a miss only if it was
      requested more often: the best an online policy can learn from this trace.
    """
    import heapq
    from collections import OrderedDict

    cached: OrderedDict[int, None] = OrderedDict()
    freq: dict[int, int] = {}
    heap: list[tuple[int, int]] = []  # (count, rank) of cached keys, lazily updated
    hits = reads = 0
    for n, (is_read, rank) in enumerate(ops):
        counted = n >= warmup
        freq[rank] = freq.get(rank, 0) + 1
        if policy == "lfu" and rank in cached:
            heapq.heappush(heap, (freq[rank], rank))
        if not is_read:
            continue
        reads += counted
        if rank in cached:
            hits += counted
            cached.move_to_end(rank)
        elif policy == "lru":
            cached[rank] = None
            if len(cached) > size:
                cached.popitem(last=False)
        elif policy == "static":
            if rank < size:
                cached[rank] = None
        elif policy == "lfu":
            if len(cached) < size:
                cached[rank] = None
                heapq.heappush(heap, (freq[rank], rank))
                continue
            while heap[0][1] not in cached or freq[heap[0][1]] != heap[0][0]:
                heapq.heappop(heap)  # stale
            if freq[rank] > heap[0][0]:
                del cached[heapq.heappop(heap)[1]]
                cached[rank] = None
                heapq.heappush(heap, (freq[rank], rank))
        else:
            raise ValueError(f"unknown policy {policy!r}")
    return hits / reads if reads else float("nan")
