"""Wall-clock jumps on the leader, forward and back, with real node processes whose wall clocks
libfaketime moves (``LD_PRELOAD``, an offset file re-read every second; the monotonic clock is
left alone). Leases and TTLs run on the log clock, which a leader advances by its monotonic
clock: a day's jump forward expires no session, lock or cache entry early, and a day's jump back
freezes none of them (a short TTL still expires on time).

Skipped where libfaketime is not installed (``apt-get install faketime``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coordination.client import Coordinator
from coordination.primitives import commands
from raft_node.testing.launcher import LocalCluster

pytestmark = pytest.mark.realprocess

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "coordination.primitives.machine.CoordinationMachine"
LIBFAKETIME = next(
    (
        p
        for p in (
            Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
            Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"),
        )
        if p.exists()
    ),
    None,
)


@pytest.fixture
def cluster(tmp_path: Path):
    if LIBFAKETIME is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    c = LocalCluster(tmp_path, ROOT / "manage.py", settings={"STATE_MACHINE": MACHINE})
    for node in c.ids:
        offset = tmp_path / f"{node}.faketime"
        offset.write_text("+0\n")
        c.node_env[node] = {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(offset),
            "FAKETIME_CACHE_DURATION": "1",
            "DONT_FAKE_MONOTONIC": "1",
        }
    c.start()
    c.wait_for_leader(timeout=60)
    yield c
    c.stop()


def _jump(cluster: LocalCluster, node: str, offset: str) -> None:
    (cluster.base_dir / f"{node}.faketime").write_text(offset + "\n")
    time.sleep(1.5)  # libfaketime re-reads the file once a second


def test_the_leaders_wall_clock_jumps_a_day_forward_then_back(cluster: LocalCluster):
    leader = cluster.leader()
    assert leader is not None
    coord = Coordinator(list(cluster.addresses.values()), cluster.secret, timeout=15)
    session = coord.session(ttl=5.0)
    lock = coord.lock("clock/held", session=session)
    assert lock.acquire(wait=5)
    coord.propose(commands.cache_set("clock/ttl-60s", b"v", 60_000))

    _jump(cluster, leader, "+1d")
    coord.propose(commands.cache_set("clock/after-forward", b"v", 60_000))  # stamped after it
    time.sleep(2.0)
    assert cluster.leader() == leader  # the jump itself changes nothing in the protocol
    assert coord.check_token("clock/held", lock.token)  # the lock (and its session) lives
    for key in ("clock/ttl-60s", "clock/after-forward"):
        assert coord.query(commands.cache_get(key)) is not None, key

    _jump(cluster, leader, "-1d")
    coord.propose(commands.cache_set("clock/ttl-2s", b"v", 2_000))
    deadline = time.monotonic() + 10
    while coord.query(commands.cache_get("clock/ttl-2s")) is not None:
        assert time.monotonic() < deadline, "a 2 s TTL did not expire with the clock a day back"
        time.sleep(0.2)
    assert coord.check_token("clock/held", lock.token)
    lock.release()
    session.close()
