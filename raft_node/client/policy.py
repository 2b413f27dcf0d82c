"""How both raft clients choose a node and when they retry: sans-I/O, so the blocking and the
asyncio client follow one policy and differ only in how they wait.

- ``parse_addresses``: the cluster's addresses, as users write them;
- ``Targets``: the node to talk to next (the known leader, else round-robin over the seeds);
- ``Backoff``: jittered exponential pauses between attempts;
- ``Attempts``: one call's retry policy until its deadline;
- ``Lane``/``Lanes``: request sequence numbers (a client id numbers its writes 1, 2, 3...);
- ``ClientConfig``: what both clients are given (nodes, secret, timeout, name, TLS).
"""

from __future__ import annotations

import itertools
import random
import ssl as ssl_module
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from raft_node.client.errors import (
    ClusterUnavailable,
    OutcomeUnknown,
    PendingWrite,
    RaftError,
    Timeout,
    raise_for,
)
from raft_node.transport import client_protocol as p
from raft_node.transport.wire import MAX_FRAME_BYTES

Address = tuple[str, int]


def parse_addresses(spec: str | Iterable[Address] | Iterable[str]) -> list[Address]:
    """Accepts ``"h:p,h:p"``, ``"n1=h:p,..."`` or a list of ``(host, port)`` / ``"h:p"``."""
    items: Iterable[Any] = spec.split(",") if isinstance(spec, str) else spec
    out: list[Address] = []
    for item in items:
        if isinstance(item, tuple):
            out.append((str(item[0]), int(item[1])))
            continue
        text = item.strip()
        if not text:
            continue
        text = text.partition("=")[2] or text
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad address {item!r}: expected host:port")
        out.append((host, int(port)))
    if not out:
        raise ValueError("no cluster addresses given")
    return out


def address_of(text: str) -> Address | None:
    """``host:port`` as an address (a leader hint); None if it is not one."""
    host, _, port = text.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


class Targets:
    """Which node to talk to next: the known leader, else round-robin over the seeds."""

    def __init__(self, seeds: Sequence[Address]) -> None:
        self.seeds = list(seeds)
        self._rotation = itertools.cycle(random.sample(self.seeds, len(self.seeds)))
        self.current: Address = next(self._rotation)

    def leader_is(self, hint: str) -> bool:
        """Switch to ``hint`` if it names another node; True if we switched."""
        addr = address_of(hint) if hint else None
        if addr is not None and addr != self.current:
            self.current = addr
            return True
        return False

    def rotate(self) -> None:
        self.current = next(self._rotation)


# The clients' jitter comes from their own generator: drawing from the global one would move a
# seeded ``random`` that the user's code (or a property-testing library) relies on.
_JITTER = random.Random()


class Backoff:
    def __init__(self, first: float = 0.02, cap: float = 0.5) -> None:
        self.delay, self.cap = first, cap

    def next(self) -> float:
        delay = self.delay * (0.5 + _JITTER.random())
        self.delay = min(self.delay * 2, self.cap)
        return delay


