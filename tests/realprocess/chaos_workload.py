"""A Jepsen-style workload for real-process chaos tests: client threads doing register, lock and
queue operations through ``Coordinator``, each op recorded with its wall-clock (monotonic) call
and return times and its outcome, then checked with the project's own linearizability checker
(``raft_node.sim.linearizability``) and models (``raft_node.sim.models``).

Why real times and unknown outcomes: a real client cannot tell when its write took effect, only
that it did between call and return. An op that times out may or may not have happened, so it is
recorded with ``ret=None`` (the checker lets it take effect at any time after its call, or
never). Lock and queue writes whose outcome is unknown are resolved afterwards
(``coord.resolve``, exactly once underneath): a resolved op is recorded as returning when the
resolution returned, which is sound because its effect happened before that.

What is checked (``Workload.verdict``):
- registers (``cache.set`` / linearizable ``cache.get``, unique values): linearizable per key,
  including a final read of every key after healing, and no acked write lost (the final value is
  not from a write that completed before another acked write began);
- the lock (try-acquire with wait 0, ``check_token`` of the granted token, release): the history
  is linearizable against ``FencingLockModel``, and granted tokens strictly increase in order;
- the queue: every acked put is delivered at least once (during the run or when draining at the
  end); redeliveries are counted from ``delivery_count``.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from coordination.client import Coordinator
from coordination.client import operations as ops
from coordination.exceptions import NotHolder, OutcomeUnknown, RaftError
from raft_node.sim.linearizability import Operation, check_history, check_operations
from raft_node.sim.models import FencingLockModel, RegisterModel
from raft_node.testing.launcher import LocalCluster

SESSION_TTL = 600.0  # no session expires during a run: expiry would be a release not recorded
RESOLVE_FOR = 20.0  # how long a client keeps trying to resolve an unknown lock or queue write


@dataclass
class History:
    """Everything the clients saw, shared by the threads (appends are atomic under the GIL).
    ``ns`` names this run's keys, lock and queue, so runs can share a cluster."""

    ns: str
    register: list[Operation] = field(default_factory=list)
    lock: list[Operation] = field(default_factory=list)
    grants: list[tuple[float, int]] = field(default_factory=list)  # (ret, token)
    acked_puts: set[bytes] = field(default_factory=set)
    unknown_puts: set[bytes] = field(default_factory=set)
    delivered: Counter[bytes] = field(default_factory=Counter)
    redelivered: int = 0  # deliveries with delivery_count > 1
    outcomes: Counter[str] = field(default_factory=Counter)  # ok / failed / unknown / resolved
    ok_writes_at: list[float] = field(default_factory=list)  # completion times of ok writes

    @property
    def keys(self) -> list[str]:
        return [f"{self.ns}/k{i}" for i in range(3)]

    @property
    def lock_name(self) -> str:
        return f"{self.ns}/lock"

    @property
    def queue(self) -> str:
        return f"q-{self.ns}"


