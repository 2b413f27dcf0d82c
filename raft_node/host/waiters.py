"""Client requests waiting on one node, and the subscribers of its event streams.

- **Proposals** wait for the applier's outcome of their ``(client_id, seq)``. A "pending" outcome
  (a blocking command) keeps them waiting until the state machine completes it. When leadership
  is lost they are answered ``NOT_LEADER``: the client retries with the same ``seq``, and the
  applier's dedup makes that safe even if the first copy commits after all.
- **Linearizable reads** use ReadIndex, batched: while one ReadIndex round is in flight, new reads
  wait for the next round (a round started before a read arrived cannot vouch for it). When the
  round's read index is applied locally, every read of the round queries the state machine. A
  round that gets no answer within ``ROUND_RETRY_S`` (lost in a leader change) is asked again.
- **Event streams**: ``publish`` hands each event a state machine emits while applying to the
  subscribers of its topic, in log order.

This lives in the host, not in the request handler, so that the asyncio server and the simulator
answer requests with the same code: the server's waits encode a wire response, the simulator's
record a client history. The hot paths are callbacks, not tasks: a waiting request is one small
``Wait`` answered from ``on_outcomes``/``on_applied``, and one sweep (run by the host's tick)
expires them all, so a request costs no task, future or timer of its own.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from raft_node.core.messages import NodeId
from raft_node.core.read_only import ReadState
from raft_node.host.applier import Outcome
from raft_node.host.metrics import NodeMetrics

# Why a request got no outcome from this node (``Wait.failed``). The wire protocol uses the same
# words (``raft_node.transport.client_protocol``); the request handler maps them explicitly.
NOT_LEADER = "not_leader"  # not (or no longer) the leader: retry at the leader, same seq
TIMEOUT = "timeout"  # not answered within the request timeout: outcome unknown, retry
UNAVAILABLE = "unavailable"  # this node is stopping (or crashed): retry elsewhere

ROUND_RETRY_S = 1.0
Subscriber = Callable[[int, Any], None]  # (log index, payload)


class Wait:
    """One request waiting on the host, answered exactly once: ``done`` or ``failed``.

    Subclass it: the server's request handler encodes a wire response, the simulator's clients
    record their history. The host sets ``deadline``, ``started``, ``query`` and ``finished`` when
    it registers the wait (so a subclass needs no ``super().__init__()`` on the hot path), and
    sets ``finished`` before calling either method.
    """

    __slots__ = ("deadline", "finished", "query", "started")

    deadline: float
    finished: bool
    query: bytes | None  # None: a barrier (``done(True, None)``, no query; see ``add_read``)
    started: float

    def done(self, ok: bool, value: Any) -> None:
        """The outcome: ``ok`` and the result, or not ``ok`` and the state machine's
        ``(code, message, details)`` rejection."""
        raise NotImplementedError

    def failed(self, reason: str, message: str) -> None:
        """No outcome from this node: ``NOT_LEADER``, ``TIMEOUT`` or ``UNAVAILABLE``."""
        raise NotImplementedError


def fail(wait: Wait, reason: str, message: str) -> None:
    """Answer ``wait`` with ``failed`` unless it was answered already."""
    if not wait.finished:
        wait.finished = True
        wait.failed(reason, message)


class Waiters:
    """The waits and subscribers of one node (see the module docstring)."""

    def __init__(
        self,
        node_id: NodeId,
        monotonic: Callable[[], float],
        timeout: float,
        metrics: NodeMetrics,
        read_index: Callable[[bytes], None],
        query: Callable[[bytes], tuple[bool, Any]],
        incarnation: int,
    ) -> None:
        """``incarnation`` must differ between two runs of the same node (a random number): read
        contexts carry it, because a ReadIndex answer or heartbeat ack of a previous run may
        still be on its way (a peer's queue outlives a restart) and must not be taken for an
        answer to this run's round, which would serve a stale read."""
        self._monotonic = monotonic
        self._timeout = timeout
        self._metrics = metrics
        self._read_index = read_index  # asks the core for a read index (and wakes the host)
        self._query = query
        self._pending: dict[tuple[str, int], list[Wait]] = {}
        self._expiry: deque[Wait] = deque()  # every wait, in deadline order
        self._ctx_ids = itertools.count(1)
        self._ctx_prefix = f"{node_id}:{incarnation:x}:"
        self._round_ctx: bytes | None = None  # ReadIndex round in flight
        self._round_started = 0.0
        self._round_waits: list[Wait] = []
        self._next_waits: list[Wait] = []
        self._applied_waits: list[tuple[int, int, list[Wait]]] = []
        self._subscribers: dict[str, list[Subscriber]] = {}

    def __len__(self) -> int:
        """Waits registered and not yet swept (answered ones leave at the next sweep)."""
        return len(self._expiry)

    def _register(self, wait: Wait) -> None:
        now = self._monotonic()
        wait.deadline = now + self._timeout
        wait.started = now
        wait.finished = False
        self._expiry.append(wait)

    # -- proposals -----------------------------------------------------------------------------

    def add_proposal(self, client_id: str, seq: int, wait: Wait) -> None:
        self._register(wait)
        self._pending.setdefault((client_id, seq), []).append(wait)

    def on_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        pending = self._pending
        if not pending:
            return
        observe = self._metrics.commit_seconds.observe
        now = self._monotonic()
        for outcome in outcomes:
            if outcome.pending:
                continue  # accepted; answered when the state machine completes it
            for wait in pending.pop((outcome.client_id, outcome.seq), ()):
                if wait.finished:
                    continue
                observe(now - wait.started)
                wait.finished = True
                wait.done(outcome.ok, outcome.value)

    def on_lost_leadership(self) -> None:
        pending, self._pending = self._pending, {}
        for waits in pending.values():
            for wait in waits:
                fail(wait, NOT_LEADER, "leadership lost; retry")

    # -- reads ---------------------------------------------------------------------------------

    def add_read(self, query: bytes | None, wait: Wait) -> None:
        """A linearizable read of ``query``; with None a *barrier*: ``wait.done(True, None)``
        once this node has applied everything committed before the call, and nothing queried
        (the waiter then reads the state itself, e.g. to snapshot it for a backup)."""
        self._register(wait)
        wait.query = query
        self._next_waits.append(wait)
        self._maybe_start_round()

    def _maybe_start_round(self) -> None:
        if self._round_ctx is not None or not self._next_waits:
            return
        self._round_waits, self._next_waits = self._next_waits, []
        self._send_round()

    def _send_round(self) -> None:
        self._round_ctx = f"{self._ctx_prefix}{next(self._ctx_ids)}".encode()
        self._round_started = self._monotonic()
        self._read_index(self._round_ctx)

    def _restart_round(self) -> None:
        self._round_waits = [w for w in self._round_waits if not w.finished]
        if self._round_waits:
            self._send_round()
        else:
            self._round_ctx = None
            self._maybe_start_round()

    def on_read_states(self, states: Iterable[ReadState], applied: int) -> None:
        for rs in states:
            if rs.context != self._round_ctx:
                continue
            waits, self._round_waits, self._round_ctx = self._round_waits, [], None
            if applied >= rs.index:
                self._serve_reads(waits)
            else:
                heapq.heappush(self._applied_waits, (rs.index, id(waits), waits))
        self._maybe_start_round()

    def on_applied(self, applied: int) -> None:
        waits = self._applied_waits
        while waits and waits[0][0] <= applied:
            self._serve_reads(heapq.heappop(waits)[2])

    def _serve_reads(self, waits: list[Wait]) -> None:
        reads = self._metrics.reads.labels(mode="linearizable")
        for wait in waits:
            if not wait.finished:
                reads.inc()
                wait.finished = True
                if wait.query is None:
                    wait.done(True, None)
                else:
                    wait.done(*self._query(wait.query))

    # -- expiry --------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a sweep has anything to look at."""
        return bool(self._expiry) or self._round_ctx is not None

    def sweep(self, now: float) -> None:
        """Answer ``TIMEOUT`` to every wait past its deadline; re-ask a lost read round."""
        expiry = self._expiry
        while expiry and (expiry[0].finished or expiry[0].deadline <= now):
            wait = expiry.popleft()
            if not wait.finished:
                self._metrics.proposals_failed.inc()
                fail(wait, TIMEOUT, "no result in time; retry")
        if self._round_ctx is not None and now - self._round_started > ROUND_RETRY_S:
            self._restart_round()  # the round was lost (leader change): ask again

    def fail_all(self, reason: str, message: str) -> None:
        """Answer every wait with ``failed`` (the node is stopping) and forget them all."""
        expiry, self._expiry = self._expiry, deque()
        self._pending.clear()
        self._round_ctx, self._round_waits, self._next_waits = None, [], []
        self._applied_waits.clear()
        for wait in expiry:
            fail(wait, reason, message)

    # -- event streams -------------------------------------------------------------------------

    def subscribe(self, topic: str, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(index, payload)`` for each event on ``topic``; returns the cancel."""
        self._subscribers.setdefault(topic, []).append(subscriber)

        def cancel() -> None:
            subscribers = self._subscribers.get(topic, [])
            if subscriber in subscribers:
                subscribers.remove(subscriber)
            if not subscribers:
                self._subscribers.pop(topic, None)

        return cancel

    def publish(self, index: int, topic: str, payload: Any) -> None:
        for subscriber in self._subscribers.get(topic, ()):
            subscriber(index, payload)
