"""``NodeHost`` driven synchronously: ``MemoryStorage``, a list-collecting transport, a hand-set
clock, and messages delivered by the test. No event loop, no sockets: the same class the node
process and the simulator run, checked step by step."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from raft_node.core.fsm import CommandRejected
from raft_node.core.messages import Entry, HardState, Message, Snapshot
from raft_node.core.messages import MessageType as MT
from raft_node.core.raft import Config
from raft_node.host.applier import SYSTEM, decode_command
from raft_node.host.inputs import Clock, HostSettings
from raft_node.host.node_host import NodeHost, ProposalDropped
from raft_node.host.waiters import NOT_LEADER, TIMEOUT, UNAVAILABLE, Wait
from raft_node.kvstore import KVStore, get, incr, put
from raft_node.storage.memory import MemoryStorage

EARLY = {MT.APP, MT.HEARTBEAT, MT.SNAP}


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_000_000
        self.seconds = 100.0

    def clock(self) -> Clock:
        return Clock(wall_ms=lambda: self.ms, monotonic=lambda: self.seconds)


class Journal:
    """One ordered record of what every host did to its disk and network."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self.outbox: list[Message] = []


class RecordingStorage(MemoryStorage):
    def __init__(self, node: str, journal: Journal) -> None:
        super().__init__()
        self.node, self.journal = node, journal

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> None:
        self.journal.events.append(("save", self.node, tuple(e.index for e in entries)))
        super().save(hard_state, entries, snapshot, sync=sync)


class ListTransport:
    def __init__(self, node: str, journal: Journal) -> None:
        self.node, self.journal = node, journal

    def send(self, messages: Sequence[Message]) -> None:
        self.journal.events.append(("send", self.node, tuple(m.type for m in messages)))
        self.journal.outbox.extend(messages)


class Answer(Wait):
    __slots__ = ("got",)

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []

    def done(self, ok: bool, value: Any) -> None:
        self.got.append(("done", (ok, value)))

    def failed(self, reason: str, message: str) -> None:
        self.got.append(("failed", reason))


class Ticking(KVStore):
    """A KV store with a deadline: ``tick`` commands are counted, and move the deadline on
    only when ``advance`` says so; ``grace`` commands are counted too."""

    def __init__(self, deadline: int | None) -> None:
        super().__init__()
        self.deadline = deadline
        self.advance = 0
        self.ticks: list[int] = []
        self.graces: list[int] = []

    def apply(self, index: int, command: bytes, now_ms: int) -> Any:
        if command == b"tick":
            self.ticks.append(index)
            if self.deadline is not None:
                self.deadline += self.advance
            return None
        if command == b"grace":
            self.graces.append(index)
            return None
        return super().apply(index, command, now_ms)

    def next_deadline(self) -> int | None:
        return self.deadline

    def tick_command(self) -> bytes:
        return b"tick"

    def leader_command(self) -> bytes:
        return b"grace"


