"""The membership runbooks of ``docs/deployment.md``, run as written against real node processes.

Replace: under a steady write load, a follower is killed -9, a new machine joins (``--join``,
empty data dir) and ``raft_members replace`` swaps it in; then one of the original nodes is
killed -9 too, and the cluster keeps committing. Every acknowledged write is then read back
through linearizable reads, and the change history shows each one applied exactly once.

Scale: two machines join, ``raft_members add`` makes them voters (3 -> 5), ``remove`` takes them
out again (5 -> 3), and the cluster still commits.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coordination.client import Coordinator
from coordination.primitives import commands
from raft_node.client import RaftError
from raft_node.testing.launcher import LocalCluster

pytestmark = pytest.mark.realprocess

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "coordination.primitives.machine.CoordinationMachine"


def runbook(name: str) -> str:
    """The ``sh`` block after ``<!-- runbook:NAME -->`` in docs/deployment.md."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    found = re.search(rf"<!-- runbook:{name} -->\n```sh\n(.*?)```", text, re.S)
    assert found, f"runbook {name} not found in docs/deployment.md"
    return found.group(1)


def _address(cluster: LocalCluster, node: str) -> str:
    host, port = cluster.addresses[node]
    return f"{host}:{port}"


def run_runbook(name: str, cluster: LocalCluster, members: list[str], **variables: str) -> str:
    """Run the block with bash as an operator would, from the project directory, with the
    cluster's settings in the environment; its output (it must succeed)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RAFTSYNC_CLUSTER": ",".join(f"{n}={_address(cluster, n)}" for n in members),
        "RAFTSYNC_CLUSTER_SECRET": cluster.secret,
        "RAFTSYNC_DEBUG": "0",
        **variables,
    }
    done = subprocess.run(
        ["bash", "-e", "-c", runbook(name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"runbook {name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


class WriteLoad(threading.Thread):
    """One client writing ``load:<i>`` keys back to back, remembering what was acknowledged
    and when."""

    def __init__(self, coord: Coordinator) -> None:
        super().__init__(daemon=True)
        self.coord = coord
        self.acked: dict[str, bytes] = {}
        self.unknown: set[str] = set()  # raised: may or may not have happened
        self.ack_times: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            key, value = f"load:{i}", str(i).encode()
            try:
                self.coord.propose(commands.cache_set(key, value, None))
                self.acked[key] = value
                self.ack_times.append(time.monotonic())
            except RaftError:
                self.unknown.add(key)
            i += 1

    def acks_after(self, moment: float) -> int:
        return sum(1 for t in self.ack_times if t > moment)

    def longest_gap(self) -> float:
        times = self.ack_times
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def _wait_acks(load: WriteLoad, after: float, count: int = 20, timeout: float = 30.0) -> float:
    """Seconds until ``count`` writes were acknowledged after ``after``."""
    deadline = time.monotonic() + timeout
    while load.acks_after(after) < count:
        assert time.monotonic() < deadline, f"no {count} writes committed within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - after


def _puts_per_key(coord: Coordinator) -> dict[str, int]:
    """How many times each ``load:`` key was put, from the change history (linearizable)."""
    counts: dict[str, int] = {}
    after = 0
    while True:
        page = coord.query(commands.history_since("load:", False, after, 10_000))
        for event in page["events"]:
            if event[4] == "put":
                counts[event[5]] = counts.get(event[5], 0) + 1
        if not page["more"]:
            return counts
        after = page["events"][-1][0]


@pytest.fixture
def cluster(tmp_path: Path):
    c = LocalCluster(tmp_path, ROOT / "manage.py", settings={"STATE_MACHINE": MACHINE})
    c.start()
    c.wait_for_leader(timeout=60)
    yield c
    c.stop()


def test_replace_a_dead_follower_under_load_then_lose_an_original(cluster: LocalCluster):
    originals = list(cluster.ids)
    cluster.add_machine("n4")
    start_line = runbook("replace-start")
    for flag in ("--id", "--listen", "--join", "--data-dir"):
        assert flag in start_line  # the launcher starts n4 with these same flags
    coord = Coordinator([cluster.addresses[n] for n in cluster.ids], cluster.secret, timeout=15)
    load = WriteLoad(coord)
    load.start()
    _wait_acks(load, time.monotonic() - 60, count=50)

    leader = cluster.leader()
    dead = next(n for n in originals if n != leader)
    killed_at = time.monotonic()
    cluster.kill(dead)
    after_kill = _wait_acks(load, killed_at)

    cluster.start_node("n4")  # run_raft_node --id n4 --listen ... --join <member> --data-dir ...
    live = [n for n in originals if n != dead]
    began = time.monotonic()
    output = run_runbook(
        "replace", cluster, live, OLD=dead, NEW="n4", NEW_ADDR=_address(cluster, "n4")
    )
    replaced_in = time.monotonic() - began
    assert "caught up" in output and f"removing {dead}" in output
    membership = coord.new_client().members("list")
    assert sorted(membership["voters"]) == sorted([*live, "n4"])

    second = cluster.leader(among=live) or live[0]  # the harsher case: the leader, if original
    second_killed_at = time.monotonic()
    cluster.kill(second)
    after_second = _wait_acks(load, second_killed_at)
    time.sleep(1.0)
    load.halt.set()
    load.join(30)

    survivors = [n for n in [*live, "n4"] if n != second]
    reader = Coordinator([cluster.addresses[n] for n in survivors], cluster.secret, timeout=15)
    keys = sorted(load.acked)
    for lo in range(0, len(keys), 500):
        batch = keys[lo : lo + 500]
        found = reader.query(commands.cache_get_many(batch))
        for key, record in zip(batch, found, strict=True):
            assert record is not None and record["value"] == load.acked[key], key
    puts = _puts_per_key(reader)
    assert all(puts.get(key) == 1 for key in keys)  # each acknowledged write applied once
    assert all(count == 1 for count in puts.values())
    assert set(puts) <= set(load.acked) | load.unknown
    print(
        f"\nwrites acked={len(keys)} unknown={len(load.unknown)}; follower {dead} killed: "
        f"writes again after {after_kill:.2f} s; replace {dead} -> n4: {replaced_in:.1f} s; "
        f"original {second} killed: writes again after {after_second:.2f} s; "
        f"longest write gap {load.longest_gap():.2f} s"
    )


def test_scale_from_three_to_five_voters_and_back(cluster: LocalCluster):
    originals = list(cluster.ids)
    for node in ("n4", "n5"):
        cluster.add_machine(node)
        cluster.start_node(node)
    began = time.monotonic()
    output = run_runbook(
        "scale",
        cluster,
        originals,
        N4_ADDR=_address(cluster, "n4"),
        N5_ADDR=_address(cluster, "n5"),
    )
    took = time.monotonic() - began
    assert output.count("caught up") == 2 and "promoting n5 to voter" in output
    assert re.search(r"^n5 +voter", output, re.M)  # the table printed at five voters
    last_table = output.rsplit("member ", 1)[1]
    assert "n4" not in last_table and "n5" not in last_table
    coord = Coordinator([cluster.addresses[n] for n in originals], cluster.secret, timeout=15)
    assert sorted(coord.new_client().members("list")["voters"]) == originals
    coord.propose(commands.cache_set("after-scaling", b"ok", None))
    print(f"\nscale 3 -> 5 -> 3 in {took:.1f} s")