class ChaosClient(threading.Thread):
    """One client: a coordinator of its own, one session, a random mix of ops until halted."""

    def __init__(
        self,
        name: str,
        cluster: LocalCluster,
        history: History,
        halt: threading.Event,
        nodes: list[str] | None = None,
        timeout: float = 2.0,
    ) -> None:
        super().__init__(daemon=True, name=name)
        addresses = [cluster.addresses[n] for n in nodes or cluster.ids]
        self.coord = Coordinator(addresses, cluster.secret, timeout=timeout)
        self.history = history
        self.halt = halt
        self.rng = random.Random(name)
        self.token: int | None = None  # the lock token this client holds
        self.lock_in_doubt = False  # an acquire/release never resolved: no more lock ops
        self.puts = 0
        self.session = self._open_session()

    def _open_session(self) -> int:
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.coord.run(ops.session_open(SESSION_TTL, self.name))["session"]
            except RaftError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                roll = self.rng.random()
                if roll < 0.5:
                    self._register()
                elif roll < 0.7:
                    self._lock()
                else:
                    self._queue()
            if self.token is not None and not self.lock_in_doubt:
                self._lock()  # release what we hold: a last release in the history
        finally:
            # Closing the session hands back its unacked messages now, not when their leases
            # lapse (the drain is quicker); the history has ended, so nothing else depends on it.
            with contextlib.suppress(RaftError):
                self.coord.run(ops.session_close(self.session))
            self.coord.close()

    # -- outcome recording -------------------------------------------------------------------

    def _call(self, op: ops.Operation[Any], resolve: bool) -> tuple[str, Any, float | None]:
        """("ok", result, ret) | ("failed", error, ret) | ("unknown", error, None).

        ``resolve``: on an unknown outcome, keep asking the cluster what happened; the answer
        then counts as the op's return at the time it arrived."""
        try:
            result = self.coord.run(op)
            self.history.outcomes["ok"] += 1
            return "ok", result, time.monotonic()
        except RaftError as exc:
            if exc.definite:
                self.history.outcomes["failed"] += 1
                return "failed", exc, time.monotonic()
            self.history.outcomes["unknown"] += 1
            if not (resolve and isinstance(exc, OutcomeUnknown)):
                return "unknown", exc, None
            return self._resolve(exc)

    def _resolve(self, unknown: OutcomeUnknown) -> tuple[str, Any, float | None]:
        deadline = time.monotonic() + RESOLVE_FOR
        while time.monotonic() < deadline:
            try:
                result = self.coord.resolve(unknown, timeout=2.0)
                self.history.outcomes["resolved"] += 1
                return "ok", result, time.monotonic()
            except RaftError as exc:
                if exc.definite:
                    self.history.outcomes["resolved"] += 1
                    return "failed", exc, time.monotonic()
                time.sleep(0.2)
        return "unknown", unknown, None

    # -- the three workloads -----------------------------------------------------------------

    def _register(self) -> None:
        key = self.rng.choice(self.history.keys)
        call = time.monotonic()
        if self.rng.random() < 0.5:
            value = f"{self.name}-{call:.6f}".encode()
            status, _, ret = self._call(ops.cache_set(key, value), resolve=False)
            if status != "failed":  # a definite failure did not happen: not in the history
                self._record_write(key, value, call, ret)
            return
        status, record, ret = self._call(ops.cache_get(key), resolve=False)
        if status == "ok":  # a failed or timed-out read changed nothing: leave it out
            value = None if record is None else record["value"]
            self.history.register.append(Operation(self.name, key, "read", None, value, call, ret))

    def _record_write(self, key: str, value: bytes, call: float, ret: float | None) -> None:
        self.history.register.append(Operation(self.name, key, "write", value, None, call, ret))
        if ret is not None:
            self.history.ok_writes_at.append(ret)

    def _lock(self) -> None:
        if self.lock_in_doubt:
            return
        if self.token is None:
            self._acquire()
        else:
            self._check_and_release()

    def _acquire(self) -> None:
        call = time.monotonic()
        op = ops.lock_acquire(self.session, self.history.lock_name, wait=0.0)
        status, result, ret = self._call(op, resolve=True)
        if status == "failed":
            return
        token = result["token"] if status == "ok" and result["acquired"] else None
        self.history.lock.append(Operation(self.name, "lock", "acquire", None, token, call, ret))
        if status == "unknown":
            self.lock_in_doubt = True
        elif token is not None:
            self.token = token
            self.history.grants.append((ret, token))

    def _check_and_release(self) -> None:
        token = self.token
        call = time.monotonic()
        status, held, ret = self._call(
            ops.lock_check_token(self.history.lock_name, token), resolve=False
        )
        if status == "ok":
            self.history.lock.append(Operation(self.name, "lock", "check", token, held, call, ret))
        call = time.monotonic()
        status, result, ret = self._call(
            ops.lock_release(self.session, self.history.lock_name), resolve=True
        )
        if status == "failed" and not isinstance(result, NotHolder):
            return  # did not happen (no leader...): try again next turn
        released = status == "ok" and bool(result["released"])
        self.history.lock.append(
            Operation(self.name, "lock", "release", token, released, call, ret)
        )
        if status == "unknown":
            self.lock_in_doubt = True
        self.token = None

    def _queue(self) -> None:
        if self.rng.random() < 0.5:
            self.puts += 1
            payload = f"{self.name}-{self.puts}".encode()
            status, _, ret = self._call(ops.queue_put(self.history.queue, payload), resolve=True)
            if status == "ok":
                self.history.acked_puts.add(payload)
                self.history.ok_writes_at.append(ret)
            elif status == "unknown":
                self.history.unknown_puts.add(payload)
            return
        status, row, _ = self._call(
            ops.queue_get(self.session, self.history.queue, visibility=3.0), False
        )
        if status == "ok" and row is not None:
            take(self.history, row)
            self._call(ops.queue_ack(self.session, self.history.queue, row["id"]), resolve=False)