class Cluster:
    def __init__(self, ids: Sequence[str], machine: Any = KVStore, **settings: Any) -> None:
        self.journal = Journal()
        self.time = FakeClock()
        self.hosts: dict[str, NodeHost] = {}
        for node in ids:
            self.hosts[node] = NodeHost(
                Config(id=node, voters=list(ids), rng=random.Random(node), heartbeat_tick=1),
                machine(),
                RecordingStorage(node, self.journal),
                ListTransport(node, self.journal),
                self.time.clock(),
                settings=HostSettings(**settings),
            )

        self.isolated: set[str] = set()

    def settle(self, hold: Callable[[Message], bool] | None = None) -> list[Message]:
        """Process every host and deliver every message until the network is quiet (messages
        from or to an isolated node are lost); returns the messages ``hold`` kept back."""
        held = []
        for _ in range(1000):
            for host in self.hosts.values():
                host.process()
            if not self.journal.outbox:
                return held
            batch, self.journal.outbox = self.journal.outbox, []
            for m in batch:
                if hold is not None and hold(m):
                    held.append(m)
                elif not {m.frm, m.to} & self.isolated:
                    self.hosts[m.to].step(m)
        raise AssertionError("network did not quiesce")

    def restart(self, node: str, seed: str) -> NodeHost:
        """A new run of ``node`` on its storage (its randomness seeded by ``seed``)."""
        old = self.hosts[node]
        self.hosts[node] = NodeHost(
            Config(id=node, voters=list(self.hosts), rng=random.Random(seed), heartbeat_tick=1),
            type(old.state_machine)(),
            old.storage,
            ListTransport(node, self.journal),
            self.time.clock(),
        )
        return self.hosts[node]

    def tick_until_leader(self, among: Sequence[str]) -> NodeHost:
        for _ in range(200):
            for node in among:
                self.hosts[node].tick()
            self.settle()
            leaders = [self.hosts[n] for n in among if self.hosts[n].is_leader]
            if leaders:
                return leaders[0]
        raise AssertionError(f"no leader among {among}")

    def settle_commits(self) -> None:
        """Settle, then tick the leader and settle again: a commit advance that no new entry
        carried reaches the followers with the leader's next tick."""
        self.settle()
        for host in list(self.hosts.values()):
            if host.is_leader:
                host.tick()
        self.settle()

    def elect(self, node: str) -> NodeHost:
        self.hosts[node].raw.campaign()
        self.settle()
        assert self.hosts[node].is_leader
        return self.hosts[node]


def _system_bodies(host: NodeHost) -> list[bytes]:
    bodies = []
    for e in host.storage.entries:  # type: ignore[attr-defined]
        if e.data and decode_command(e.data)[0] == SYSTEM:
            bodies.append(decode_command(e.data)[3])
    return bodies


# -- the Ready order ---------------------------------------------------------------------------


def test_a_leader_sends_its_appends_before_its_fsync_and_everything_else_after() -> None:
    cluster = Cluster(["n1", "n2", "n3"])
    leader = cluster.elect("n1")
    journal = cluster.journal
    journal.events.clear()
    leader.propose("c", 1, put("k", b"v"))
    leader.process()
    mine = [e for e in journal.events if e[1] == "n1"]
    save = next(i for i, e in enumerate(mine) if e[0] == "save" and e[2])
    early = [i for i, e in enumerate(mine) if e[0] == "send" and set(e[2]) <= EARLY]
    assert early and early[0] < save, mine  # messages_early left before the entry was saved
    assert mine[save][2] == (leader.raw.raft.log.last_index(),)


def test_a_follower_saves_entries_before_it_acknowledges_them() -> None:
    cluster = Cluster(["n1", "n2", "n3"])
    leader = cluster.elect("n1")
    journal = cluster.journal
    journal.events.clear()
    leader.propose("c", 1, put("k", b"v"))
    cluster.settle()
    follower = [e for e in journal.events if e[1] == "n2"]
    save = next(i for i, e in enumerate(follower) if e[0] == "save" and e[2])
    ack = next(i for i, e in enumerate(follower) if e[0] == "send" and MT.APP_RESP in e[2])
    assert save < ack, follower
    assert all(MT.APP_RESP not in e[2] for e in follower[:save] if e[0] == "send")


def test_a_candidate_persists_its_vote_before_asking_for_votes() -> None:
    cluster = Cluster(["n1", "n2", "n3"])
    cluster.hosts["n1"].raw.campaign()
    cluster.settle()
    voter = [e for e in cluster.journal.events if e[1] == "n2"]
    grant = next(i for i, e in enumerate(voter) if e[0] == "send" and MT.VOTE_RESP in e[2])
    assert any(e[0] == "save" for e in voter[:grant])
    assert cluster.hosts["n2"].storage.hard_state.vote == "n1"  # type: ignore[attr-defined]


# -- exactly-once apply and the waiters ---------------------------------------------------------


