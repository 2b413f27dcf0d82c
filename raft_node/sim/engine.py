"""What a workload sees of the simulator: ``SimNode``, the ``Engine`` it drives, and the
``Workload`` protocol it implements.

Kept apart from ``cluster.py`` (the engine itself) so that workloads, ``kv_workload`` here and
``coordination.simulation`` in the product, depend on this contract and never on the engine
module, which imports the default workload.

Each simulated node runs a real ``NodeHost`` (``raft_node.host.node_host``), the host the node
process runs: the workload gives it a state machine and talks to it through the host's public
methods (``propose``, ``read``, ``subscribe``, ``is_leader``...), as the request handler does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from raft_node.core.fsm import StateMachine
from raft_node.core.messages import Entry, NodeId
from raft_node.host.applier import Outcome
from raft_node.host.node_host import NodeHost
from raft_node.sim.disk import SimDisk
from raft_node.sim.invariants import Checker

__all__ = ["Engine", "Entry", "SimNode", "SimulationFailure", "Workload"]


class SimulationFailure(AssertionError):
    """A run failed; the message carries the seed and the one-line replay command."""


@dataclass
class SimNode:
    """One simulated node: its disk survives crashes, its ``host`` (``None`` while down) does
    not, nor does ``state`` (the workload's per-incarnation bookkeeping)."""

    id: NodeId
    disk: SimDisk
    tick_ms: int
    host: NodeHost | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return self.host is not None


class Engine(Protocol):
    """The simulator as a workload uses it (``raft_node.sim.cluster.Simulation``)."""

    rng: random.Random
    now: int  # virtual milliseconds
    nodes: dict[NodeId, SimNode]
    checker: Checker

    def schedule(self, delay: int, payload: Any) -> None:
        """Deliver ``payload`` to ``Workload.on_event`` after ``delay`` virtual ms."""
        ...

    def process(self, node: SimNode) -> None:
        """Let ``node``'s host handle what its inputs produced (call after giving it input)."""
        ...

    def up_nodes(self) -> list[SimNode]: ...

    def members(self) -> tuple[NodeId, ...]:
        """The machines in the current leader's configuration (all of them without one)."""
        ...

    def pick_node(self, prefer_leader: bool) -> SimNode | None:
        """A random live node; with ``prefer_leader``, its known leader if that one is up."""
        ...

    def failure(self, what: str) -> SimulationFailure: ...


class Workload(Protocol):
    """What the simulated clients do and what must hold of their results.

    The engine calls: ``attach`` once (schedule first client events with ``sim.schedule``),
    ``new_state_machine`` at every node start (the host wraps it in its applier), ``on_event``
    for each scheduled event (``liveness`` is True after healing: finish outstanding work, start
    nothing new), ``on_applied`` after each entry a host applies (checks on the replicated
    state; client answers arrive through the ``Wait`` objects given to the host), ``on_crash``
    (after the host answered its waits ``UNAVAILABLE``), ``settled`` during the liveness phase,
    and ``final_check``/``check_history`` at the end (raise ``Violation``/``SimulationFailure``).
    Host duties (ticks, the grace command, snapshots) are the host's own, not the workload's.
    """

    def attach(self, sim: Engine) -> None: ...

    def new_state_machine(self) -> StateMachine: ...

    def on_event(self, payload: Any, liveness: bool) -> None: ...

    def on_applied(self, node: SimNode, entry: Entry, outcomes: list[Outcome]) -> None: ...

    def on_crash(self, node: SimNode) -> None: ...

    def settled(self) -> bool: ...

    def final_check(self) -> None: ...

    def check_history(self) -> tuple[int, int]: ...
