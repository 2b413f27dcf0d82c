"""Three real node processes (``manage.py run_raft_node``) on free loopback ports, under real
faults: kill -9, restart, partition through a fault proxy, hostile connections.

Writes are ``incr`` of a key unique to the write, so after recovery each acknowledged write must
read back exactly 1: missing means a lost acknowledged write, 2 means it was applied twice.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from raft_node import kvstore
from raft_node.client import RaftError
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess]

MANAGE = Path(__file__).resolve().parents[2] / "manage.py"


@pytest.fixture
def cluster(tmp_path: Path):
    c = LocalCluster(tmp_path, MANAGE)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def proxied_cluster(tmp_path: Path):
    c = LocalCluster(tmp_path, MANAGE, proxied=True)
    c.start()
    yield c
    c.stop()


class Writer(threading.Thread):
    """Streams unique ``incr`` writes; remembers which ones were acknowledged."""

    def __init__(self, cluster: LocalCluster, prefix: str, timeout: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client(timeout=timeout)
        self.prefix = prefix
        self.acked: list[str] = []
        self.failed = 0
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            key = f"{self.prefix}{i}"
            try:
                self.client.propose(kvstore.incr(key))
                self.acked.append(key)
            except RaftError:
                self.failed += 1
            i += 1
        self.client.close()

    def wait_acked(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` writes are acknowledged in all (the writer is really writing)."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert self.is_alive(), "the writer stopped"
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {count} writes acked"
            time.sleep(0.01)

    def stop(self) -> list[str]:
        self.halt.set()
        self.join(30)
        return self.acked


def assert_each_applied_once(cluster: LocalCluster, keys: list[str], nodes=None) -> None:
    """Every key reads back exactly 1 on every (listed) node, read locally (stale) there."""
    for node in nodes or cluster.ids:
        with cluster.client([node]) as c:
            values = {k: c.read(kvstore.get(k), stale=True) for k in keys}
        bad = {k: v for k, v in values.items() if v != b"1"}
        assert not bad, (
            f"{node}: {len(bad)} acknowledged writes wrong, e.g. {list(bad.items())[:3]}"
        )


def test_leader_elected_and_writes_on_any_node_apply_everywhere(cluster: LocalCluster):
    cluster.wait_for_leader()
    keys = []
    for node in cluster.ids:  # followers forward to the leader
        with cluster.client([node]) as c:
            for i in range(20):
                key = f"{node}-{i}"
                c.propose(kvstore.incr(key))
                keys.append(key)
    cluster.wait_converged()
    assert_each_applied_once(cluster, keys)
    with cluster.client() as c:
        assert c.read(kvstore.get(keys[0])) == b"1"  # linearizable read


def test_kill_leader_during_writes_loses_nothing_acknowledged(cluster: LocalCluster):
    old = cluster.wait_for_leader()
    writer = Writer(cluster, "k-")
    writer.start()
    writer.wait_acked(50)
    cluster.kill(old)
    new = cluster.wait_for_leader(exclude=old)
    assert new != old
    # The survivors saw the dead leader's connections close: they elected without waiting
    # for the election timeout (``Raft.suspect_leader``), and said why.
    seen = [
        n
        for n in cluster.ids
        if n != old and "event=leader_connection_closed" in (cluster.log_path(n).read_text())
    ]
    assert seen, "no survivor logged the closed leader connection"
    writer.wait_acked(len(writer.acked) + 50)  # writes resume under the new leader
    acked = writer.stop()
    cluster.start_node(old)
    cluster.wait_converged()
    assert len(acked) > 50
    assert_each_applied_once(cluster, acked)


def test_node_down_past_compaction_catches_up_by_snapshot(tmp_path: Path):
    with LocalCluster(tmp_path, MANAGE, settings={"SNAPSHOT_EVERY": 200, "SNAPSHOT_KEEP": 20}) as c:
        c.wait_for_leader()
        lagging = next(n for n in c.ids if n != c.leader())
        c.kill(lagging)
        keys = []
        with c.client() as client:
            for i in range(700):
                keys.append(f"s{i}")
                client.propose(kvstore.incr(keys[-1]))
        c.start_node(lagging)
        statuses = c.wait_converged()
        assert statuses[lagging]["snapshot_index"] > 0
        assert "event=snapshot_installed" in c.log_path(lagging).read_text()
        assert_each_applied_once(c, keys, nodes=[lagging])


def test_kill_all_nodes_mid_write_then_restart(cluster: LocalCluster):
    cluster.wait_for_leader()
    writer = Writer(cluster, "all-", timeout=2.0)
    writer.start()
    writer.wait_acked(50)
    for node in cluster.ids:
        cluster.kill(node)
    acked = writer.stop()
    assert acked
    cluster.start()
    cluster.wait_for_leader()
    cluster.wait_converged()
    assert_each_applied_once(cluster, acked)


def test_partitioned_leader_commits_nothing_and_majority_moves_on(proxied_cluster):
    c = proxied_cluster
    old = c.wait_for_leader()
    others = [n for n in c.ids if n != old]
    before = c.status(old)
    c.proxy.partition([old], others)
    new = c.wait_for_leader(among=others)
    with c.client(others) as client:
        for i in range(30):
            client.propose(kvstore.incr(f"p{i}"))
    with c.client([old], timeout=1.0) as client, pytest.raises(RaftError):
        client.propose(kvstore.incr("minority"))
    minority = c.status(old)
    assert minority["commit"] == before["commit"] or minority["term"] > before["term"]
    assert minority["role"] != "leader" or minority["commit"] == before["commit"]
    c.proxy.heal()
    statuses = c.wait_converged()
    assert statuses[new]["role"] == "leader" or c.leader() is not None
    assert len({s["last_index"] for s in statuses.values()}) == 1
    assert_each_applied_once(c, [f"p{i}" for i in range(30)])
    with c.client([old]) as client:
        assert client.read(kvstore.get("minority"), stale=True) in (None, b"1")


def test_hostile_connections_are_rejected_while_serving(cluster: LocalCluster):
    cluster.wait_for_leader()
    target = cluster.addresses[cluster.ids[0]]
    writer = Writer(cluster, "h-")
    writer.start()
    attacks = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage instead of a handshake
        b"\xff\xff\xff\xff" + b"\x00" * 64,  # absurd frame length
        b"\x00\x00\x00\x05\x01\x05abc",  # a truncated AUTH frame with bogus content
    ]
    for payload in attacks * 5:
        with socket.create_connection(target, timeout=2) as s:
            s.sendall(payload)
            s.settimeout(2)
            try:
                while s.recv(4096):
                    pass
            except (TimeoutError, ConnectionError):
                pass
    with pytest.raises(RaftError), cluster.client(timeout=1.0) as bad:
        bad._secret = b"wrong-secret"
        bad.status()
    writer.wait_acked(len(writer.acked) + 20)  # still serving after the attacks
    acked = writer.stop()
    assert writer.failed == 0 and len(acked) > 20
    for node in cluster.ids:
        assert cluster.alive(node)
    log = cluster.log_path(cluster.ids[0]).read_text()
    assert "auth" in log.lower() or "rejected" in log.lower()


def test_sigterm_on_leader_hands_over_and_exits_cleanly(cluster: LocalCluster):
    old = cluster.wait_for_leader()
    with cluster.client() as c:
        c.propose(kvstore.incr("before"))
    cluster.procs[old].send_signal(15)
    assert cluster.procs[old].wait(timeout=15) == 0
    new = cluster.wait_for_leader(exclude=old, timeout=5)
    log = cluster.log_path(old).read_text()
    assert f"event=transfer_on_shutdown node={old} to={new}" in log
    with cluster.client([n for n in cluster.ids if n != old]) as c:
        assert c.read(kvstore.get("before")) == b"1"
