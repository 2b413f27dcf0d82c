"""Queue subscriptions (``coordination.primitives.queue_consumers``): messages leased to a consumer
with room in the entry that makes them ready, pushed as events on the subscription's stream, the
window, the order, the replay of a resumed stream, snapshots; and the queue model of
``test_queues`` run again with subscriptions in the mix."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule
from search_depth import examples
from test_queues import QueueModel, check_invariants, queue_state

from coordination.primitives import errors, limits
from coordination.primitives.machine import CoordinationMachine
from coordination.primitives.queue_consumers import PUSH_TOPIC, SUBSCRIPTIONS_PER_SESSION
from coordination.primitives.queues import Queues
from raft_node.core.fsm import CommandRejected


class Node:
    """One replica fed by hand, with the events it emits kept per topic."""

    def __init__(self, machine: CoordinationMachine | None = None) -> None:
        self.m = machine or CoordinationMachine()
        self.index, self.now = 0, 1_000
        self.events: list[tuple[int, str, Any]] = []

    @property
    def queues(self) -> Queues:
        part = self.m.part("queues")
        assert isinstance(part, Queues)
        return part

    def do(self, op: str, *args: Any) -> Any:
        self.index += 1
        result = self.m.apply(self.index, msgpack.packb([op, *args], use_bin_type=True), self.now)
        self.events += [(self.index, topic, rows) for topic, rows in self.m.drain_events()]
        return result

    def tick(self, advance_ms: int) -> None:
        self.now += advance_ms
        self.index += 1
        self.m.apply(self.index, self.m.tick_command(), self.now)
        self.events += [(self.index, topic, rows) for topic, rows in self.m.drain_events()]

    def query(self, op: str, *args: Any) -> Any:
        return self.m.query(msgpack.packb([op, *args], use_bin_type=True))

    def session(self) -> int:
        return self.do("session.open", 600_000, "worker")["session"]

    def put(self, name: str, payload: bytes = b"x", priority: int = 0, delay: int = 0) -> int:
        return self.do("queue.put", name, payload, priority, None, delay)["id"]

    def subscribe(
        self,
        sid: int,
        queues: list[str],
        window: int,
        stream: str = "s",
        vis: int | None = None,
        exclusive: bool = False,
    ) -> int:
        args = (sid, stream, queues, window, vis, None, exclusive)
        return self.do("queue.subscribe", *args)["sub"]

    def pushed(self, stream: str = "s") -> list[tuple[int, int, int]]:
        """(entry index, message id, delivery count) of every row pushed on ``stream``, taken."""
        rows = [
            (index, row["id"], row["delivery_count"])
            for index, topic, batch in self.events
            if topic == PUSH_TOPIC + stream
            for row in batch
        ]
        self.events = [e for e in self.events if e[1] != PUSH_TOPIC + stream]
        return rows

    def stats(self, name: str) -> dict[str, Any]:
        return self.query("queue.stats", name)

    def refused(self, code: str, op: str, *args: Any) -> None:
        with pytest.raises(CommandRejected) as info:
            self.do(op, *args)
        assert info.value.code == code, info.value.message


@pytest.fixture
def node() -> Node:
    return Node()


def test_a_put_is_leased_and_pushed_in_its_own_entry(node: Node) -> None:
    sid = node.session()
    sub = node.subscribe(sid, ["jobs"], 4)
    assert node.pushed() == []  # nothing there yet
    mid = node.put("jobs", b"hello")
    assert node.pushed() == [(mid, mid, 1)]  # leased by the put's own entry: no get entry
    stats = node.stats("jobs")
    assert (stats["in_flight"], stats["ready"], stats["subscribers"]) == (1, 0, 1)
    replay = node.query("queue.pushed", "s", 0)
    assert [(r["id"], r["payload"], r["sub"], r["leased_at"]) for r in replay] == [
        (mid, b"hello", sub, mid)
    ]
    assert node.query("queue.pushed", "s", mid) == []  # seen up to the put's index: nothing new
    assert node.query("queue.pushed", "other", 0) == []
    check_invariants(node.queues)


def test_subscribing_takes_the_backlog_up_to_the_window_in_priority_order(node: Node) -> None:
    ids = {p: node.put("jobs", b"p%d" % p, p) for p in (1, 9, 5, 0)}
    sid = node.session()
    node.subscribe(sid, ["jobs"], 3)
    assert [mid for _, mid, _ in node.pushed()] == [ids[9], ids[5], ids[1]]
    assert node.stats("jobs")["ready"] == 1  # the window is full
    node.put("jobs", b"more", 9)
    assert node.pushed() == [] and node.stats("jobs")["ready"] == 2


def test_an_ack_gives_room_back_and_the_next_message_goes_out_in_the_ack_entry(node: Node) -> None:
    sid = node.session()
    node.subscribe(sid, ["jobs"], 2)
    first, second, third, fourth = (node.put("jobs", b"%d" % i) for i in range(4))
    assert [mid for _, mid, _ in node.pushed()] == [first, second]
    node.do("queue.ack", sid, "jobs", first)
    assert node.pushed() == [(node.index, third, 1)]
    node.do("queue.ack_many", sid, "jobs", [second, third])
    assert node.pushed() == [(node.index, fourth, 1)]
    assert node.stats("jobs")["ready"] == 0


def test_subscriptions_of_a_queue_take_turns_and_blocked_gets_come_first(node: Node) -> None:
    a, b, c = node.session(), node.session(), node.session()
    sub_a = node.subscribe(a, ["jobs"], 5, stream="sa")
    sub_b = node.subscribe(b, ["jobs"], 5, stream="sb")
    node.do("queue.declare", "jobs", None, None, None)
    waiting = node.do("queue.get", c, "jobs", 10_000, None)
    ids = [node.put("jobs") for _ in range(5)]
    assert node.m.drain_completions() == [
        (waiting.token, True, node.queues.queues["jobs"].view(ids[0]))
    ]
    assert [mid for _, mid, _ in node.pushed("sa")] == [ids[1], ids[3]]
    assert [mid for _, mid, _ in node.pushed("sb")] == [ids[2], ids[4]]
    assert {row["sub"] for row in node.query("queue.pushed", "sa", 0)} == {sub_a}
    assert {row["sub"] for row in node.query("queue.pushed", "sb", 0)} == {sub_b}


def test_a_subscription_of_several_queues_fills_from_them_in_turn(node: Node) -> None:
    a = [node.put("qa", b"a%d" % i) for i in range(4)]
    b = [node.put("qb", b"b%d" % i) for i in range(4)]
    sid = node.session()
    node.subscribe(sid, ["qa", "qb"], 4)
    assert [mid for _, mid, _ in node.pushed()] == [a[0], b[0], a[1], b[1]]  # b not starved
    node.do("queue.ack_many", sid, "qa", [a[0], a[1]])
    assert [mid for _, mid, _ in node.pushed()] == [a[2], b[2]]


def test_a_nack_requeues_and_delivers_again_with_a_higher_count(node: Node) -> None:
    sid = node.session()
    node.subscribe(sid, ["jobs"], 1)
    mid = node.put("jobs")
    node.pushed()
    node.do("queue.nack", sid, "jobs", mid, True, 0)
    assert node.pushed() == [(node.index, mid, 2)]


def test_a_dead_consumer_s_messages_go_to_another_with_the_count_raised(node: Node) -> None:
    dead, alive = node.session(), node.session()
    node.subscribe(dead, ["jobs"], 2, stream="dead")
    ids = [node.put("jobs") for _ in range(2)]
    node.subscribe(alive, ["jobs"], 5, stream="alive")
    assert node.pushed("alive") == []  # the first holds both
    node.do("session.close", dead)
    assert [(mid, count) for _, mid, count in node.pushed("alive")] == [(ids[0], 2), (ids[1], 2)]
    assert node.stats("jobs")["subscribers"] == 1
    assert node.query("queue.pushed", "dead", 0) == []
    check_invariants(node.queues)


def test_a_lease_with_a_deadline_runs_out_and_comes_back(node: Node) -> None:
    sid = node.session()
    node.subscribe(sid, ["jobs"], 1, vis=1_000)
    mid = node.put("jobs")
    node.pushed()
    node.tick(1_500)
    assert node.pushed() == [(node.index, mid, 2)]  # expired, requeued, and leased again


def test_an_expired_lease_goes_to_another_consumer_before_its_holder(node: Node) -> None:
    stuck, other = node.session(), node.session()
    node.subscribe(stuck, ["jobs"], 5, stream="stuck", vis=1_000)
    mid = node.put("jobs")
    node.subscribe(other, ["jobs"], 5, stream="other")
    assert [m for _, m, _ in node.pushed("stuck")] == [mid]
    node.tick(1_500)  # the stuck consumer still has room, but goes last
    assert node.pushed("stuck") == [] and node.pushed("other") == [(node.index, mid, 2)]


def test_an_exclusive_subscription_takes_its_queues_over(node: Node) -> None:
    """A worker restarted under the same name (same control queue) while its dead
    predecessor's session still lives: the new subscription gets every message at once."""
    dead, alive = node.session(), node.session()
    old = node.subscribe(dead, ["ctl", "jobs"], 5, stream="dead", exclusive=True)
    node.subscribe(alive, ["ctl"], 5, stream="alive", exclusive=True)
    ids = [node.put("ctl") for _ in range(3)]
    assert node.pushed("dead") == []
    assert [m for _, m, _ in node.pushed("alive")] == ids
    assert node.queues.consumers.subs[old].queues == ["jobs"]  # still consumes the rest
    assert node.stats("ctl")["subscribers"] == 1
    shared = node.subscribe(alive, ["jobs"], 5, stream="alive")  # not exclusive: shared
    node.put("jobs")
    assert node.stats("jobs")["subscribers"] == 2 and shared != old


