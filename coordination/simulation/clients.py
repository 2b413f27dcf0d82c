"""The simulated clients of the coordination primitives: their state, their requests, and how a
request waits on a node's host.

Shared by the lock/queue side (``workload``) and the cache and push sides (``cache_clients``,
``push_clients``), which all depend on this module and not on each other (``Driver`` is what
those sides need of the workload: its engine, its clients, how to start a request and how a
queue message is handed to a client).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from raft_node.host.waiters import Wait
from raft_node.sim.engine import Engine


@dataclass
class Request:
    client: SimClient
    seq: int
    body: bytes
    kind: str
    info: dict[str, Any]
    started: int = 0  # first sent (the invocation time in histories)
    sent_at: int = -(10**9)
    done: bool = False


@dataclass
class SimClient:
    name: str
    session: int | None = None
    seq: int = 0
    current: Request | None = None
    paused_until: int = 0
    next_keepalive: int = 0
    held: dict[str, int] = field(default_factory=dict)  # lock -> token (as the client believes)
    leased: list[dict[str, Any]] = field(default_factory=list)  # queue messages it holds
    finished: bool = False  # liveness phase: session closed, nothing more to do
    l1: dict[str, tuple[Any, int, int]] = field(default_factory=dict)  # value, reg, deadline
    watch: str | None = None  # node whose event stream it follows
    watch_topic: str = ""  # the topic it follows there (its session's)
    unwatch: Callable[[], None] | None = None  # cancels that subscription
    release_seq: int = 0


class RequestWait(Wait):
    """One attempt of a request, waiting on a host. A failed attempt (leadership lost, timeout,
    crash) is sent again at the client's next turn, with the same ``seq``."""

    __slots__ = ("finish", "request")

    def __init__(self, request: Request, finish: Callable[[Request, bool, Any], None]) -> None:
        self.request, self.finish = request, finish

    def done(self, ok: bool, value: Any) -> None:
        if not self.request.done:
            self.finish(self.request, ok, value)

    def failed(self, reason: str, message: str) -> None:
        if not self.request.done:
            self.request.sent_at = -(10**9)  # resend at the next turn, not after RETRY_AFTER_MS


class Driver(Protocol):
    """What the cache side needs of the workload."""

    sim: Engine | None
    clients: list[SimClient]

    def start(self, cl: SimClient, body: bytes, kind: str, info: dict[str, Any]) -> None: ...

    def delivered(self, cl: SimClient, msg: dict[str, Any]) -> None:
        """A queue message reached ``cl`` (a get's answer, or a push)."""
        ...
