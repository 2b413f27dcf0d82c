"""The push side of the simulated queue clients: subscriptions and the streams that follow them.

Half the clients consume by push, as a Celery worker on ``raft://`` does: once per session they
register a subscription (``queue.subscribe``, a window of 1..3, sometimes changed later) and
follow its stream with the real client's cursor (``coordination.client.push.PushCursor``). The
"connection" is a subscription on the leader's host plus the replay query run in the same step,
exactly what the node's WATCH handler does; its frames (the replay, events, progress notes)
reach the client after random delays, in order. When the stream's node crashes or stops
leading, or at random (a dropped connection), the client attaches again to the current leader
and the cursor resumes; frames of a stream it left are lost, as a closed socket's are.

Checks:

- every row the cursor hands out goes through the workload's delivery check (the message was
  put, and no delivery of it repeats a ``delivery_count``: a replay that hands out a lease
  twice is caught);
- after every entry, in the replicated state: no queue has a ready message while a subscription
  consuming it has room, and no subscription holds more than the largest window used;
- at wind-down a client unsubscribes, waits until its stream has caught up with the leader
  (a progress note at or past the index it unsubscribed at), and then every message leased to
  its session must have reached it: a lease the stream (or its replay) lost is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordination.client.push import PushCursor
from coordination.primitives import commands as c
from coordination.primitives.queue_consumers import PUSH_TOPIC
from coordination.simulation.clients import Driver, Request, SimClient
from raft_node.host.node_host import NodeHost
from raft_node.sim.invariants import Violation
from raft_node.transport import client_protocol as p

WINDOWS = (1, 2, 3)
DROP = 0.02  # chance per client turn that the stream's connection drops


@dataclass
class PushState:
    """One push client's subscription and stream (for its current session)."""

    session: int | None = None  # the session the stream and subscription belong to
    sub: int | None = None
    unsubscribed_at: int | None = None  # the leader's applied index when unsubscribe returned
    cursor: PushCursor | None = None
    host: NodeHost | None = None  # the host the stream is attached to (None: detached)
    cancel: Any = None
    epoch: int = 0  # frames of an older epoch belong to a stream the client left
    due: int = 0  # when the stream's last scheduled frame arrives (frames keep their order)


