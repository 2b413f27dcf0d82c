"""raftsync side of the primitives benchmark: locks, queue and cache scenarios against a running
cluster, through the public clients (``Coordinator``, ``AsyncCoordinator``, ``Cache``).

Each area function takes the parameter dict ``bench_primitives.py`` passes (addresses, secret,
key prefix, windows, sizes) and returns a JSON-able dict, one entry per phase; a phase that
fails records ``{"error": ...}`` and the others still run. Run by ``prim_load.py`` in its own
process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from benchlib import summarize_latencies
from prim_common import (
    Holders,
    Samples,
    Window,
    cache_value,
    guarded,
    now,
    payload,
    run_threads,
    sent_at,
)
from prim_zipf import workload

from coordination.client import Coordinator
from coordination.client.aio import AsyncCoordinator
from coordination.client.cache import BOUNDED, LINEARIZABLE, Cache
from coordination.exceptions import LimitExceeded, RaftError
from coordination.primitives import commands as c

CLIENT_TIMEOUT = 5.0


def _coordinator(p: dict[str, Any], name: str) -> Coordinator:
    return Coordinator(p["addresses"], p["secret"], timeout=CLIENT_TIMEOUT, name=name)


def _async_coordinator(p: dict[str, Any]) -> AsyncCoordinator:
    return AsyncCoordinator(p["addresses"], p["secret"], timeout=CLIENT_TIMEOUT)


def _bound(p: dict[str, Any], extra: float = 0.0) -> float:
    """How long a phase may take before its workers are declared stuck."""
    return p["warmup"] + p["seconds"] + extra + 3 * CLIENT_TIMEOUT


# -- locks ----------------------------------------------------------------------------------------


def lock_uncontended(coord: Coordinator, p: dict[str, Any]) -> dict[str, Any]:
    """One client, sequential ``with coord.lock(name):`` (acquire + release, two log entries)."""
    name = p["prefix"] + "lock-uncontended"
    coord.default_session  # noqa: B018 - open the session before the clock starts
    s = Samples(Window(p["warmup"], p["seconds"]))
    acquire = Samples(s.window)  # the acquire alone (first log entry of the pair)
    while not s.window.over():
        t0 = now()
        try:
            with coord.lock(name):
                t_acq = now()
        except RaftError as exc:
            s.error(exc)
            time.sleep(0.01)
            continue
        s.done(t0)
        acquire.done(t0, t_acq)
    return s.summary(acquire_only=acquire.summary())


async def _shared_session_probe(p: dict[str, Any]) -> dict[str, Any]:
    """Two tasks on one AsyncCoordinator (so on its one default session): the second waits for
    the lock the first holds. Recorded because it decides how contenders must be set up: the
    wait-for graph has one node per session, so such a wait is a self-cycle."""
    name = p["prefix"] + "lock-shared-session"
    coord = _async_coordinator(p)
    try:
        first_held = asyncio.Event()
        done = asyncio.Event()

        async def holder() -> None:
            async with coord.lock(name):
                first_held.set()
                await asyncio.wait_for(done.wait(), 10)

        async def waiter() -> str:
            await asyncio.wait_for(first_held.wait(), 10)
            lock = coord.lock(name)
            try:
                got = await lock.acquire(wait=0.5)
            except RaftError as exc:
                return f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            finally:
                done.set()
            if got:
                await lock.release()
            return "acquired" if got else "timed out"

        _, outcome = await asyncio.wait_for(asyncio.gather(holder(), waiter()), 30)
        return {"outcome": outcome}
    finally:
        await coord.close()


def lock_contended(coord: Coordinator, p: dict[str, Any]) -> dict[str, Any]:
    """``threads`` threads on ONE lock, each ``acquire(wait=...)`` then ``release()`` in a loop.
    Each thread has its own session, as the Coordinator's per-thread default session would give
    (owners sharing one session cannot wait for each other: see ``_shared_session_probe``)."""
    n, wait = p["lock_threads"], p["lock_wait"]
    name = p["prefix"] + "lock-contended"
    sessions = [coord.session(label=f"bench-contender-{i}") for i in range(n)]
    try:
        barrier = threading.Barrier(n)
        s = Samples(Window(p["warmup"], p["seconds"]))
        holders = Holders(n, s.window)

        def worker(i: int) -> None:
            lock = coord.lock(name, session=sessions[i], owner=f"contender-{i}")
            barrier.wait(timeout=10)
            while not s.window.over():
                t0 = now()
                try:
                    acquired = lock.acquire(wait=wait)
                except RaftError as exc:
                    s.error(exc)
                    time.sleep(0.01)
                    continue
                t1 = now()
                if not acquired:
                    s.count("wait_timeouts")
                    continue
                s.done(t0, t1)
                holders.took(i, t1)
                try:
                    lock.release()
                except RaftError as exc:
                    s.error(exc)

        run_threads(n, worker, _bound(p, wait))
        out = s.summary()
        out.update(holders.summary())
        out["threads"] = n
        return out
    finally:
        for session in sessions:
            session.close()


async def _lock_throughput(p: dict[str, Any]) -> dict[str, Any]:
    """``lock_clients`` AsyncCoordinators (one connection and session each), each doing
    ``async with coord.lock(name)`` sequentially over its own distinct lock names."""
    n = p["lock_clients"]
    coords = [_async_coordinator(p) for _ in range(n)]
    try:
        for coord in coords:
            await coord.default_session()
        s = Samples(Window(p["warmup"], p["seconds"]))

        async def worker(i: int) -> None:
            k = 0
            while not s.window.over():
                k += 1
                t0 = now()
                try:
                    async with coords[i].lock(f"{p['prefix']}lock-tp-{i}-{k % 64}"):
                        pass
                except RaftError as exc:
                    s.error(exc)
                    await asyncio.sleep(0.01)
                    continue
                s.done(t0)

        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(n))), _bound(p))
        return s.summary(clients=n)
    finally:
        for coord in coords:
            await coord.close()


def locks(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    coord = _coordinator(p, "bench-locks")
    try:
        out["uncontended"] = guarded(lock_uncontended, coord, p)
        out["contended"] = guarded(lock_contended, coord, p)
    finally:
        coord.close()
    out["throughput"] = guarded(lambda: asyncio.run(_lock_throughput(p)))
    out["shared_session_wait"] = guarded(lambda: asyncio.run(_shared_session_probe(p)))
    return out


# -- queue ----------------------------------------------------------------------------------------


# A queue holds at most 100,000 messages (limits.QUEUE_DEPTH_MAX, a memory bound). The put phase
# moves on to a fresh queue before its queue fills: otherwise a rate above 100,000 / (warm-up +
# window) msg/s would meet the limit and be measured as refusals and back-offs, not as put/s.
SPILL_AT = 90_000


class Spill:
    """The put phase's queue names: ``name`` for the first ``SPILL_AT`` puts started, then
    ``name.spill1``, ``name.spill2``, ... (declared like ``name`` before their first put). All
    producers move together, so the puts of one event-loop turn still share one queue (and one
    ``put_many`` entry) except at the switch. The get+ack phase drains ``name``."""

    def __init__(self, name: str, spills: int = 7) -> None:
        self.names = [name, *(f"{name}.spill{i}" for i in range(1, spills + 1))]
        self.started = 0

    def next(self) -> str:
        turn = self.started // SPILL_AT
        self.started += 1
        return self.names[min(turn, len(self.names) - 1)]


async def _producers(
    coord: AsyncCoordinator, name: str, count: int, s: Samples, spill: Spill | None = None
) -> None:
    queues = {n: coord.queue(n) for n in (spill.names if spill else [name])}

    async def producer() -> None:
        while not s.window.over():
            t0 = now()
            queue = queues[spill.next()] if spill else queues[name]
            try:
                await queue.put(payload())
            except LimitExceeded as exc:  # the queue is full (max_depth): not a put/s figure
                s.error(exc)
                await asyncio.sleep(0.05)
                continue
            except RaftError as exc:
                s.error(exc)
                await asyncio.sleep(0.01)
                continue
            s.done(t0)

    await asyncio.gather(*(producer() for _ in range(count)))


async def _consumers(
    coords: list[AsyncCoordinator], name: str, per_session: int, wait: float, s: Samples
) -> dict[str, Any]:
    """``per_session`` coroutines per coordinator (one session each): get, then ack. With
    ``wait == 0`` the first empty answer ends the phase (the backlog is drained); otherwise
    gets block up to ``wait`` and latencies are put-to-ack (from the payload's stamp)."""
    sessions = [await coord.session(label="bench-consumer") for coord in coords]
    drained: list[int] = []
    try:

        async def consumer(coord: AsyncCoordinator, session: Any) -> None:
            queue = coord.queue(name)
            while not s.window.over() and not drained:
                t0 = now()
                try:
                    msg = await queue.get(wait=wait, visibility=60.0, session=session)
                    if msg is None:
                        if wait == 0:
                            drained.append(now())
                        continue
                    await queue.ack(msg)
                except RaftError as exc:
                    s.error(exc)
                    await asyncio.sleep(0.01)
                    continue
                s.done(sent_at(msg["payload"]) if wait else t0)

        await asyncio.gather(
            *(
                consumer(coord, sess)
                for coord, sess in zip(coords, sessions, strict=True)
                for _ in range(per_session)
            )
        )
    finally:
        for session in sessions:
            await session.close()
    return {"drained_at": drained[0] if drained else None}


def _rate_until(s: Samples, drained_at: int | None) -> dict[str, Any]:
    """Summary over the window, cut short where the backlog ran out."""
    w = s.window
    if drained_at is not None and drained_at < w.end:
        if drained_at <= w.start:
            return s.summary(elapsed=0.0, note="backlog drained during the warm-up")
        return s.summary(elapsed=(drained_at - w.start) / 1e9, drained_early=True)
    return s.summary()


async def _queue(p: dict[str, Any]) -> dict[str, Any]:
    name = p["prefix"] + "queue"
    out: dict[str, Any] = {}
    qp = {**p, "seconds": p["queue_seconds"]}
    producer_coord = _async_coordinator(p)
    consumer_coords = [_async_coordinator(p) for _ in range(p["queue_sessions"])]
    try:
        spill = Spill(name)
        for queue_name in spill.names:  # no dedup window
            await producer_coord.propose(c.queue_declare(queue_name, None, 0, None))
        # put: N producers on one pipelined connection.
        s = Samples(Window(qp["warmup"], qp["seconds"]))
        try:
            await asyncio.wait_for(
                _producers(producer_coord, name, p["queue_producers"], s, spill), _bound(qp)
            )
            out["put"] = s.summary(producers=p["queue_producers"])
        except Exception as exc:
            out["put"] = {"error": f"{type(exc).__name__}: {exc}"}
        stats = await producer_coord.query(c.queue_stats(name))
        out["backlog_after_put"] = stats
        out["put_queues"] = spill.started // SPILL_AT + 1
        for queue_name in spill.names[1:]:
            await producer_coord.propose(c.queue_delete(queue_name))

        # get+ack: consumers drain the backlog the put phase left.
        s = Samples(Window(qp["warmup"], qp["seconds"]))
        try:
            got = await asyncio.wait_for(
                _consumers(consumer_coords, name, p["queue_per_session"], 0.0, s), _bound(qp)
            )
            out["get_ack"] = _rate_until(s, got["drained_at"])
            out["get_ack"]["consumers"] = p["queue_sessions"] * p["queue_per_session"]
        except Exception as exc:
            out["get_ack"] = {"error": f"{type(exc).__name__}: {exc}"}
        await producer_coord.propose(c.queue_purge(name))

        # end to end: producers and blocking consumers together; latency = put to ack.
        s = Samples(Window(qp["warmup"], qp["seconds"]))
        prod = Samples(s.window)
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    _producers(producer_coord, name, p["queue_e2e_producers"], prod),
                    _consumers(consumer_coords, name, p["queue_per_session"], 1.0, s),
                ),
                _bound(qp, 2.0),
            )
            out["e2e"] = s.summary(
                producers=p["queue_e2e_producers"],
                consumers=p["queue_sessions"] * p["queue_per_session"],
                put_per_s=prod.summary()["ops_per_s"],
            )
            out["e2e"]["backlog_at_end"] = (await producer_coord.query(c.queue_stats(name))).get(
                "ready"
            )
        except Exception as exc:
            out["e2e"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        try:
            await producer_coord.propose(c.queue_purge(name))
        finally:
            for coord in [producer_coord, *consumer_coords]:
                await coord.close()
    return out


def queue(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_queue(p))


# -- cache ----------------------------------------------------------------------------------------


def _preload(cache: Cache, keys: list[str], value: bytes, batch: int = 1000) -> None:
    for i in range(0, len(keys), batch):
        cache.set_many({k: value for k in keys[i : i + batch]})


def _sequential(p: dict[str, Any], seconds: float, op: Any) -> dict[str, Any]:
    s = Samples(Window(min(p["warmup"], 0.5), seconds))
    i = 0
    while not s.window.over():
        i += 1
        t0 = now()
        try:
            op(i)
        except RaftError as exc:
            s.error(exc)
            continue
        s.done(t0)
    return s.summary()


def cache_l1_hit(coord: Coordinator, p: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Gets answered from the L1 (linearizable mode; only hits are timed). The window stays
    well inside the local lease (80% of ``lease``), so the keys do not expire meanwhile."""
    session = coord.session(label="bench-l1-hit")
    cache = Cache(coord, l1_size=p["cache_l1"], mode=LINEARIZABLE, session=session)
    try:
        for k in keys:
            cache.get(k)  # fill: registers the key, caches it for the lease
        s = Samples(Window(0.1, min(1.0, p["seconds"])))
        i = 0
        while not s.window.over():
            i += 1
            hits = cache.hits
            t0 = now()
            cache.get(keys[i % len(keys)])
            t1 = now()
            if cache.hits > hits:
                s.done(t0, t1)
            else:
                s.count("misses")
        return s.summary()
    finally:
        cache.close()
        session.close()


def cache_zipf(
    coord: Coordinator, p: dict[str, Any], keys: list[str], lease: float
) -> dict[str, Any]:
    """Zipf(s) over ``keys`` (rank i -> keys[i]), 90% get / 10% set, one linearizable Cache with
    an L1 of ``cache_l1`` keys; counters are taken after ``zipf_warmup`` operations."""
    session = coord.session(label=f"bench-zipf-{lease:g}")
    cache = Cache(coord, l1_size=p["cache_l1"], mode=LINEARIZABLE, lease=lease, session=session)
    ops = workload(
        len(keys),
        p["zipf_s"],
        p["zipf_seed"],
        p["read_fraction"],
        p["zipf_warmup"] + p["zipf_ops"],
    )
    value = cache_value(7)
    reads, writes = [], []
    try:
        hits0 = misses0 = 0
        t_start = now()
        for n, (is_read, rank) in enumerate(ops):
            if n == p["zipf_warmup"]:
                hits0, misses0, t_start = cache.hits, cache.misses, now()
                reads, writes = [], []
            t0 = now()
            if is_read:
                cache.get(keys[rank])
                reads.append(now() - t0)
            else:
                cache.set(keys[rank], value)
                writes.append(now() - t0)
        elapsed = (now() - t_start) / 1e9
        hits, misses = cache.hits - hits0, cache.misses - misses0
        return {
            "lease_s": lease,
            "ops": p["zipf_ops"],
            "warmup_ops": p["zipf_warmup"],
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else float("nan"),
            "elapsed_s": elapsed,
            "ops_per_s": p["zipf_ops"] / elapsed if elapsed > 0 else 0.0,
            "read_latency": summarize_latencies(reads, elapsed, 0),
            "write_latency": summarize_latencies(writes, elapsed, 0),
            "l1_keys_at_end": len(cache._l1),
        }
    finally:
        cache.close()
        session.close()  # drops every registration at once (later writers need not wait)


def cache(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    coord = _coordinator(p, "bench-cache")
    plain = Cache(coord, mode=BOUNDED, staleness=0.0)  # no L1: every get is a cluster read
    try:
        zipf_keys = [f"{p['prefix']}z:{i:05d}" for i in range(p["zipf_keys"])]
        hot_keys = [f"{p['prefix']}hot:{i:03d}" for i in range(100)]
        t0 = now()
        _preload(plain, zipf_keys + hot_keys, cache_value(1))
        out["preload_s"] = (now() - t0) / 1e9
        out["l1_hit"] = guarded(cache_l1_hit, coord, p, hot_keys)
        out["cluster_read"] = guarded(
            _sequential, p, p["seconds"], lambda i: plain.get(hot_keys[i % len(hot_keys)])
        )
        write_keys = [f"{p['prefix']}w:{i:03d}" for i in range(100)]
        value = cache_value(2)
        out["write"] = guarded(
            _sequential, p, p["seconds"], lambda i: plain.set(write_keys[i % 100], value)
        )
        for lease in p["zipf_leases"]:
            out[f"zipf_lease_{lease:g}"] = guarded(cache_zipf, coord, p, zipf_keys, lease)
        try:
            out["cluster_stats"] = plain.cluster_stats()
        except RaftError as exc:
            out["cluster_stats"] = {"error": repr(exc)}
        return out
    finally:
        try:
            for batch in range(0, len(zipf_keys), 1000):
                plain.delete_many(zipf_keys[batch : batch + 1000])
            plain.delete_many(hot_keys + [f"{p['prefix']}w:{i:03d}" for i in range(100)])
        except (RaftError, NameError):
            pass
        plain.close()
        coord.close()


AREAS = {"locks": locks, "queue": queue, "cache": cache}