def test_a_retried_request_is_applied_once_and_both_copies_get_the_first_result() -> None:
    cluster = Cluster(["n1", "n2", "n3"])
    leader = cluster.elect("n1")
    first, retry = Answer(), Answer()
    leader.propose("client", 1, incr("n"), first)
    leader.propose("client", 1, incr("n"), retry)  # the client's retry, same seq
    cluster.settle_commits()
    assert first.got == [("done", (True, 1))]
    assert retry.got == [("done", (True, 1))]
    for host in cluster.hosts.values():  # applied once on every replica
        assert host.state_machine.data["n"] == b"1"
    later = Answer()
    leader.propose("client", 2, incr("n"), later)
    cluster.settle()
    assert later.got == [("done", (True, 2))]


def test_a_rejection_is_an_answer_and_only_the_leader_proposes() -> None:
    cluster = Cluster(["n1", "n2", "n3"])
    leader = cluster.elect("n1")
    wait = Answer()
    leader.propose("client", 1, b"\x93garbage", wait)
    cluster.settle()
    assert wait.got[0][0] == "done" and wait.got[0][1][0] is False
    with pytest.raises(ProposalDropped) as dropped:
        cluster.hosts["n2"].propose("client", 2, put("k", b"v"), Answer())
    assert dropped.value.leader == "n1"


class Validating(KVStore):
    """A KV store whose ``validate`` refuses bodies starting with ``bad`` and raises a bug's
    exception for bodies starting with ``bug``."""

    def __init__(self) -> None:
        super().__init__()
        self.validated: list[bytes] = []

    def validate(self, command: bytes) -> None:
        self.validated.append(command)
        if command.startswith(b"bad"):
            raise CommandRejected("bad_command", "garbage", {"size": len(command)})
        if command.startswith(b"bug"):
            raise RuntimeError("a bug in the check")


def test_a_command_validate_refuses_is_answered_at_once_and_takes_no_entry() -> None:
    cluster = Cluster(["n1", "n2", "n3"], machine=Validating)
    leader = cluster.elect("n1")
    cluster.settle()
    before = leader.raw.raft.log.last_index()
    refused = Answer()
    leader.propose("client", 1, b"bad body", refused)
    assert refused.got == [("done", (False, ("bad_command", "garbage", {"size": 8})))]
    leader.propose("client", 1, b"bad body")  # nobody to answer: nothing happens either
    cluster.settle()
    assert leader.raw.raft.log.last_index() == before  # nothing appended, on any node
    assert {h.raw.raft.log.last_index() for h in cluster.hosts.values()} == {before}
    accepted = Answer()
    leader.propose("client", 2, put("k", b"v"), accepted)  # the client's next request
    cluster.settle()
    assert accepted.got == [("done", (True, before + 1))]  # put answers its index
    assert leader.raw.raft.log.last_index() == before + 1


def test_a_failing_validate_lets_apply_decide_and_followers_do_not_validate() -> None:
    cluster = Cluster(["n1", "n2", "n3"], machine=Validating)
    leader = cluster.elect("n1")
    wait = Answer()
    leader.propose("client", 1, b"bug\x93", wait)  # the hook's bug: proposed all the same
    cluster.settle()
    assert wait.got[0][0] == "done" and wait.got[0][1][0] is False  # apply refused it
    follower = cluster.hosts["n2"]
    with pytest.raises(ProposalDropped):
        follower.propose("client", 2, b"bad body", Answer())  # not the leader: go there
    assert follower.state_machine.validated == []


def test_linearizable_reads_wait_for_the_read_index_and_stale_reads_do_not() -> None:
    cluster = Cluster(["n1", "n2", "n3"])
    leader = cluster.elect("n1")
    leader.propose("c", 1, put("k", b"v"))
    cluster.settle()
    follower = cluster.hosts["n3"]
    read = Answer()
    follower.read(get("k"), read)
    assert read.got == []  # waiting for its ReadIndex round
    cluster.settle()
    assert read.got == [("done", (True, b"v"))]
    assert follower.query(get("k")) == (True, b"v")
    assert follower.query(b"\x91\xa3bad")[0] is False