class PushClients:
    def __init__(self, workload: Driver) -> None:
        self.w = workload
        self.state: dict[str, PushState] = {}
        self.delivered = 0
        self.reattached = 0

    def is_push(self, cl: SimClient) -> bool:
        return int(cl.name[1:]) % 2 == 0

    def _st(self, cl: SimClient) -> PushState:
        st = self.state.setdefault(cl.name, PushState())
        if st.session != cl.session:  # a new session: a new stream, nothing subscribed yet
            self._detach(st)
            st.session, st.sub, st.unsubscribed_at = cl.session, None, None
            st.cursor = None if cl.session is None else PushCursor(f"{cl.name}-s{cl.session}")
        return st

    # -- every turn of the client -----------------------------------------------------------------

    def turn(self, cl: SimClient) -> None:
        """Keep the stream attached to the leader (the real stream is leader-served), drop it
        at random, and let the node send a progress note."""
        if not self.is_push(cl) or cl.session is None or cl.finished:
            return
        st = self._st(cl)
        sim = self.w.sim
        assert sim is not None
        leader = self._leader()
        if st.host is not None and (st.host is not leader or sim.rng.random() < DROP):
            self._detach(st)
        if st.host is None and leader is not None:
            self._attach(cl, st, leader)
        if st.host is not None:
            self._send(cl, st, ["progress", st.host.applied_index])

    def _leader(self) -> NodeHost | None:
        sim = self.w.sim
        assert sim is not None
        for node in sim.nodes.values():
            if node.host is not None and node.host.is_leader:
                return node.host
        return None

    def _attach(self, cl: SimClient, st: PushState, host: NodeHost) -> None:
        """Subscribe to the stream's topic and replay in one step, as the WATCH handler does."""
        assert st.cursor is not None
        st.epoch += 1
        epoch = st.epoch

        def on_event(index: int, rows: Any) -> None:
            if st.epoch == epoch:
                self._send(cl, st, ["event", index, rows])

        st.cancel = host.subscribe(PUSH_TOPIC + st.cursor.stream, on_event)
        ok, replay = host.query(c.queue_pushed(st.cursor.stream, st.cursor.last_index))
        if not ok:
            raise Violation(f"push replay refused: {replay}")
        st.host = host
        self.reattached += 1
        self._send(cl, st, ["subscribed", host.applied_index, replay])

    def _detach(self, st: PushState) -> None:
        if st.host is not None and st.cancel is not None:
            st.cancel()
        st.host, st.cancel = None, None
        st.epoch += 1  # frames still on their way are lost with the connection

    def _send(self, cl: SimClient, st: PushState, value: list[Any]) -> None:
        sim = self.w.sim
        assert sim is not None
        st.due = max(st.due, sim.now + sim.rng.randrange(1, 20))
        sim.schedule(st.due - sim.now, ("push", cl, st.epoch, value))

    def deliver(self, cl: SimClient, epoch: int, value: list[Any]) -> None:
        """A frame reached the client: through the real cursor, then the workload's checks."""
        st = self.state.get(cl.name)
        if st is None or st.epoch != epoch or st.cursor is None or cl.session != st.session:
            return
        resp = p.Response(0, True, value, "", None, "")
        for row in st.cursor.on_response(resp):
            self.delivered += 1
            self.w.delivered(cl, row)

    # -- operations -------------------------------------------------------------------------------

    def next_op(self, cl: SimClient) -> bool:
        """Subscribe if not yet (in this session), sometimes change the window; True if a
        request was started."""
        sim = self.w.sim
        assert sim is not None and cl.session is not None
        st = self._st(cl)
        assert st.cursor is not None
        rng = sim.rng
        if st.sub is None:
            lease = rng.choice((1_000, None, None))
            body = c.queue_subscribe(
                cl.session, st.cursor.stream, ["jobs"], rng.choice(WINDOWS), lease, None
            )
            self.w.start(cl, body, "subscribe", {})
            return True
        if rng.random() < 0.05:
            body = c.queue_subscribe(
                cl.session, st.cursor.stream, ["jobs"], rng.choice(WINDOWS), None, st.sub
            )
            self.w.start(cl, body, "subscribe", {})
            return True
        return False

    def finished(self, req: Request, ok: bool, value: Any) -> None:
        st = self._st(req.client)
        if not ok:
            return  # session_expired / unknown_session: the workload starts over
        if req.kind == "subscribe":
            st.sub = value["sub"]
        elif req.kind == "unsubscribe":
            st.sub = None
            leader = self._leader()
            st.unsubscribed_at = leader.applied_index if leader is not None else 0

    def session_lost(self, cl: SimClient) -> None:
        st = self.state.get(cl.name)
        if st is not None:
            self._detach(st)
            st.session, st.sub, st.cursor, st.unsubscribed_at = None, None, None, None

    # -- wind-down and checks ---------------------------------------------------------------------

    def wind_down(self, cl: SimClient) -> bool:
        """Unsubscribe, wait for the stream to catch up, check nothing leased was lost; True
        while this takes the client's turn."""
        if not self.is_push(cl) or cl.session is None:
            return False
        st = self._st(cl)
        if st.sub is not None:
            self.w.start(cl, c.queue_unsubscribe(cl.session, st.sub), "unsubscribe", {})
            return True
        if st.unsubscribed_at is None:
            return False  # never subscribed in this session
        leader = self._leader()
        assert st.cursor is not None
        if leader is None or st.host is not leader or st.cursor.last_index < st.unsubscribed_at:
            return True  # frames still on their way (``turn`` keeps the stream going)
        part = leader.state_machine.part("queues")
        leased = {mid for _, mid in part._leases_by_session.get(cl.session, ())}
        have = {m["id"] for m in cl.leased}
        if not leased <= have:
            raise Violation(
                f"{cl.name}: messages {sorted(leased - have)} leased to its subscription never"
                f" reached it (stream at index {st.cursor.last_index})"
            )
        st.unsubscribed_at = None  # checked: wind down as any client
        self._detach(st)
        return False

    def check(self, machine: Any, index: int) -> None:
        """The subscription invariants of the replicated state after entry ``index``."""
        part = machine.part("queues")
        for sub in part.consumers.subs.values():
            if len(sub.leases) > max(WINDOWS):
                raise Violation(f"subscription {sub.id} holds {len(sub.leases)} at {index}")
            if sub.room > 0:
                for name in sub.queues:
                    q = part.queues.get(name)
                    if q is not None and q.ready:
                        raise Violation(
                            f"queue {name!r} has ready messages beside subscription {sub.id}"
                            f" with room {sub.room} at index {index}"
                        )
