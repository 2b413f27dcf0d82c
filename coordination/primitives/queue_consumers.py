"""Standing subscriptions of the queue primitive: messages leased to consumers as they commit.

A blocking ``get`` costs a log entry per fetch, and one more when its wait runs out; a consumer
that takes a stream of messages (a Celery worker) paid a ``get`` entry next to every ``put``. A
*subscription* removes that entry. A consumer registers one (``queue.subscribe``): its session,
a *stream* name, the queues it consumes, a *window* (how many messages it may hold leased through
the subscription at once: kombu's prefetch count) and a lease length (None: session-held). From
then on, the entry that makes a message ready (a put, a delayed message coming due, a requeue)
or gives a subscription room (an ack, a nack, a lease ending) also leases the message to a
subscription with room, and records the delivery as an event on topic ``queue.push.<stream>``:
one event per entry and stream, a list of message rows (``QueueState.view`` plus ``sub`` and
``leased_at``, the index of the leasing entry). Every replica applies the same entries and makes
the same choice; the node serving the consumer's WATCH of that topic pushes the event.

Leases made this way are ordinary leases of the subscription's session (ack, nack, ``touch``,
expiry and the session's end treat them as any other), so the queue's guarantees hold as they
are: a dead consumer's messages come back with ``delivery_count + 1`` when its session ends. The
subscription only adds the bookkeeping of its window, and it ends with its session.

**Choosing the subscription** (deterministic, in ``feed``, run at the end of every entry that
may need it, after blocked gets are served):

1. each queue that got ready messages (sorted by name) gives them, one at a time, to the first
   subscription in its rotation with room;
2. then subscriptions that gained room in this entry (``hungry``, in the order they gained it)
   fill up from their queues, taking one message at a time from the next of their queues with a
   ready message (``turn`` rotates, so ``-Q a,b`` cannot starve ``b``).

A subscription moves to the end of a queue's rotation when it is given a message of that queue
and when a lease of it ends. So a message whose lease ended without an ack (a nack, a
``visibility`` deadline passed) goes to another consumer with room if there is one, before its
previous holder, and a stuck consumer cannot take its expired messages straight back.

So between entries no queue has a ready message while a subscription on it has room (the
invariant ``tests/primitives`` and the simulator check), and a window is never exceeded except
by lowering it (nothing more is leased until acks bring it back under).

**Resuming a stream.** Events are pushed as entries are applied, so a consumer that reconnects
(its node died, lost leadership) has missed the ones sent meanwhile. Its new WATCH replays the
``queue.pushed`` query in the same step as it subscribes: every message still leased through the
stream's subscriptions, with ``leased_at`` greater than the index the consumer last saw. Rows
and events at or below that index are dropped by the consumer, so nothing leased is lost and
nothing is delivered twice by the stream (``coordination.client.push``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordination.primitives import limits
from coordination.primitives.base import Ctx
from coordination.primitives.errors import BAD_COMMAND, LIMIT, UNKNOWN_SUBSCRIPTION, reject
from coordination.primitives.queues_state import MAX_QUEUES_PER_WAIT, QueueState, queue_name
from coordination.primitives.sessions import Sessions

PUSH_TOPIC = "queue.push."  # + stream: the WATCH topic of a stream's deliveries
STREAM_MAX_BYTES = 64
WINDOW = (1, limits.BATCH_MAX)  # messages a subscription may hold leased
SUBSCRIPTIONS_PER_SESSION = 64

Key = tuple[str, int]  # (queue, message id)
# Lease the next ready message of a queue to a subscription; returns the message's row.
Lease = Callable[[Ctx, QueueState, "Subscription"], dict[str, Any]]


class Subscription:
    """One consumer's standing request: what it consumes, how many it may hold, and what it holds
    through this subscription (``leases``: key -> index of the leasing entry, in lease order)."""

    __slots__ = ("id", "leases", "queues", "session", "stream", "turn", "visibility", "window")

    def __init__(
        self,
        sub_id: int,
        session: int,
        stream: str,
        queues: list[str],
        window: int,
        visibility: int | None,
    ) -> None:
        self.id, self.session, self.stream = sub_id, session, stream
        self.queues, self.window, self.visibility = queues, window, visibility
        self.turn = 0  # where the next fill starts in ``queues``
        self.leases: dict[Key, int] = {}

    @property
    def room(self) -> int:
        return self.window - len(self.leases)

    def to_state(self) -> list[Any]:
        leases = [[name, mid, at] for (name, mid), at in self.leases.items()]
        return [self.id, self.session, self.stream, self.queues, self.window, self.visibility,
                self.turn, leases]  # fmt: skip

    @classmethod
    def from_state(cls, row: list[Any]) -> Subscription:
        sub_id, session, stream, queues, window, visibility, turn, leases = row
        sub = cls(sub_id, session, stream, list(queues), window, visibility)
        sub.turn = turn
        sub.leases = {(name, mid): at for name, mid, at in leases}
        return sub


class Consumers:
    """The subscriptions of the ``queues`` part (see the module doc). ``flush`` is the part's
    end-of-entry step (blocked gets, then ``feed``); ``lease`` leases one message."""

    def __init__(self, sessions: Sessions, flush: Callable[[Ctx], None], lease: Lease) -> None:
        self._sessions, self._flush, self._lease = sessions, flush, lease
        self.subs: dict[int, Subscription] = {}  # creation order
        self.rotation: dict[str, dict[int, None]] = {}  # queue name -> its subscriptions, in turn
        self._by_session: dict[int, dict[int, None]] = {}
        self._lease_sub: dict[Key, int] = {}  # a lease made through a subscription -> its id
        self._hungry: dict[int, None] = {}  # subscriptions that gained room in this entry
        self._events: dict[str, list[dict[str, Any]]] = {}  # stream -> rows pushed in this entry

    # -- ops ------------------------------------------------------------------------------------

    def subscribe(self, ctx: Ctx, args: list[Any]) -> dict[str, Any]:
        """``[session, stream, [name, ...], window, visibility_ms, sub, exclusive]`` ->
        ``{"sub": id}``. ``sub`` None registers a subscription (its id is this entry's index);
        an id changes that subscription of the session (queues, window, lease). Either way,
        what the window allows is leased in this entry. The queues need not exist yet.

        ``exclusive``: the subscription takes its queues over; every other subscription stops
        consuming them. For a queue meant to have one consumer (a Celery worker's control
        queue, named after the worker): a worker restarted under the same name takes it at
        once, instead of sharing it with its dead predecessor's subscription, which would
        keep taking messages until that session expired."""
        sid, stream, names, window, visibility, sub_id, exclusive = limits.args(
            args, 7, "queue.subscribe"
        )
        stream = _stream(stream)
        if not isinstance(names, list) or not 1 <= len(names) <= MAX_QUEUES_PER_WAIT:
            reject(BAD_COMMAND, f"queues must be a list of 1..{MAX_QUEUES_PER_WAIT} names")
        names = list(dict.fromkeys(queue_name(n) for n in names))
        window = limits.integer(window, WINDOW, "window")
        visibility = limits.optional_integer(visibility, limits.VISIBILITY_MS, "visibility_ms")
        exclusive = limits.boolean(exclusive, "exclusive")
        sid = self._sessions.require(sid)
        if sub_id is None:
            if len(self._by_session.get(sid, ())) >= SUBSCRIPTIONS_PER_SESSION:
                reject(LIMIT, f"a session holds at most {SUBSCRIPTIONS_PER_SESSION} subscriptions")
            sub = self.subs[ctx.index] = Subscription(
                ctx.index, sid, stream, names, window, visibility
            )
            self._by_session.setdefault(sid, {})[sub.id] = None
        else:
            sub = self._owned(sid, sub_id)
            for name in sub.queues:
                self._forget_queue(name, sub.id)
            sub.stream, sub.queues, sub.window, sub.visibility = stream, names, window, visibility
            sub.turn = 0
        for name in names:
            turn = self.rotation.setdefault(name, {})
            if exclusive:
                for other in [i for i in turn if i != sub.id]:
                    self.subs[other].queues.remove(name)
                    del turn[other]
            turn[sub.id] = None
        self._hungry[sub.id] = None
        self._flush(ctx)
        return {"sub": sub.id}

    def unsubscribe(self, ctx: Ctx, args: list[Any]) -> bool:
        """``[session, sub]`` -> whether it existed. Its messages stay leased to the session
        (the consumer acks or nacks them as before); nothing more is pushed to it."""
        sid, sub_id = limits.args(args, 2, "queue.unsubscribe")
        sid = self._sessions.require(sid)
        if not isinstance(sub_id, int) or isinstance(sub_id, bool):
            reject(BAD_COMMAND, "sub must be an integer id")
        sub = self.subs.get(sub_id)
        if sub is None or sub.session != sid:
            return False
        self._drop(sub)
        return True

    # -- queries --------------------------------------------------------------------------------

    def pushed(self, args: list[Any], view: Callable[[str, int], dict[str, Any]]) -> list[Any]:
        """``[stream, after_index]`` -> the rows of every message still leased through the
        stream's subscriptions by an entry after ``after_index``, in lease order: the replay of
        a resumed push stream (module doc)."""
        stream, after = limits.args(args, 2, "queue.pushed")
        stream = _stream(stream)
        after = limits.integer(after, (0, 2**63 - 1), "after_index")
        rows = []
        for sub in self.subs.values():
            if sub.stream != stream:
                continue
            for (name, mid), at in sub.leases.items():
                if at > after:
                    rows.append((at, {**view(name, mid), "sub": sub.id, "leased_at": at}))
        rows.sort(key=lambda pair: pair[0])  # stable: lease order within an entry
        return [row for _, row in rows]

    def count(self, name: str) -> int:
        """Subscriptions consuming ``name`` (``queue.stats``' ``subscribers``)."""
        return len(self.rotation.get(name, ()))

    # -- what the queues part tells us ------------------------------------------------------------

    def leased(self, ctx: Ctx, sub: Subscription, row: dict[str, Any]) -> None:
        """``row``'s message was just leased through ``sub``: count it, push it."""
        key = (row["queue"], row["id"])
        sub.leases[key] = ctx.index
        self._lease_sub[key] = sub.id
        row["sub"], row["leased_at"] = sub.id, ctx.index
        self._events.setdefault(sub.stream, []).append(row)

    def released(self, name: str, mid: int) -> None:
        """A lease ended (ack, nack, expiry, session end, queue deleted): its room comes back,
        and its subscription goes to the end of the queue's rotation (module doc)."""
        sub_id = self._lease_sub.pop((name, mid), None)
        if sub_id is not None:
            del self.subs[sub_id].leases[(name, mid)]
            self._hungry[sub_id] = None
            turn = self.rotation.get(name)
            if turn is not None and sub_id in turn:
                del turn[sub_id]
                turn[sub_id] = None

    def session_ended(self, session_id: int) -> None:
        """Before the part returns the session's leases: its subscriptions go first, so none of
        them is fed again."""
        for sub_id in list(self._by_session.get(session_id, ())):
            self._drop(self.subs[sub_id])

    def feed(self, ctx: Ctx, dirty: list[str], queues: dict[str, QueueState]) -> None:
        """Lease ready messages to subscriptions with room (module doc: each queue in ``dirty``
        serves its rotation, then hungry ones fill up). Called by the part's ``_flush``."""
        for name in dirty:
            turn, q = self.rotation.get(name), queues.get(name)
            while turn and q is not None and q.ready:
                sub = next((s for s in map(self.subs.__getitem__, turn) if s.room > 0), None)
                if sub is None:
                    break
                self._give(ctx, sub, q)
        hungry, self._hungry = self._hungry, {}
        for sub_id in hungry:
            sub = self.subs.get(sub_id)
            if sub is not None:
                self._fill(ctx, sub, queues)

    def drain_events(self) -> list[tuple[str, Any]]:
        events, self._events = self._events, {}
        return [(PUSH_TOPIC + stream, rows) for stream, rows in events.items()]

    # -- internals ------------------------------------------------------------------------------

    def _fill(self, ctx: Ctx, sub: Subscription, queues: dict[str, QueueState]) -> None:
        names = sub.queues
        while sub.room > 0:
            for step in range(len(names)):
                q = queues.get(names[(sub.turn + step) % len(names)])
                if q is not None and q.ready:
                    break
            else:
                return
            sub.turn = (sub.turn + step + 1) % len(names)
            self._give(ctx, sub, q)

    def _give(self, ctx: Ctx, sub: Subscription, q: QueueState) -> None:
        self._lease(ctx, q, sub)
        turn = self.rotation[q.name]
        del turn[sub.id]
        turn[sub.id] = None  # to the end: the next message of this queue tries the others first

    def _owned(self, sid: int, sub_id: Any) -> Subscription:
        sub = self.subs.get(sub_id) if isinstance(sub_id, int) else None
        if sub is None or sub.session != sid:
            reject(UNKNOWN_SUBSCRIPTION, f"no subscription {sub_id!r} of session {sid}")
        return sub

    def _drop(self, sub: Subscription) -> None:
        del self.subs[sub.id]
        for name in sub.queues:
            self._forget_queue(name, sub.id)
        for key in sub.leases:
            del self._lease_sub[key]
        owned = self._by_session[sub.session]
        del owned[sub.id]
        if not owned:
            del self._by_session[sub.session]
        self._hungry.pop(sub.id, None)

    def _forget_queue(self, name: str, sub_id: int) -> None:
        turn = self.rotation[name]
        del turn[sub_id]
        if not turn:
            del self.rotation[name]

    # -- snapshots ------------------------------------------------------------------------------

    def to_state(self) -> list[Any]:
        return [
            [sub.to_state() for sub in self.subs.values()],
            [[name, list(turn)] for name, turn in self.rotation.items()],
        ]

    def from_state(self, state: list[Any] | None) -> None:
        """``None``: a snapshot taken before subscriptions existed (none then)."""
        subs, rotation = state if state is not None else ([], [])
        self.subs = {row[0]: Subscription.from_state(row) for row in subs}
        self.rotation = {name: dict.fromkeys(ids) for name, ids in rotation}
        self._by_session, self._lease_sub, self._hungry, self._events = {}, {}, {}, {}
        for sub in self.subs.values():
            self._by_session.setdefault(sub.session, {})[sub.id] = None
            for key in sub.leases:
                self._lease_sub[key] = sub.id


def _stream(value: Any) -> str:
    stream = limits.name(value, "stream")
    if len(stream.encode()) > STREAM_MAX_BYTES:
        reject(LIMIT, f"stream longer than {STREAM_MAX_BYTES} bytes")
    return stream
