"""The state machine contract (hashicorp/raft's FSM shape) the node host applies entries to.

Implementations must be deterministic: the same entries in the same order give the same results
and the same snapshot bytes on every node. So no wall clock, no randomness, no I/O and no
iteration over hash-ordered containers where order matters. Time needed by leases arrives inside
the command (stamped by the leader when it proposes).
"""

from __future__ import annotations

from typing import Any, Protocol


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> Any:
        """Apply one committed command; the return value goes back to the proposing client."""
        ...

    def snapshot(self) -> bytes:
        """Serialize the whole state (taken at the last applied index)."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's bytes."""
        ...