def test_unsubscribe_keeps_the_leases_and_pushes_nothing_more(node: Node) -> None:
    sid, other = node.session(), node.session()
    sub = node.subscribe(sid, ["jobs"], 2)
    mid = node.put("jobs")
    node.pushed()
    assert node.do("queue.unsubscribe", other, sub) is False  # not its subscription
    assert node.do("queue.unsubscribe", sid, sub) is True
    assert node.do("queue.unsubscribe", sid, sub) is False
    node.put("jobs")
    assert node.pushed() == [] and node.stats("jobs")["ready"] == 1
    assert node.do("queue.ack", sid, "jobs", mid) is True  # still leased to the session


def test_changing_a_subscription_resizes_its_window(node: Node) -> None:
    sid = node.session()
    sub = node.subscribe(sid, ["jobs"], 1)
    ids = [node.put("jobs") for _ in range(4)]
    assert len(node.pushed()) == 1
    assert node.do("queue.subscribe", sid, "s", ["jobs"], 3, None, sub, False) == {"sub": sub}
    assert [mid for _, mid, _ in node.pushed()] == ids[1:3]
    node.do("queue.subscribe", sid, "s", ["jobs"], 1, None, sub, False)  # below what it holds
    node.do("queue.ack", sid, "jobs", ids[0])
    assert node.pushed() == []  # still 2 held against a window of 1
    node.do("queue.ack_many", sid, "jobs", ids[1:3])
    assert [mid for _, mid, _ in node.pushed()] == [ids[3]]
    stranger = node.session()
    node.refused(
        errors.UNKNOWN_SUBSCRIPTION, "queue.subscribe", stranger, "s", ["jobs"], 1, None, sub, False
    )