class Attempts:
    """The retry policy both clients follow for one call, until its deadline.

    A node that cannot be reached (or answers garbage) is skipped for the next one; a
    ``not_leader``/``unavailable`` answer moves to the leader it names, or the next node; a
    server-side ``timeout`` retries the same node with the same request (a pending blocking
    operation stays pending); a rejection or bad request is raised at once. Every retry of a
    write re-sends the same ``(client_id, seq)``, so it is applied at most once however many
    copies reach a log.

    At the deadline, a write (``write`` given) ends ``OutcomeUnknown`` if any attempt *may*
    have put it in a log (``uncertain``: it was sent and no definite answer came back), else
    ``ClusterUnavailable``, which for a write means "not applied". A ``resolve`` (``in_doubt``)
    starts uncertain: only the cluster's answer (a result or a rejection) ends it definite.
    Another call ends ``Timeout`` if some node was reached, else ``ClusterUnavailable``.

    A node that stops answering (paused, or a one-way partition) keeps its connection open,
    so a call of the client's own timeout waits only half its budget for the first answer and
    then re-sends elsewhere (``answer_wait``): the new leader's answer still comes in time.

    A call may have a deadline far beyond the client's timeout (a blocking get, a cache write
    waiting for L1 holders). That extra time is for a leader to *work* on it, not for finding
    one: after ``patience`` (the client's timeout) with no node reachable or no leader known,
    the call ends early, so a minority partition answers in seconds rather than minutes.
    """

    def __init__(
        self,
        targets: Targets,
        timeout: float,
        follow_leader: bool,
        patience: float,
        write: PendingWrite | None = None,
        in_doubt: bool = False,
    ) -> None:
        self.targets = targets
        self.deadline = time.monotonic() + timeout
        self.follow_leader = follow_leader
        self.patience = min(patience, timeout)
        self.blocking = timeout > patience  # a node may hold the call on purpose
        self.write = write
        self.leaderless_since: float | None = None
        self.backoff = Backoff()
        self.reached = False
        # A write went out and no definite answer came back. ``in_doubt``: a ``resolve``, whose
        # write an earlier call already left uncertain. A refusal of *this* attempt (no leader,
        # nothing sent) says nothing about that earlier one, so it never ends definite.
        self.uncertain = in_doubt and write is not None
        self.silences = 0
        self.last = "no attempt"
        self._refused: set[Address] = set()

    def budget(self) -> float:
        now = time.monotonic()
        if self.leaderless_since is not None and now - self.leaderless_since >= self.patience:
            return 0.0  # no leader for the client's own timeout: stop waiting out a long call
        return self.deadline - now

    def _leaderless(self) -> None:
        if self.leaderless_since is None:
            self.leaderless_since = time.monotonic()

    def unreachable(self, exc: BaseException) -> None:
        self.last = f"{self.targets.current}: {exc!r}"
        self._leaderless()
        self.targets.rotate()

    def lost(self, exc: BaseException) -> None:
        """The connection failed after the request was (perhaps) sent: like ``unreachable``,
        but a write may have reached a log."""
        self.uncertain = self.write is not None
        self.unreachable(exc)

    def refused(self, exc: RaftError) -> None:
        """A node refused us in TLS (``tls_refusal``): raise ``exc`` once every seed has, at
        once rather than at the deadline, since only new certificates help; until then try
        the others (one node may be half-way through a certificate rotation)."""
        self._refused.add(self.targets.current)
        if self._refused.issuperset(self.targets.seeds):
            raise self.fatal(exc)
        self.unreachable(exc)

    def fatal(self, exc: RaftError) -> RaftError:
        """What to raise for an error no retry can fix (credentials): ``exc``, unless an
        earlier attempt may have applied the write, which the caller must learn first."""
        if not self.uncertain:
            return exc
        unknown = self.give_up()
        unknown.__cause__ = exc
        return unknown

    def connect_wait(self, budget: float) -> float:
        """How long dialling one node (TCP, TLS and the handshake) may take: half the budget,
        at most 2 s. A node that is paused accepts the connection (its kernel does) and never
        shakes hands; the other half is for the next node."""
        return budget if budget < 0.2 else min(budget / 2, 2.0)

    def answer_wait(self, budget: float) -> float:
        """How long this attempt waits for its answer: half the budget on the first attempt
        of a call of the client's own timeout, so a silent node is left in time to retry
        elsewhere; the whole budget for a blocking call, which its node holds on purpose (and
        answers ``timeout`` itself when it lets go), and after one silence."""
        if self.blocking or self.silences or budget < 0.2:
            return budget
        return budget / 2

    def no_answer(self) -> None:
        """The request went out but no answer came in time: try the next node (the loop ends
        at the deadline)."""
        self.last = f"{self.targets.current}: no answer"
        self.silences += 1
        self.uncertain = self.write is not None
        self.targets.rotate()

    def answered(self, resp: p.Response) -> bool:
        """True if ``resp`` is the result; raises for rejections; else prepares a retry."""
        if resp.ok:
            if self.follow_leader:
                self.targets.leader_is(resp.leader_hint)
            return True
        raise_for(resp)
        self.last = f"{resp.code}: {resp.message}"
        if self.write is not None and not (resp.error and resp.error.details.get(p.DEFINITE)):
            self.uncertain = True  # e.g. a leader that lost leadership with it in its log
        if resp.code == p.TIMEOUT:
            self.leaderless_since = None  # a leader holds the call (a blocking operation)
        else:
            self._leaderless()
            if not self.targets.leader_is(resp.leader_hint):
                self.targets.rotate()
        return False

    def pause(self) -> float:
        return min(self.backoff.next(), max(0.0, self.budget()))

    def give_up(self) -> RaftError:
        if self.leaderless_since is not None and "no leader for" not in self.last:
            self.last = f"no leader for {self.patience:g} s; last: {self.last}"
        if self.write is not None:
            if self.uncertain:
                return OutcomeUnknown(
                    f"write {self.write.client_id}#{self.write.seq} may or may not have been "
                    f"applied (last: {self.last}); resolve() learns which",
                    write=self.write,
                )
            why = "no leader reachable" if self.reached else "no node reachable"
            return ClusterUnavailable(f"{why}; the write was not applied (last: {self.last})")
        if self.reached:
            return Timeout(f"no result within the deadline (last: {self.last})")
        return ClusterUnavailable(f"no node reachable (last: {self.last})")


class Lane:
    """A client id and its sequence numbers. The cluster applies a write once per
    ``(client_id, seq)`` and remembers only the latest ``seq`` of each id, so a lane has at most
    one write outstanding, and a retry reuses that write's number."""

    __slots__ = ("client_id", "seq")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.seq = 0

    def next(self) -> int:
        self.seq += 1
        return self.seq


class Lanes:
    """The free lanes of a client whose writes overlap: a write takes one (a new lane when all
    are busy) and gives it back when answered. A lane whose write ended ``OutcomeUnknown`` is
    not given back: its id keeps that write as its latest, which ``resolve`` needs (a later
    write on the id would make the cluster forget the earlier one's result)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._free: list[Lane] = []
        self._ids = itertools.count(1)

    def take(self) -> Lane:
        return self._free.pop() if self._free else Lane(f"{self._name}.{next(self._ids)}")

    def give(self, lane: Lane) -> None:
        self._free.append(lane)


class ClientConfig:
    """What both clients are given: the nodes, the secret, the call timeout, a name (the
    client id of its writes), TLS and the frame limit."""

    def __init__(
        self,
        addresses: str | Iterable[Address] | Iterable[str],
        secret: bytes | str,
        *,
        timeout: float = 5.0,
        name: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self._targets = Targets(parse_addresses(addresses))
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.timeout = timeout
        self.name = name or f"client-{uuid.uuid4().hex[:12]}"
        self._ssl, self._max = ssl, max_frame_bytes
        self._init_connection_state()

    def _init_connection_state(self) -> None:
        """Each client's own connection and request state."""