def take(history: History, row: dict[str, Any]) -> None:
    history.delivered[row["payload"]] += 1
    history.redelivered += row["delivery_count"] > 1


_BECAME_LEADER = re.compile(r"^(\S+ \S+) .*event=role_change node=(\w+) role=LEADER .*term=(\d+)")


def leaderships(cluster: LocalCluster) -> list[tuple[str, int, str]]:
    """Every (log time, term, node) that became leader, in time order, from the nodes' own
    logs: a complete record, where polling ``status`` could miss a short-lived leader."""
    seen = []
    for node in cluster.ids:
        for line in cluster.log_path(node).read_text(errors="replace").splitlines():
            if m := _BECAME_LEADER.match(line):
                seen.append((m[1], int(m[3]), m[2]))
    return sorted(seen)


def log_time() -> str:
    """Now, as the nodes' log lines stamp it (to compare with ``leaderships``)."""
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


def log_instant(line: str) -> float:
    """The ``time.monotonic()`` instant just after a node's log line was stamped. The stamp is
    wall-clock time cut to the millisecond, so one millisecond is added: whatever a client
    started after the returned instant, it started after the line was written."""
    stamp, millis = line[:23].split(",")
    wall = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000 + 0.001
    return time.monotonic() - (time.time() - wall)


def prepare(cluster: LocalCluster, history: History) -> Coordinator:
    """A coordinator for setup and final checks; the queue allows many redeliveries, so no
    message dead-letters during a run (a dead letter would look lost to the drain)."""
    coord = Coordinator(list(cluster.addresses.values()), cluster.secret, timeout=5.0)
    coord.run(ops.queue_declare(history.queue, max_deliveries=1000))
    return coord


def final_reads(coord: Coordinator, history: History) -> dict[str, bytes | None]:
    """A linearizable read of every key after healing, added to the register history."""
    values = {}
    for key in history.keys:
        call = time.monotonic()
        record = coord.run(ops.cache_get(key))
        values[key] = None if record is None else record["value"]
        history.register.append(
            Operation("final", key, "read", None, values[key], call, time.monotonic())
        )
    return values


def drain(coord: Coordinator, history: History) -> dict[str, Any]:
    """Take every message still queued, including those leased to a client and never acked
    (they come back when their 3 s lease runs out); the queue's stats once it is empty."""
    session = coord.run(ops.session_open(SESSION_TTL, "drain"))["session"]
    deadline = time.monotonic() + 30
    drained = 0
    while time.monotonic() < deadline:
        row = coord.run(ops.queue_get(session, history.queue, visibility=600.0))
        if row is not None:
            take(history, row)
            coord.run(ops.queue_ack(session, history.queue, row["id"]))
            drained += 1
            continue
        stats = coord.run(ops.queue_stats(history.queue))
        if stats["depth"] == 0:
            return {**stats, "drained": drained}
        time.sleep(0.2)  # leased elsewhere: wait for the lease to lapse
    raise AssertionError(f"queue not drained in 30 s: {coord.run(ops.queue_stats(history.queue))}")


def lost_writes(history: History, finals: dict[str, bytes | None]) -> list[str]:
    """Acked writes the final value contradicts: the final value comes from a write that
    returned before the acked write was called (so the acked one must have come later)."""
    lost = []
    for key, final in finals.items():
        writes = [op for op in history.register if op.key == key and op.kind == "write"]
        acked = [op for op in writes if op.ret is not None]
        source = next((op for op in writes if op.input == final), None)
        if final is None:
            lost += [f"{key}: {op.describe()} (final value empty)" for op in acked]
        elif source is None:
            lost.append(f"{key}: final value {final!r} was never written")
        elif source.ret is not None:
            lost += [f"{key}: {op.describe()}" for op in acked if op.call > source.ret]
    return lost


def verdict(history: History, finals: dict[str, bytes | None]) -> dict[str, Any]:
    """Every check's figures, for printing and asserting."""
    register = check_operations(history.register, RegisterModel())
    lock = check_history(history.lock, FencingLockModel())
    tokens = [token for _, token in sorted(history.grants)]
    lost_puts = history.acked_puts - set(history.delivered)
    return {
        "register_ops": len(history.register),
        "register_check": register,
        "lock_ops": len(history.lock),
        "lock_check": lock,
        "grants": len(tokens),
        "tokens_monotonic": all(a < b for a, b in itertools.pairwise(tokens)),
        "lost_writes": lost_writes(history, finals),
        "acked_puts": len(history.acked_puts),
        "unknown_puts": len(history.unknown_puts),
        "lost_puts": sorted(lost_puts),
        "delivered": sum(history.delivered.values()),
        "redelivered": history.redelivered,
        "outcomes": dict(history.outcomes),
        "ok_writes_at": history.ok_writes_at,
    }