def test_deleting_a_queue_gives_the_room_to_the_other_queues(node: Node) -> None:
    sid = node.session()
    node.subscribe(sid, ["reply", "jobs"], 1)
    node.put("reply")
    job = node.put("jobs")
    node.pushed()
    node.do("queue.delete", "reply")
    assert node.pushed() == [(node.index, job, 1)]
    later = node.put("reply")  # the subscription still names it: a new queue feeds it too
    node.do("queue.ack", sid, "jobs", job)
    assert [mid for _, mid, _ in node.pushed()] == [later]


def test_a_delayed_message_is_pushed_when_it_comes_due(node: Node) -> None:
    sid = node.session()
    node.subscribe(sid, ["jobs"], 1)
    mid = node.put("jobs", delay=2_000)
    node.tick(1_000)
    assert node.pushed() == []
    node.tick(1_500)
    assert node.pushed() == [(node.index, mid, 1)]


def test_bad_arguments_and_limits(node: Node) -> None:
    sid = node.session()

    def refused(code: str, *args: Any) -> None:
        node.refused(code, "queue.subscribe", *args)

    refused(errors.BAD_COMMAND, sid, "s", "jobs", 1, None, None, False)  # not a list
    refused(errors.BAD_COMMAND, sid, "s", [], 1, None, None, False)
    refused(errors.BAD_COMMAND, sid, "s", [f"q{i}" for i in range(33)], 1, None, None, False)
    refused(errors.LIMIT, sid, "s", ["jobs"], 0, None, None, False)
    refused(errors.LIMIT, sid, "s", ["jobs"], limits.BATCH_MAX + 1, None, None, False)
    refused(errors.LIMIT, sid, "x" * 65, ["jobs"], 1, None, None, False)
    refused(errors.BAD_COMMAND, sid, "a b", ["jobs"], 1, None, None, False)
    refused(errors.LIMIT, sid, "s", ["jobs"], 1, 10, None, False)  # visibility below 1 s
    refused(errors.UNKNOWN_SESSION, 999, "s", ["jobs"], 1, None, None, False)
    refused(errors.BAD_COMMAND, sid, "s", ["jobs"], 1, None, None, "yes")
    refused(errors.BAD_COMMAND, sid, "s", ["jobs"], 1, None, None)  # 6 arguments
    for _ in range(SUBSCRIPTIONS_PER_SESSION):
        node.subscribe(sid, ["jobs"], 1)
    refused(errors.LIMIT, sid, "s", ["jobs"], 1, None, None, False)


