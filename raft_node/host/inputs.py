"""What a driver hands ``NodeHost``: where messages go, the clocks, policy knobs, and hooks.

The server passes a TCP transport, ``SYSTEM_CLOCK`` and no hooks; the simulator passes its
in-memory network, a virtual clock and ``ReadyHooks`` that check invariants and inject crashes.
Keeping these plain types apart from the host keeps both drivers' imports small and lets the
host's own module hold only its behaviour.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from raft_node.core.messages import Entry, Message
from raft_node.core.ready import Ready
from raft_node.host.applier import Outcome

__all__ = ["SYSTEM_CLOCK", "Clock", "HostSettings", "ReadyHooks", "Transport"]


class Transport(Protocol):
    """Where the host's messages go. Delivery is best effort (Raft retries); the transport
    reports what it learns back through ``NodeHost.step``/``report_unreachable``/
    ``report_snapshot``."""

    def send(self, messages: Sequence[Message]) -> None: ...


@dataclass(frozen=True)
class Clock:
    """The host's two clocks. ``wall_ms`` seeds the log clock that leases and TTLs run on when a
    leader wins, ``monotonic`` (seconds) advances it (``log_clock``) and times request deadlines
    and peer contact."""

    wall_ms: Callable[[], int]
    monotonic: Callable[[], float]


SYSTEM_CLOCK = Clock(lambda: time.time_ns() // 1_000_000, time.monotonic)


@dataclass(frozen=True)
class HostSettings:
    """Host policy knobs (the core's own are in ``raft_node.core.raft.Config``)."""

    snapshot_every: int = 100_000  # applied entries between snapshots
    snapshot_keep: int = 5_000  # entries kept behind a snapshot for slightly lagging followers
    request_timeout: float = 5.0  # seconds a client request may wait on this node


class ReadyHooks:
    """Observation points between the steps of Ready handling; the default does nothing.

    The simulator overrides them to check Raft's invariants at each step and to crash a node
    between two steps (by raising). Production passes no hooks at all.
    """

    def before_save(self, rd: Ready) -> None:
        """``messages_early`` are sent; nothing of ``rd`` is persisted yet."""

    def after_save(self, rd: Ready) -> None:
        """``rd`` is persisted; ``messages`` are not sent yet."""

    def after_send(self, rd: Ready) -> None:
        """``messages`` are sent; nothing of ``rd`` is applied yet."""

    def applied(self, entry: Entry, outcomes: list[Outcome]) -> None:
        """``entry`` was applied (and its events published); ``outcomes`` are not answered yet."""