# -- one recorded run: start the clients, let a nemesis act, then stop and check ------------------


@dataclass
class Recording:
    """A workload running on ``cluster`` (``record``), until ``finish`` stops and checks it."""

    cluster: LocalCluster
    history: History
    coord: Coordinator
    halt: threading.Event
    clients: list[ChaosClient]
    began: str  # the nodes' log time at the start: leader changes after it are this run's


def record(
    cluster: LocalCluster,
    ns: str,
    clients: int = 3,
    confined: Iterable[tuple[str, list[str], float]] = (),
) -> Recording:
    """Start ``clients`` clients that reach every node and follow the leader, plus one per
    ``(name, nodes, timeout)`` in ``confined`` that starts from those nodes only (it still
    follows leader hints: a client inside a partition, not one pinned to a node)."""
    history, halt = History(ns), threading.Event()
    coord = prepare(cluster, history)
    began = log_time()
    started = [ChaosClient(f"c{i + 1}", cluster, history, halt) for i in range(clients)]
    started += [ChaosClient(n, cluster, history, halt, nodes, t) for n, nodes, t in confined]
    for client in started:
        client.start()
    return Recording(cluster, history, coord, halt, started, began)


def finish(rec: Recording) -> dict[str, Any]:
    """Stop the clients once a leader serves, wait until every live node has applied the same
    entries, read every key, drain the queue, and check: the ``verdict`` figures plus the
    drain's, and every leadership (term, node) the nodes' logs record."""
    cluster = rec.cluster
    cluster.wait_for_leader(timeout=30)
    rec.halt.set()
    for client in rec.clients:
        client.join(60)
        assert not client.is_alive(), f"{client.name} is stuck"
    cluster.wait_converged()
    finals = final_reads(rec.coord, rec.history)
    queue = drain(rec.coord, rec.history)
    rec.coord.close()
    figures = verdict(rec.history, finals)
    leaders = leaderships(cluster)
    figures["drained"] = queue["drained"]
    figures["dead_letters"] = queue["dead_letters"]
    figures["leaders"] = [(term, node) for _, term, node in leaders]
    figures["leader_changes"] = sum(at >= rec.began for at, _, _ in leaders)
    return figures


def print_verdict(f: dict[str, Any]) -> None:
    """The checks' figures, one line each (run pytest with ``-s`` to see them)."""
    print(f"   leaders (term, node) since the cluster started: {f['leaders']}")
    print(f"   outcomes: {f['outcomes']}")
    print(f"   register: {f['register_ops']} ops -> {f['register_check'].explanation}")
    print(f"   lock: {f['lock_ops']} ops, {f['grants']} grants -> {f['lock_check'].explanation}")
    lost = f["lost_writes"]
    print(
        f"   tokens monotonic: {f['tokens_monotonic']}; lost acked writes: {len(lost)} {lost[:3]}"
    )
    print(
        f"   queue: {f['acked_puts']} acked puts ({f['unknown_puts']} unknown), "
        f"{f['delivered']} deliveries ({f['redelivered']} redeliveries, {f['drained']} at the "
        f"drain), lost acked puts: {len(f['lost_puts'])}"
    )


def assert_safe(f: dict[str, Any]) -> None:
    """0 linearizability violations (registers, lock), monotonic tokens, 0 acked writes or puts
    lost, none dead-lettered, one leader per term, and enough work done to mean something."""
    assert f["register_check"].ok is True, f["register_check"].explanation
    assert f["lock_check"].ok is True, f["lock_check"].explanation
    assert f["tokens_monotonic"]
    assert not f["lost_writes"], f["lost_writes"]
    assert not f["lost_puts"], f["lost_puts"][:10]
    assert f["dead_letters"] == 0  # none counted lost that were only dead-lettered
    terms = [term for term, _ in f["leaders"]]
    two = [(term, node) for term, node in f["leaders"] if terms.count(term) > 1]
    assert not two, f"two leaders in one term: {two}"
    assert f["register_ops"] > 50 and f["grants"] > 0 and f["acked_puts"] > 10  # it did work