def test_snapshots_keep_subscriptions_and_older_snapshots_have_none() -> None:
    original = Node()
    sid, other = original.session(), original.session()
    original.subscribe(sid, ["jobs", "mail"], 2, vis=5_000)
    original.subscribe(other, ["jobs"], 1, stream="t")
    for i in range(5):
        original.put("jobs", b"%d" % i, i % 3)
    replica = Node()
    replica.m.restore(original.m.snapshot())
    replica.index, replica.now = original.index, original.now
    assert queue_state(replica.m) == queue_state(original.m)
    for n in (original, replica):
        n.events = []
        n.do("queue.ack_many", sid, "jobs", [1 + 2, 1 + 3])
        n.put("mail")
        n.tick(6_000)  # the leases with a deadline run out
    assert replica.events == original.events and queue_state(replica.m) == queue_state(original.m)
    state = msgpack.unpackb(original.m.snapshot(), raw=False, strict_map_key=False)
    state[1]["queues"] = state[1]["queues"][:2]  # as written before subscriptions existed
    old = CoordinationMachine()
    old.restore(msgpack.packb(state, use_bin_type=True))
    assert old.part("queues").consumers.subs == {}  # type: ignore[attr-defined]


# -- the queue model of test_queues, with subscriptions ----------------------------------------


