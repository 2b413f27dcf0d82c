"""A node's log damaged on disk, with real processes: a torn tail (what a crash mid-write leaves)
is repaired on restart and the node catches up; a byte changed in the middle of a segment (what
bit rot or a bad copy leaves) makes the node refuse to start, naming the file and byte offset,
while the other two keep committing."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from coordination.client import Coordinator
from coordination.primitives import commands
from raft_node.storage.durable_format import scan
from raft_node.testing.launcher import LocalCluster

pytestmark = pytest.mark.realprocess

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "coordination.primitives.machine.CoordinationMachine"


def _segment(cluster: LocalCluster, node: str) -> Path:
    segments = sorted((cluster.base_dir / node / "log").glob("*.seg"))
    assert segments, f"{node} has no log segment"
    return segments[-1]


def _log_end(segment: Path) -> int:
    """Where the segment's records end (it may have preallocated zeros after them)."""
    return scan(segment.read_bytes(), segment, tail_ok=True).valid_end


def _write(coord: Coordinator, prefix: str, count: int) -> None:
    for i in range(count):
        coord.propose(commands.cache_set(f"{prefix}:{i}", str(i).encode(), None))


def _caught_up(cluster: LocalCluster, node: str, leader: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        mine, theirs = cluster.status(node), cluster.status(leader)
        if mine and theirs and mine["applied"] >= theirs["commit"]:
            return
        assert time.monotonic() < deadline, f"{node} did not catch up: {mine} vs {theirs}"
        time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path):
    c = LocalCluster(tmp_path, ROOT / "manage.py", settings={"STATE_MACHINE": MACHINE})
    c.start()
    c.wait_for_leader(timeout=60)
    yield c
    c.stop()


def test_a_torn_tail_is_repaired_and_a_corrupt_middle_refuses_to_start(cluster: LocalCluster):
    coord = Coordinator(list(cluster.addresses.values()), cluster.secret, timeout=15)
    _write(coord, "before", 100)
    leader = cluster.leader()
    assert leader is not None
    follower = next(n for n in cluster.ids if n != leader)
    _caught_up(cluster, follower, leader)

    # A torn tail: the start of a record whose body never fully reached the disk (its header,
    # then the first bytes of a msgpack array of 3 with only 2 elements written), right after
    # the last record, in the segment's preallocated zeros.
    cluster.kill(follower)
    segment = _segment(cluster, follower)
    size = _log_end(segment)
    assert segment.stat().st_size > size + 4096 + 8, "the segment is not preallocated"
    with segment.open("r+b") as f:
        f.seek(size)
        f.write((4096).to_bytes(4, "little") + b"\x12\x34\x56\x78" + b"\x93\x01\x02")
    cluster.start_node(follower)
    _write(coord, "after-tail", 50)
    _caught_up(cluster, follower, cluster.leader() or leader)
    log = cluster.log_path(follower).read_text()
    assert re.search(r"truncat|torn", log, re.I), "the repair was not reported"
    assert _log_end(segment) > size  # the torn bytes were cut, the log grew again

    # A changed byte in the middle of the segment: refuse to start, name the file and offset.
    cluster.kill(follower)
    data = bytearray(segment.read_bytes())
    middle = _log_end(segment) // 2
    data[middle] ^= 0xFF
    segment.write_bytes(bytes(data))
    started = len(cluster.log_path(follower).read_text())
    cluster.start_node(follower)
    proc = cluster.procs[follower]
    proc.wait(timeout=60)
    assert proc.returncode != 0
    message = cluster.log_path(follower).read_text()[started:]
    assert segment.name in message and re.search(r"offset \d+", message), message[-2000:]
    _write(coord, "with-two", 20)  # the other two go on
    for key in ("before:99", "after-tail:49", "with-two:19"):
        assert coord.query(commands.cache_get(key)) is not None, key