def test_waits_fail_on_lost_leadership_timeout_and_shutdown() -> None:
    cluster = Cluster(["n1", "n2", "n3"], request_timeout=2.0)
    leader = cluster.elect("n1")
    cluster.isolated.add("n1")
    cut = Answer()
    leader.propose("c", 1, put("k", b"v"), cut)
    new = cluster.tick_until_leader(["n2", "n3"])
    assert cut.got == [] and leader.is_leader  # cut off, n1 does not know yet
    cluster.isolated.clear()
    new.tick()  # its heartbeat tells n1 about the new term
    cluster.settle()
    assert not leader.is_leader
    assert cut.got == [("failed", NOT_LEADER)]

    slow = Answer()
    new.propose("c", 2, put("k", b"w"), slow)  # never processed: stays waiting
    cluster.time.seconds += 1.0
    new.tick()
    assert slow.got == []
    cluster.time.seconds += 1.5
    new.tick()
    assert slow.got == [("failed", TIMEOUT)]

    last = Answer()
    new.propose("c", 3, put("k", b"x"), last)
    new.fail_waiters(UNAVAILABLE, "stopping")
    assert last.got == [("failed", UNAVAILABLE)]
    assert new.waiting == 0


def test_a_read_answer_meant_for_a_previous_run_does_not_serve_a_new_read() -> None:
    """A peer's queue outlives a restart, so a ReadIndex answer to the previous run of a node
    can arrive after it restarted. Read contexts carry a per-run random number: with a plain
    counter, the stale answer matched the new run's first round and served it a read index
    from before the restart (a stale read; found by the simulator once it ran this code)."""
    cluster = Cluster(["n1", "n2", "n3"])
    leader = cluster.elect("n1")
    cluster.hosts["n2"].read(get("k"), Answer())
    stale = cluster.settle(hold=lambda m: m.type == MT.READ_INDEX_RESP and m.to == "n2")
    assert len(stale) == 1
    leader.propose("c", 1, put("k", b"new"))
    cluster.settle()
    follower = cluster.restart("n2", seed="n2, second run")
    leader.tick()  # a heartbeat: the new run learns who leads
    cluster.settle()
    assert follower.leader == "n1"
    read = Answer()
    follower.read(get("k"), read)
    follower.step(stale[0])
    follower.process()
    assert read.got == []  # not taken for this run's answer
    cluster.settle()
    assert read.got == [("done", (True, b"new"))]


def test_no_leader_known_fails_a_read_at_once() -> None:
    host = Cluster(["n1", "n2", "n3"]).hosts["n1"]
    wait = Answer()
    host.read(get("k"), wait)
    assert wait.got == [("failed", NOT_LEADER)]


# -- the tick and grace policy --------------------------------------------------------------------


def test_a_tick_is_proposed_once_the_deadline_passes_and_not_again_until_applied() -> None:
    cluster = Cluster(["n1"], machine=lambda: Ticking(deadline=1_000_500))
    host = cluster.elect("n1")
    machine = host.state_machine
    host.tick()
    host.process()
    assert machine.ticks == []  # the clock (1_000_000) is before the deadline
    cluster.time.seconds += 0.6  # the leader's log clock runs on its monotonic clock
    host.tick()
    host.tick()  # the first tick command is not applied yet: no second one
    host.tick()
    assert _system_bodies(host).count(b"tick") == 0  # proposed, not yet persisted
    host.process()
    assert _system_bodies(host).count(b"tick") == 1
    assert len(machine.ticks) == 1
    host.tick()  # applied, and the deadline has still passed (advance=0): the next one
    host.process()
    assert len(machine.ticks) == 2
    machine.advance = 10_000
    host.tick()
    host.process()
    host.tick()
    host.process()
    assert len(machine.ticks) == 3  # the deadline moved past the clock: quiet again


def test_a_new_leader_proposes_the_grace_command_first_and_followers_do_not() -> None:
    cluster = Cluster(["n1", "n2", "n3"], machine=lambda: Ticking(deadline=None))
    leader = cluster.elect("n1")
    cluster.settle_commits()
    for host in cluster.hosts.values():
        assert len(host.state_machine.graces) == 1  # applied everywhere, proposed once
    assert _system_bodies(leader) == [b"grace"]
    entries = [e for e in leader.storage.entries if e.data]  # type: ignore[attr-defined]
    assert decode_command(entries[0].data)[3] == b"grace"  # first command of the term
    leader.transfer("n2")
    cluster.settle()
    assert cluster.hosts["n2"].is_leader
    assert _system_bodies(cluster.hosts["n2"]) == [b"grace", b"grace"]  # one per new leader