class SubscriptionModel(QueueModel):
    """``QueueModel`` plus subscriptions. The model does not predict which subscription gets a
    message; it learns it from the machine after each step and checks that the choice was
    allowed: the message was ready, the highest priority ready in its queue, the subscription
    consumes that queue and had room, the lease is the subscription's kind, and exactly those
    leases were pushed on the subscription's stream. Everything else (redelivery, counts,
    dead letters, blocked gets) is the base model's, so subscriptions are checked against all
    of it."""

    def __init__(self) -> None:
        super().__init__()
        self.subs: dict[int, dict[str, Any]] = {}
        self.now_seen = self.node.now

    # leases the base model makes (gets) or ends are not a subscription's
    def lease(self, queue: str, sid: int, visibility: int | None) -> tuple[Any, ...]:
        summary = super().lease(queue, sid, visibility)
        self.msgs[summary[0]].via = None  # type: ignore[attr-defined]
        return summary

    def redeliver(self, m: Any, delay: int) -> None:
        m.via = None
        super().redeliver(m, delay)

    def dead_letter(self, m: Any, reason: str) -> None:
        m.via = None
        super().dead_letter(m, reason)

    @rule(
        slot=st.integers(0, 1),
        queues=st.lists(st.sampled_from(["a", "b", "a.dlq"]), min_size=1, max_size=3, unique=True),
        window=st.integers(1, 3),
        visibility=st.sampled_from([1_000, 4_000, None]),
        stream=st.sampled_from(["s1", "s2"]),
        exclusive=st.sampled_from([False, False, True]),
    )
    def subscribe(
        self,
        slot: int,
        queues: list[str],
        window: int,
        visibility: int | None,
        stream: str,
        exclusive: bool,
    ) -> None:
        sid = self.sessions[slot]
        args = (sid, stream, queues, window, visibility, None, exclusive)
        assert self.node.do("queue.subscribe", *args) == {"sub": self.node.index}
        self.subs[self.node.index] = {
            "session": sid, "stream": stream, "queues": list(queues), "window": window,
            "visibility": visibility, "cap": window,
        }  # fmt: skip
        if exclusive:
            self.take_over(self.node.index, queues)

    def take_over(self, sub_id: int, queues: list[str]) -> None:
        for other, model in self.subs.items():
            if other != sub_id and model["session"] in self.sessions:
                model["queues"] = [q for q in model["queues"] if q not in queues]

    @rule(
        data=st.data(),
        window=st.integers(1, 3),
        visibility=st.sampled_from([4_000, None]),
        exclusive=st.booleans(),
    )
    def change_subscription(
        self, data: st.DataObject, window: int, visibility: int | None, exclusive: bool
    ) -> None:
        live = sorted(k for k, v in self.subs.items() if v["session"] in self.sessions)
        if not live:
            return
        sub_id = data.draw(st.sampled_from(live))
        sub = self.subs[sub_id]
        queues = sub["queues"] or ["b"]  # one that was taken over entirely names another
        held = sum(1 for m in self.msgs.values() if getattr(m, "via", None) == sub_id)
        args = (sub["session"], sub["stream"], queues, window, visibility, sub_id, exclusive)
        assert self.node.do("queue.subscribe", *args) == {"sub": sub_id}
        sub.update(window=window, visibility=visibility, cap=max(window, held), queues=queues)
        if exclusive:
            self.take_over(sub_id, queues)

    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        live = sorted(k for k, v in self.subs.items() if v["session"] in self.sessions)
        if not live:
            return
        sub_id = data.draw(st.sampled_from(live))
        assert self.node.do("queue.unsubscribe", self.subs.pop(sub_id)["session"], sub_id)
        for m in self.msgs.values():
            if getattr(m, "via", None) == sub_id:
                m.via = None  # type: ignore[attr-defined]

    def learn(self) -> None:
        """Adopt (and check) what the machine leased to subscriptions since the last step."""
        part = self.node.queues
        self.subs = {k: v for k, v in self.subs.items() if v["session"] in self.sessions}
        assert set(part.consumers.subs) == set(self.subs)
        ready_before = {q: [m.id for m in self.ready(q)] for q in self.known}
        new: dict[str, list[int]] = {}
        for sub_id, sub in part.consumers.subs.items():
            model = self.subs[sub_id]
            for name, mid in sub.leases:
                m = self.msgs[mid]
                if getattr(m, "via", None) == sub_id:
                    continue
                assert m.state == "ready" and m.queue == name and name in model["queues"]
                m.count += 1
                m.state, m.holder, m.via = "inflight", model["session"], sub_id  # type: ignore[attr-defined]
                vis = model["visibility"]
                m.at = None if vis is None else self.node.now + vis
                new.setdefault(name, []).append(mid)
        if self.node.now == self.now_seen:  # one flush (a tick may feed between its deadlines)
            for name, ids in new.items():
                assert sorted(ids) == sorted(ready_before[name][: len(ids)]), "priority order"
        self.now_seen = self.node.now
        pushed = sorted(  # every entry's events since the last step (the machine keeps them)
            (row["sub"], row["id"], row["delivery_count"])
            for _, rows in self.node.m.drain_events()
            for row in rows
        )
        learned = sorted(
            (sub_id, mid, self.msgs[mid].count)
            for sub_id, sub in part.consumers.subs.items()
            for _, mid in sub.leases
            if mid in {i for ids in new.values() for i in ids}
        )
        assert pushed == learned, "pushed rows are exactly the new subscription leases"
        for sub_id, sub in part.consumers.subs.items():
            model = self.subs[sub_id]
            model["cap"] = max(model["window"], min(model["cap"], len(sub.leases)))
            assert len(sub.leases) <= model["cap"], "window exceeded"
            if sub.room > 0:
                for name in model["queues"]:
                    q = part.queues.get(name)
                    assert q is None or not q.ready, "a ready message beside a room"
            replay = self.node.query("queue.pushed", sub.stream, 0)
            mine = {(r["queue"], r["id"]) for r in replay if r["sub"] == sub_id}
            assert mine == set(sub.leases)

    @invariant()
    def matches_model(self) -> None:
        self.learn()
        super().matches_model()


SubscriptionModel.TestCase.settings = settings(
    max_examples=examples(quick=100, deep=400),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSubscriptionModel = SubscriptionModel.TestCase
