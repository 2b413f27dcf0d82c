"""Two-way and bridge partitions of a real 3-node cluster under a recorded client workload
(issue 15, item 4), checked with the project's linearizability checker (``chaos_workload``).

How the partitions are made, and why that is the partition the issue asks for: every peer link
``src -> dst`` of the cluster runs through a ``FaultProxy`` (``LocalCluster(proxied=True)``), and
cutting a link there is what an iptables DROP between two network namespaces does to Raft:
open connections die, new ones get silence (no RST, so the dialler waits out its timeouts), and
nothing — votes, appends, heartbeats, snapshots, forwarded client requests — crosses it. A
two-way cut blocks both ``a -> b`` and ``b -> a``. What the proxy does not cut is the clients'
path: a client reaches every node directly, as one sitting on the bridge would. So a client
may land on a minority node: its request must then fail or time out (it cannot commit, and the
follower's forward to the leader crosses a cut link), never succeed wrongly — which is the
stronger test. Namespaces would also need root, veth pairs and cleanup on every CI runner, for
no difference the nodes can observe.

- Two-way: rounds of ``{leader} | {others}`` and ``{a} | {b, c}`` (``a`` random), both
  directions cut, then heal.
- Bridge: A-B and B-C up, A-C cut both ways (B is the bridge: the leader in odd rounds, a
  follower in even ones). Raft must keep one leader per term, and the majority (the whole
  cluster, reachable through B) must keep serving.

Short forms run in CI (about 18 s each); the long forms (``slow``) run many more rounds.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from chaos_workload import (
    ChaosClient,
    History,
    LeaderWatch,
    drain,
    final_reads,
    prepare,
    verdict,
)

from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess, pytest.mark.chaos]

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "coordination.primitives.machine.CoordinationMachine"
CLIENTS = 4
CUT_S, HEALED_S = 1.5, 0.8

ROUNDS = [pytest.param(4, id="short"), pytest.param(60, id="long", marks=pytest.mark.slow)]


@pytest.fixture
def cluster(tmp_path: Path):
    settings = {"STATE_MACHINE": MACHINE}
    c = LocalCluster(tmp_path, ROOT / "manage.py", proxied=True, settings=settings)
    c.start()
    c.wait_for_leader(timeout=60)
    yield c
    c.stop()


def two_way(cluster: LocalCluster, rng: random.Random, i: int) -> str:
    """Odd rounds isolate the current leader, even rounds a random node."""
    leader = cluster.leader()
    alone = leader if i % 2 and leader else rng.choice(cluster.ids)
    others = [n for n in cluster.ids if n != alone]
    assert cluster.proxy is not None
    cluster.proxy.partition([alone], others)
    return f"{alone}|{','.join(others)}" + (" (leader)" if alone == leader else "")


def bridge(cluster: LocalCluster, rng: random.Random, i: int) -> str:
    """The bridge B is the leader in odd rounds; in even ones a follower, so the leader is at
    one cut end and the other end hears no leader (its elections must not disrupt)."""
    leader = cluster.leader()
    followers = [n for n in cluster.ids if n != leader]
    b = leader if i % 2 and leader else rng.choice(followers)
    a, c = (n for n in cluster.ids if n != b)
    assert cluster.proxy is not None
    cluster.proxy.partition([a], [c])
    return f"{a}-x-{c} via {b}" + (" (bridge leads)" if b == leader else "")


def run_chaos(cluster: LocalCluster, fault, rounds: int) -> tuple[dict, list, LeaderWatch]:
    """Clients and a leader watch run while the nemesis applies ``rounds`` faults; then heal,
    stop the clients, read every key, drain the queue and check."""
    coord = prepare(cluster)
    history, halt = History(), threading.Event()
    clients = [ChaosClient(f"c{i}", cluster, history, halt) for i in range(CLIENTS)]
    watch = LeaderWatch(cluster)
    watch.start()
    for client in clients:
        client.start()
    rng = random.Random(f"{fault.__name__}-{rounds}")
    windows = []  # (description, start, end) of each cut
    time.sleep(HEALED_S)
    for i in range(rounds):
        start = time.monotonic()
        what = fault(cluster, rng, i)
        time.sleep(CUT_S)
        cluster.proxy.heal()
        windows.append((what, start, time.monotonic()))
        time.sleep(HEALED_S)
    cluster.wait_for_leader(timeout=30)
    halt.set()
    for client in clients:
        client.join(60)
        assert not client.is_alive(), f"{client.name} is stuck"
    watch.stop()
    cluster.wait_converged()
    finals = final_reads(coord, history)
    drained = drain(coord, history)
    coord.close()
    figures = verdict(history, finals)
    figures["drained"] = drained
    figures["partitions"] = len(windows)
    figures["leader_changes"] = max(len(watch.sequence) - 1, 0)
    report(fault.__name__, figures, windows, watch)
    return figures, windows, watch


def report(name: str, f: dict, windows: list, watch: LeaderWatch) -> None:
    print(f"\n== {name}: {f['partitions']} partitions, {f['leader_changes']} leader changes")
    for what, start, end in windows:
        acked = sum(start < t < end for t in f["ok_writes_at"])
        print(f"   cut {what} for {end - start:.1f}s: {acked} writes acked during it")
    print(f"   leaders by term: {watch.sequence}")
    print(f"   outcomes: {f['outcomes']}")
    print(f"   register: {f['register_ops']} ops -> {f['register_check'].explanation}")
    print(f"   lock: {f['lock_ops']} ops, {f['grants']} grants -> {f['lock_check'].explanation}")
    print(f"   tokens monotonic: {f['tokens_monotonic']}; lost acked writes: {f['lost_writes']}")
    print(
        f"   queue: {f['acked_puts']} acked puts ({f['unknown_puts']} unknown), "
        f"{f['delivered']} deliveries ({f['redelivered']} redeliveries, {f['drained']} at the "
        f"drain), lost acked puts: {len(f['lost_puts'])}"
    )


def assert_safe(f: dict, watch: LeaderWatch) -> None:
    assert f["register_check"].ok is True, f["register_check"].explanation
    assert f["lock_check"].ok is True, f["lock_check"].explanation
    assert f["tokens_monotonic"]
    assert not f["lost_writes"], f["lost_writes"]
    assert not f["lost_puts"], f["lost_puts"][:10]
    two = {term: nodes for term, nodes in watch.leaders.items() if len(nodes) > 1}
    assert not two, f"two leaders in one term: {two}"
    assert f["register_ops"] > 50 and f["grants"] > 0 and f["acked_puts"] > 10  # it did work


@pytest.mark.parametrize("rounds", ROUNDS)
def test_two_way_partitions_keep_histories_linearizable(cluster: LocalCluster, rounds: int):
    figures, _, watch = run_chaos(cluster, two_way, rounds)
    assert_safe(figures, watch)
    assert figures["leader_changes"] >= 1  # isolating the leader did depose it


@pytest.mark.parametrize("rounds", ROUNDS)
def test_bridge_partitions_keep_one_leader_and_serve(cluster: LocalCluster, rounds: int):
    figures, windows, watch = run_chaos(cluster, bridge, rounds)
    assert_safe(figures, watch)
    # Available through the bridge: writes complete during (nearly) every cut.
    served = [
        any(start + 0.5 < t < end for t in figures["ok_writes_at"]) for _, start, end in windows
    ]
    print(f"   cuts with acked writes after their first 0.5 s: {sum(served)}/{len(served)}")
    assert sum(served) >= len(served) - 1, served