def test_a_state_machine_without_hooks_gets_no_system_commands() -> None:
    cluster = Cluster(["n1"])
    host = cluster.elect("n1")
    cluster.time.seconds += 10**6
    for _ in range(5):
        host.tick()
        host.process()
    assert _system_bodies(host) == []


def test_a_wall_clock_jump_moves_no_deadline_while_a_leader_leads() -> None:
    """The log clock is the wall clock at the election, then the leader's monotonic clock:
    a wall clock stepped a day forward (or back) expires nothing early (or late)."""
    cluster = Cluster(["n1"], machine=lambda: Ticking(deadline=1_000_500))
    host = cluster.elect("n1")
    machine = host.state_machine
    for jump in (86_400_000, -86_400_000):
        cluster.time.ms = 1_000_000 + jump
        host.tick()
        host.process()
        assert machine.ticks == [], jump  # only 0 s of monotonic time passed
    cluster.time.seconds += 0.4
    host.tick()
    host.process()
    assert machine.ticks == []  # 400 ms after the election: before the deadline
    cluster.time.seconds += 0.2
    host.tick()
    host.process()
    assert len(machine.ticks) == 1  # 600 ms: due, whatever the wall clock says


# -- snapshots, events and plugin hooks ---------------------------------------------------------


def test_snapshot_if_due_compacts_storage_and_a_restart_restores_the_state() -> None:
    cluster = Cluster(["n1"], snapshot_every=5, snapshot_keep=1)
    host = cluster.elect("n1")
    for seq in range(1, 8):
        host.propose("c", seq, put(f"k{seq}", b"v"))
        host.process()
    snap = host.snapshot_if_due()
    assert snap is not None and snap.index == host.applied_index
    storage = host.storage
    assert storage.snapshot.index == snap.index  # type: ignore[attr-defined]
    assert storage.first_index() == snap.index  # type: ignore[attr-defined]  (keep=1)
    assert host.snapshot_if_due() is None  # nothing applied since
    again = NodeHost(
        Config(id="n1", voters=["n1"], rng=random.Random(1)),
        KVStore(),
        storage,
        ListTransport("n1", Journal()),
        cluster.time.clock(),
    )
    assert again.state_machine.data == host.state_machine.data
    assert again.applied_index == snap.index


def test_events_reach_subscribers_and_apply_listeners_see_each_batch() -> None:
    class Announcer(KVStore):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[tuple[str, Any]] = []

        def apply(self, index: int, command: bytes, now_ms: int) -> Any:
            result = super().apply(index, command, now_ms)
            self.events.append(("keys", index))
            return result

        def drain_events(self) -> list[tuple[str, Any]]:
            events, self.events = self.events, []
            return events

    cluster = Cluster(["n1"], machine=Announcer)
    host = cluster.elect("n1")
    seen: list[tuple[int, Any]] = []
    applied: list[int] = []
    cancel = host.subscribe("keys", lambda index, payload: seen.append((index, payload)))
    host.apply_listeners.append(applied.append)
    host.propose("c", 1, put("a", b"1"))
    host.process()
    index = host.applied_index
    assert seen == [(index, index)] and applied == [index]
    cancel()
    host.propose("c", 2, put("b", b"1"))
    host.process()
    assert len(seen) == 1 and applied[-1] == host.applied_index


def test_the_core_refusing_a_message_is_the_callers_to_handle() -> None:
    host = Cluster(["n1", "n2", "n3"]).hosts["n1"]
    with pytest.raises(ValueError):
        host.step(Message(type=MT.HUP, frm="n2", to="n1"))  # local types never come from peers


def test_a_rejecting_query_is_not_an_exception() -> None:
    class Strict(KVStore):
        def query(self, query: bytes) -> Any:
            raise CommandRejected("nope", "no queries")

    host = Cluster(["n1"], machine=Strict).elect("n1")
    assert host.query(get("k")) == (False, ("nope", "no queries", {}))
