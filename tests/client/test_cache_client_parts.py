"""The cache client's parts on their own: TinyLFU admission counts, the worker that releases
evicted registrations, and the Redis read-back of evicted keys (against a private
redis-server). The client as a whole, against real nodes: tests/realprocess/test_cache_client.py."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from coordination.client.admission import (
    AGE_PERIOD,
    COUNT_MAX,
    EVICTION_SAMPLE,
    FrequencySketch,
)
from coordination.client.redis_fallback import RedisFallback
from coordination.client.releaser import BATCH, ReleaseWorker
from coordination.node.redis_mirror import PREFIX
from raft_node.testing.launcher import free_port

# -- admission ----------------------------------------------------------------------------------


def test_a_candidate_is_admitted_only_when_strictly_more_popular_than_the_victim():
    sketch = FrequencySketch(l1_size=100)
    for key in ["hot", "hot", "warm"]:
        sketch.record(key)
    assert sketch.admits("hot", "warm")
    assert not sketch.admits("warm", "warm")  # a tie keeps the resident
    assert not sketch.admits("new", "warm")
    assert sketch.admits("warm", "never-asked")


def test_counts_are_halved_every_age_period_requests_per_slot_and_ones_forgotten():
    sketch = FrequencySketch(l1_size=2)  # ages every 2 * AGE_PERIOD requests
    period = 2 * AGE_PERIOD
    for _ in range(7):
        sketch.record("a")
    sketch.record("b")
    for _ in range(period - 9):
        sketch.record(f"other-{_ % 40}")
    assert (sketch.frequency("a"), sketch.frequency("b")) == (7, 1)
    sketch.record("c")  # the period's last request
    assert (sketch.frequency("a"), sketch.frequency("b"), sketch.frequency("c")) == (3, 0, 0)
    assert "b" not in sketch._freq  # dropped, not kept at zero


def test_a_count_saturates_so_a_cooled_hot_key_is_forgotten_in_a_few_halvings():
    sketch = FrequencySketch(l1_size=1)  # ages every AGE_PERIOD requests
    for _ in range(20 * AGE_PERIOD - 1):  # 19 halvings, then AGE_PERIOD - 1 more requests
        sketch.record("hot")
    assert sketch.frequency("hot") == COUNT_MAX
    seen = []
    for _ in range(4):  # each "new" request after the first period's end ages the counts
        sketch.record("new")
        seen.append(sketch.frequency("hot"))
        for _ in range(AGE_PERIOD - 1):
            sketch.record("new")
    assert seen == [7, 3, 1, 0]


def test_the_victim_is_the_least_requested_of_the_oldest_sample():
    sketch = FrequencySketch(l1_size=100)
    lru_order = [f"k{i}" for i in range(EVICTION_SAMPLE + 5)]
    for i, key in enumerate(lru_order):
        for _ in range(1 + i % 3):  # k0: 1, k1: 2, k2: 3, k3: 1, ...
            sketch.record(key)
    sketch.record("k0")  # k0: 2 now, so k3 (1) is the oldest of the least requested
    assert sketch.victim(lru_order) == "k3"
    tail = lru_order[EVICTION_SAMPLE:]  # outside the sample: never chosen
    for key in tail:
        sketch._freq[key] = 0
    assert sketch.victim(lru_order) == "k3"
    assert sketch.victim(["only"]) == "only"


# -- releasing evicted registrations ------------------------------------------------------------


class Recorder:
    """A release function that records its batches and can be held up."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, pairs: list[tuple[str, int]]) -> None:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(pairs)


def test_evictions_are_released_from_one_thread_in_order_batched_while_one_is_in_flight():
    rec = Recorder()
    rec.gate.clear()
    worker = ReleaseWorker(rec)
    worker.submit([("k0", 1)])
    assert rec.entered.wait(5)  # the first release is in flight, held up
    for i in range(1, 6):
        worker.submit([(f"k{i}", i + 1)])
    assert worker.pending() == 5
    rec.gate.set()
    worker.close()
    assert rec.batches == [[("k0", 1)], [(f"k{i}", i + 1) for i in range(1, 6)]]
    assert len(rec.threads) == 1 and threading.main_thread().name not in rec.threads
    before = threading.active_count()
    worker.submit([("late", 9)])  # after close: ignored, no thread started
    assert threading.active_count() == before and rec.batches[-1] != [("late", 9)]


def test_a_backlog_goes_out_in_proposals_of_at_most_batch_pairs():
    rec = Recorder()
    rec.gate.clear()
    worker = ReleaseWorker(rec)
    worker.submit([("first", 1)])
    assert rec.entered.wait(5)
    worker.submit([(f"k{i}", i) for i in range(BATCH + 5)])
    rec.gate.set()
    worker.close()
    assert [len(b) for b in rec.batches] == [1, BATCH, 5]


def test_close_without_any_eviction_starts_no_thread():
    worker = ReleaseWorker(Recorder())
    before = threading.active_count()
    worker.close()
    assert threading.active_count() == before


# -- Redis read-back ----------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server")
    import redis

    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen([*args, "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.hset(PREFIX + "k", mapping={"v": 7, "d": b"seven"})
        client.hset(PREFIX + "gone", mapping={"v": 9})  # a delete the mirror recorded
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.kill()
        proc.wait()


def test_redis_answers_only_the_exact_version_the_cluster_reports(redis_url: str):
    fallback = RedisFallback(redis_url)
    try:
        assert fallback.read("k", 7) == b"seven"
        assert fallback.read("k", 6) is None  # Redis is ahead of this reader: not that value
        assert fallback.read("k", 8) is None  # Redis is behind: it would be stale
        assert fallback.read("gone", 9) is None
        assert fallback.read("absent", 1) is None
    finally:
        fallback.close()
