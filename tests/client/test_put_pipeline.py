"""``PutPipeline`` without a cluster: unconfirmed puts through a blocking ``propose`` that applies
each command to an in-process ``CoordinationMachine`` after a delay (``SlowLeader``), so a test
sees that ``put`` returns before the commit, that puts keep their order and share entries, that
failures are logged and counted, and that ``flush``/``close`` and the exit hook lose nothing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

import coordination.client.operations as ops
from coordination.client.put_pipeline import PutPipeline
from coordination.primitives import commands as c
from raft_node.client import ClusterUnavailable, OutcomeUnknown
from tests.client.test_put_combiner import SlowLeader

ROOT = Path(__file__).resolve().parents[2]


def row(payload: bytes) -> list:
    return ops.put_row(payload, 0, None, 0.0, None, "")


def queued(leader: SlowLeader, queue: str) -> list[bytes]:
    return [r["payload"] for r in leader.machine.query(c.queue_peek(queue, 1_000))]


def declared(leader: SlowLeader, queue: str) -> SlowLeader:
    leader.index += 1
    leader.machine.apply(leader.index, c.queue_declare(queue, None, None, None), 1_000)
    return leader


def test_put_returns_before_the_commit_and_the_puts_land_in_order_sharing_entries() -> None:
    leader = declared(SlowLeader(commit_s=0.05), "q")
    pipeline = PutPipeline(leader.propose)
    started = time.monotonic()
    for n in range(200):
        pipeline.put("q", row(b"%d" % n))
    assert time.monotonic() - started < 0.05  # not one commit's wait, let alone 200
    assert pipeline.flush(timeout=10)
    assert queued(leader, "q") == [b"%d" % n for n in range(200)]
    assert pipeline.sent == 200 and pipeline.failed == 0
    assert len(leader.ops) < 10  # batched: what gathered during one commit went in the next
    assert pipeline.close(timeout=1)


def test_a_refused_put_is_logged_and_counted_and_the_others_still_land(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leader = SlowLeader(commit_s=0.01)
    pipeline = PutPipeline(leader.propose)
    with caplog.at_level(logging.ERROR, logger="coordination.client.put_pipeline"):
        pipeline.put("q", ops.put_row(b"x", 10, None, 0.0, None, ""))  # priority 0..9 only
        assert not pipeline.flush(timeout=5)
    assert pipeline.failed == 1 and pipeline.sent == 0
    assert any("event=publish_failed queue=q count=1" in r.getMessage() for r in caplog.records)
    assert pipeline.flush(timeout=5)  # the failure was reported once
    pipeline.close(timeout=1)


def test_lost_and_unknown_outcomes_are_told_apart(caplog: pytest.LogCaptureFixture) -> None:
    errors = iter([ClusterUnavailable("no leader"), OutcomeUnknown("leader lost mid-commit")])

    def propose(body: bytes) -> None:
        raise next(errors)

    pipeline = PutPipeline(propose)
    with caplog.at_level(logging.ERROR, logger="coordination.client.put_pipeline"):
        pipeline.put("q", row(b"a"))
        pipeline.flush(timeout=5)
        pipeline.put("q", row(b"b"))
        pipeline.flush(timeout=5)
    assert (pipeline.failed, pipeline.unknown, pipeline.sent) == (1, 1, 0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("event=publish_failed" in m and "no leader" in m for m in messages)
    assert any("event=publish_unknown" in m for m in messages)
    pipeline.close(timeout=1)


def test_a_producer_faster_than_the_cluster_blocks_at_max_pending() -> None:
    gate = threading.Event()
    sent: list[bytes] = []

    def propose(body: bytes) -> list:
        gate.wait(10)
        command = msgpack.unpackb(body, raw=False)
        sent.append(body)
        if command[0] == "queue.put":
            return {"id": 1, "duplicate": False}
        return [{"id": i, "duplicate": False} for i in range(len(command[2]))]

    pipeline = PutPipeline(propose, max_pending=5)
    pipeline.put("q", row(b"first"))  # taken by the sender, which waits at the gate
    time.sleep(0.1)
    for n in range(5):
        pipeline.put("q", row(b"%d" % n))
    blocked = threading.Thread(target=pipeline.put, args=("q", row(b"sixth")))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # back-pressure
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    assert pipeline.flush(timeout=5)
    assert pipeline.sent == 7
    pipeline.close(timeout=1)


def test_close_sends_what_was_handed_over_and_refuses_more() -> None:
    leader = declared(SlowLeader(commit_s=0.02), "q")
    pipeline = PutPipeline(leader.propose)
    for n in range(50):
        pipeline.put("q", row(b"%d" % n))
    assert pipeline.close(timeout=10)
    assert len(queued(leader, "q")) == 50
    with pytest.raises(RuntimeError, match="closed"):
        pipeline.put("q", row(b"late"))


EXITING_PRODUCER = """
import sys, time
import msgpack
sys.path.insert(0, {root!r})
import coordination.client.operations as ops
from coordination.client.put_pipeline import PutPipeline
from coordination.primitives import commands as c

