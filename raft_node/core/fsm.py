"""The state machine contract (hashicorp/raft's FSM shape) the node host applies entries to.

Implementations must be deterministic: the same entries in the same order give the same results
and the same snapshot bytes on every node. So no wall clock, no randomness, no I/O and no
iteration over hash-ordered containers where order matters.

Time needed by leases and TTLs arrives as ``now_ms``: the leader stamps its clock into each
command when it proposes it, and ``raft_node.host.applier`` turns those stamps into a log clock that
never goes backwards (a new leader's clock may be behind its predecessor's). Every replica sees
the same ``now_ms`` for the same entry, so expiry decisions replicate exactly.
"""

from __future__ import annotations

from typing import Any, Protocol


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes, now_ms: int) -> Any:
        """Apply one committed command; the return value goes back to the proposing client.

        Raise ``raft_node.host.applier.CommandRejected`` for a command that is well-formed but not
        allowed (the client gets a typed ``Rejected`` error; state must be left unchanged).
        """
        ...

    def query(self, query: bytes) -> Any:
        """Answer a read-only query against the current state (served after ReadIndex)."""
        ...

    def snapshot(self) -> bytes:
        """Serialize the whole state (taken at the last applied index)."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's bytes."""
        ...


# Optional hooks a state machine may define (found by ``getattr``; see raft_node.host.applier):
#   drain_completions() -> [(token, ok, value)]   complete earlier ``Pending`` requests
#   drain_events() -> [(topic, payload)]          pushed to WATCH subscribers of ``topic``
#   next_deadline() -> int | None, tick_command() -> bytes, leader_command() -> bytes | None
