"""Primitives against three real node processes, with real client processes paused and killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from coordination.client import Coordinator
from coordination.exceptions import Deadlock
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(coordination_cluster: LocalCluster) -> LocalCluster:
    return coordination_cluster


def _coordinator(c: LocalCluster, **kw) -> Coordinator:
    return Coordinator(list(c.addresses.values()), c.secret, **kw)


def _client_process(c: LocalCluster, script: str, log: Path) -> subprocess.Popen:
    prelude = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from coordination.client import Coordinator
        from coordination.exceptions import StaleToken
        coord = Coordinator({list(c.addresses.values())!r}, {c.secret!r})
        out = open({str(log)!r}, "a", buffering=1)
    """)
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(script)])


def _wait_for_line(log: Path, prefix: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                if line.startswith(prefix):
                    return line
        time.sleep(0.05)
    raise TimeoutError(f"no line {prefix!r} in {log}")


def test_paused_lock_holder_is_fenced_out_after_its_session_expires(cluster, tmp_path):
    log = tmp_path / "a.log"
    holder = _client_process(
        cluster,
        """
        session = coord.session(ttl=1.5)
        lock = coord.lock("fenced-resource", session=session)
        assert lock.acquire()
        out.write(f"token {lock.token}\\n")
        while True:                       # the protected resource checks the token each write
            try:
                coord.require_token("fenced-resource", lock.token)
                out.write(f"accepted {lock.token}\\n")
            except StaleToken:
                out.write(f"rejected {lock.token}\\n")
            time.sleep(0.1)
    """,
        log,
    )
    try:
        token_a = int(_wait_for_line(log, "token").split()[1])
        _wait_for_line(log, "accepted")
        holder.send_signal(signal.SIGSTOP)  # a long GC pause, or a VM freeze
        with _coordinator(cluster) as coord:
            lock = coord.lock("fenced-resource", wait=20)
            assert lock.acquire()  # granted once the paused holder's session expires
            assert lock.token > token_a
            assert coord.check_token("fenced-resource", lock.token)
            assert not coord.check_token("fenced-resource", token_a)
            cut = len(log.read_text().splitlines())
            holder.send_signal(signal.SIGCONT)
            _wait_for_line(log, "rejected")
            after = log.read_text().splitlines()[cut:]
            assert after and all(line.startswith("rejected") for line in after), after
            lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_killed_consumer_message_is_redelivered(cluster, tmp_path):
    log = tmp_path / "consumer.log"
    with _coordinator(cluster) as coord:
        queue = coord.queue("redeliver")
        queue.put(b"job-1")
        consumer = _client_process(
            cluster,
            """
            session = coord.session(ttl=1.5)
            msg = coord.queue("redeliver").get(wait=10, visibility=60, session=session)
            out.write(f"got {msg.id} {msg.delivery_count}\\n")
            time.sleep(60)
        """,
            log,
        )
        try:
            first = _wait_for_line(log, "got").split()
            os.kill(consumer.pid, signal.SIGKILL)  # dies holding the message
        finally:
            consumer.wait()
        msg = queue.get(wait=15, visibility=30)  # back once the dead consumer's session expires
        assert msg is not None and msg.payload == b"job-1"
        assert msg.id == int(first[1]) and msg.delivery_count == int(first[2]) + 1
        msg.ack()
        assert queue.stats()["in_flight"] == 0


def test_deadlock_of_two_and_three_sessions_is_detected(cluster):
    with _coordinator(cluster) as coord:
        for size in (2, 3):
            sessions = [coord.session(ttl=10) for _ in range(size)]
            names = [f"dl{size}-{i}" for i in range(size)]
            for s, name in zip(sessions, names, strict=True):
                assert coord.lock(name, session=s).acquire()
            waiters = []
            for i in range(size - 1):  # s0 waits for s1's lock, s1 for s2's, ...
                lock = coord.lock(names[i + 1], session=sessions[i], wait=30)
                t = threading.Thread(target=_try_acquire, args=(lock,), daemon=True)
                t.start()
                waiters.append((t, lock))
            _until(
                lambda size=size, names=names: all(
                    coord.inspect_lock(names[i + 1])["waiters"] for i in range(size - 1)
                )
            )
            with pytest.raises(Deadlock) as info:  # closing the cycle fails at once
                coord.lock(names[0], session=sessions[-1], wait=30).acquire()
            assert set(info.value.details["cycle"]) == {s.id for s in sessions}
            for s in sessions:
                assert f"session {s.id}" in info.value.message
            for s in sessions:
                s.close()  # releases everything; the waiters give up or are granted
            for t, _ in waiters:
                t.join(20)


def _try_acquire(lock) -> None:
    with contextlib.suppress(Exception):
        lock.acquire()


def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_async_client_locks_queues_and_sessions(cluster):
    import asyncio

    from coordination.client.aio import AsyncCoordinator

    async def main():
        async with AsyncCoordinator(list(cluster.addresses.values()), cluster.secret) as coord:
            async with coord.lock("aio-lock") as lock:
                assert await coord.check_token("aio-lock", lock.token)
                other = await coord.session()
                assert not await coord.lock("aio-lock", session=other).acquire()  # try fails
                await other.close()
            queue = coord.queue("aio-q")
            await queue.put(b"x", priority=3)
            msg = await queue.get(wait=5)
            assert msg["payload"] == b"x" and msg["priority"] == 3
            await queue.ack(msg)
            assert (await queue.stats())["in_flight"] == 0

    asyncio.run(main())


def test_concurrent_async_puts_share_entries_and_put_many_answers_each(cluster):
    """64 coroutines putting on one coordinator cost far fewer entries than puts, and every
    put gets its own id, in the order made; ``put_many`` (blocking client) answers each."""
    import asyncio

    from coordination.client.aio import AsyncCoordinator
    from coordination.exceptions import LimitExceeded

    async def main():
        async with AsyncCoordinator(list(cluster.addresses.values()), cluster.secret) as coord:
            queue = coord.queue("batched")
            await queue.put(b"first")
            before = cluster.status(cluster.leader())["commit"]
            ids = await asyncio.gather(*(queue.put(b"m%d" % i) for i in range(64)))
            after = cluster.status(cluster.leader())["commit"]
            assert ids == sorted(ids) and len(set(ids)) == 64
            assert after - before < 16  # one put_many entry, plus ticks or a retry at most
            got = await queue.get_many(65, wait=5)
            assert [m.payload for m in got] == [b"first"] + [b"m%d" % i for i in range(64)]

    asyncio.run(main())
    coord = _coordinator(cluster)
    try:
        queue = coord.queue("batched-small")
        queue.declare(max_depth=2)
        results = queue.put_many([b"a", b"b", b"c"])
        assert results[0] < results[1] and isinstance(results[2], LimitExceeded)
        assert queue.stats()["depth"] == 2
    finally:
        coord.close()


def test_threads_of_one_process_wait_for_each_other(cluster):
    """Each thread gets its own default session, so contention is ordinary waiting."""
    with _coordinator(cluster) as coord:
        order: list[str] = []
        holding = threading.Event()

        def first() -> None:
            with coord.lock("threads"):
                holding.set()
                time.sleep(0.5)
                order.append("first done")

        t = threading.Thread(target=first)
        t.start()
        holding.wait(10)
        with coord.lock("threads", wait=10):  # waits; no Deadlock
            order.append("second in")
        t.join(10)
        assert order == ["first done", "second in"]


def test_async_tasks_sharing_the_default_session_take_turns(cluster):
    """Tasks on the default session contend like separate clients, not as a 'deadlock'."""
    import asyncio

    from coordination.client.aio import AsyncCoordinator

    async def main():
        async with AsyncCoordinator(list(cluster.addresses.values()), cluster.secret) as coord:
            inside = [0]
            peak = [0]

            async def worker() -> None:
                for _ in range(3):
                    async with coord.lock("aio-shared-session", wait=20):
                        inside[0] += 1
                        peak[0] = max(peak[0], inside[0])
                        await asyncio.sleep(0.01)
                        inside[0] -= 1

            await asyncio.gather(*(worker() for _ in range(4)))
            assert peak[0] == 1
            outer, inner = coord.lock("aio-reentrant"), coord.lock("aio-reentrant")
            async with outer, inner:  # the same task (owner) re-enters
                assert inner.token == outer.token

    asyncio.run(main())