def propose(body):
    time.sleep(0.05)  # a commit
    command = msgpack.unpackb(body, raw=False)
    rows = command[2] if command[0] == "queue.put_many" else [command]
    with open({out!r}, "a") as f:
        f.write("%d\\n" % len(rows))
    if command[0] == "queue.put_many":
        return [{{"id": i, "duplicate": False}} for i in range(len(rows))]
    return {{"id": 1, "duplicate": False}}

pipeline = PutPipeline(propose)
for n in range(300):
    pipeline.put("q", ops.put_row(b"x", 0, None, 0.0, None, ""))
# exit at once: the atexit hook must send what is still waiting
"""


def test_puts_handed_over_just_before_the_interpreter_exits_are_sent(tmp_path: Path) -> None:
    out = tmp_path / "sent.txt"
    script = EXITING_PRODUCER.format(root=str(ROOT), out=str(out))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sum(int(n) for n in out.read_text().split()) == 300


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_pipeline_empty_and_it_works() -> None:
    """The parent's sender holds the pipeline's lock while it waits on a commit; a child forked
    then must neither deadlock on that lock nor send the parent's puts again."""
    gate = threading.Event()
    calls: list[int] = []

    def propose(body: bytes) -> dict:
        calls.append(os.getpid())
        if os.getpid() == parent:
            gate.wait(5)
        return {"id": 1, "duplicate": False}

    parent = os.getpid()
    pipeline = PutPipeline(propose)
    pipeline.put("q", row(b"parent"))
    time.sleep(0.1)  # the parent's sender is in propose, waiting at the gate
    pid = os.fork()
    if pid == 0:  # the child: one put of its own, flushed, then report by exit status
        ok = False
        try:
            pipeline.put("q", row(b"child"))
            ok = pipeline.flush(timeout=5) and pipeline.sent == 1 and calls[-1] == os.getpid()
        finally:
            os._exit(0 if ok else 1)  # the child must never return into pytest
    _, status = os.waitpid(pid, 0)
    gate.set()
    assert os.waitstatus_to_exitcode(status) == 0
    assert pipeline.flush(timeout=5)
    assert calls.count(parent) == 1
    pipeline.close(timeout=1)


def test_every_outcome_is_counted_in_prometheus_by_queue() -> None:
    """A failure after ``put`` returned is logged, and counted where it can be alerted on: the
    default registry's ``raftsync_unconfirmed_publishes_total{queue, outcome}``."""
    prometheus = pytest.importorskip("prometheus_client")

    def sample(queue: str, outcome: str) -> float:
        labels = {"queue": queue, "outcome": outcome}
        value = prometheus.REGISTRY.get_sample_value("raftsync_unconfirmed_publishes_total", labels)
        return value or 0.0

    leader = declared(SlowLeader(commit_s=0.01), "metered")
    pipeline = PutPipeline(leader.propose)
    for n in range(3):
        pipeline.put("metered", row(b"%d" % n))
    pipeline.put("metered", ops.put_row(b"x", 10, None, 0.0, None, ""))  # refused: priority
    pipeline.flush(timeout=5)
    assert (sample("metered", "queued"), sample("metered", "failed")) == (3.0, 1.0)
    pipeline.close(timeout=1)

    errors = iter([OutcomeUnknown("leader lost mid-commit")])
    gate = threading.Event()

    def propose(body: bytes) -> None:
        if gate.is_set():
            time.sleep(10)  # never answers before the close below
        gate.set()
        raise next(errors)

    stuck = PutPipeline(propose)
    stuck.put("metered-2", row(b"a"))
    stuck.flush(timeout=5)
    stuck.put("metered-2", row(b"b"))  # taken by the sender, which then hangs
    time.sleep(0.1)
    stuck.put("metered-2", row(b"c"))  # still waiting when the pipeline closes
    stuck.close(timeout=0.2)
    assert sample("metered-2", "unknown") == 1.0 and sample("metered-2", "lost") == 1.0
