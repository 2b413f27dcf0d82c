"""``PutCombiner`` without a cluster: threads put through a blocking ``propose`` that applies
each command to an in-process ``CoordinationMachine`` (slowly, as a commit takes time), so a
test sees how the puts of many threads share entries and what each thread got."""

from __future__ import annotations

import threading
import time
from typing import Any

import msgpack

import coordination.client.operations as ops
from coordination.client.put_combiner import PutCombiner, combiner_for
from coordination.errors import typed
from coordination.exceptions import LimitExceeded
from coordination.primitives import limits
from coordination.primitives.machine import CoordinationMachine
from raft_node.client import Rejected
from raft_node.core.fsm import CommandRejected


class SlowLeader:
    """Applies each proposal after ``commit_s``, one at a time; ``refuse``: an older node."""

    def __init__(self, commit_s: float = 0.02, refuse: set[str] | None = None) -> None:
        self.machine = CoordinationMachine()
        self.index = 0
        self.ops: list[tuple[str, int]] = []  # (op, messages)
        self.commit_s = commit_s
        self.refuse = refuse or set()
        self._lock = threading.Lock()

    def propose(self, body: bytes) -> Any:
        command = msgpack.unpackb(body, raw=False)
        with self._lock:
            time.sleep(self.commit_s)
            count = len(command[2]) if command[0] == "queue.put_many" else 1
            self.ops.append((command[0], count))
            if command[0] in self.refuse:
                raise typed(Rejected("bad_command", f"unknown command {command[0]!r}", {}))
            try:
                self.machine.validate(body)
                self.index += 1
                return self.machine.apply(self.index, body, 1_000)
            except CommandRejected as exc:
                raise typed(Rejected(exc.code, exc.message, exc.details)) from None


def _threads(count: int, work: Any) -> list[Any]:
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_threads_that_put_while_one_put_commits_share_the_next_entry() -> None:
    leader = SlowLeader()
    combiner = PutCombiner()
    results = _threads(
        8, lambda i: [combiner.put(leader.propose, "q", ops.put_row(b"%d" % i)) for _ in "ab"]
    )
    ids = [mid for pair in results for mid in pair]
    assert len(set(ids)) == 16 and all(isinstance(i, ops.PutResult) for i in ids)
    assert len(leader.ops) < 16  # the old way: one entry per put
    assert any(op == "queue.put_many" and n > 1 for op, n in leader.ops)
    depth = leader.machine.query(msgpack.packb(["queue.stats", "q"]))["depth"]
    assert depth == 16


def test_a_lone_put_goes_out_at_once_as_a_plain_put() -> None:
    leader = SlowLeader(commit_s=0)
    combiner = PutCombiner()
    assert combiner.put(leader.propose, "q", ops.put_row(b"a")) == 1
    assert combiner.put(leader.propose, "q", ops.put_row(b"b")) == 2
    assert leader.ops == [("queue.put", 1), ("queue.put", 1)]


def test_a_refused_put_fails_its_own_thread_only() -> None:
    leader = SlowLeader()
    leader.machine.apply(0, msgpack.packb(["queue.declare", "q", None, None, 5]), 1_000)
    combiner = PutCombiner()
    results = _threads(8, lambda i: combiner.put(leader.propose, "q", ops.put_row(b"x")))
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert len(refused) == 3 and len([r for r in results if isinstance(r, int)]) == 5


def test_against_an_older_node_the_gathered_puts_go_one_by_one() -> None:
    leader = SlowLeader(refuse={"queue.put_many"})
    combiner = PutCombiner()
    results = _threads(6, lambda i: combiner.put(leader.propose, "q", ops.put_row(b"x")))
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert not combiner.batches_supported
    assert [op for op, _ in leader.ops].count("queue.put") == 6


def test_payload_bytes_cut_a_batch() -> None:
    leader = SlowLeader()
    combiner = PutCombiner()
    big = b"x" * (limits.PAYLOAD_MAX_BYTES - 100)
    results = _threads(6, lambda i: combiner.put(leader.propose, "q", ops.put_row(big)))
    assert all(isinstance(r, int) for r in results)
    assert all(n <= 2 for _, n in leader.ops)  # two payloads fill a 512 KiB batch


def test_one_combiner_per_cluster() -> None:
    assert combiner_for(("a:1", b"s")) is combiner_for(("a:1", b"s"))
    assert combiner_for(("a:1", b"s")) is not combiner_for(("b:1", b"s"))


FORK_SCRIPT = """
import os, sys, threading, time
import coordination.client.operations as ops
from coordination.client.put_combiner import combiner_for

key = ("fork:1", b"s")
release = threading.Event()

def stuck(body):
    release.wait(10)
    return {"id": 1, "duplicate": False}

parent = threading.Thread(target=combiner_for(key).put, args=(stuck, "q", ops.put_row(b"a")))
parent.start()
time.sleep(0.05)  # the parent's put is in flight: its combiner is busy
pid = os.fork()
if pid == 0:  # the child: its first put must go out
    seven = lambda body: {"id": 7, "duplicate": False}  # noqa: E731
    answer = combiner_for(key).put(seven, "q", ops.put_row(b"b"))
    os._exit(0 if answer == 7 else 3)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.02)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    status = None
release.set()
parent.join(10)
print("child", "hung" if status is None else os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_does_not_inherit_a_put_in_flight() -> None:
    """Celery forks its pool processes from a worker that publishes too (remote-control replies):
    a child forked while a parent's put was in flight must still be able to put. Run in a
    fresh interpreter: a fork of the test process would copy other tests' threads too."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert run.stdout.strip() == "child 0", run.stdout + run.stderr
