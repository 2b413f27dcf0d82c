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

from dataclasses import dataclass
from typing import Any, Protocol


class CommandRejected(Exception):
    """A command the state machine refuses. The refused operation changes nothing a client
    can observe through it (bookkeeping such as a replicated log of refused deadlocks may
    record it, deterministically on every replica).

    ``code`` identifies the refusal for programs, ``message`` explains it to people, and
    ``details`` (msgpack-able values under string keys, deterministic: the rejection is
    remembered for retries and snapshotted) says more to programs. All three reach the client
    as they are, in the error record of the response; nothing is formatted into a string.

    Part of the contract (not of the host) because state machines raise it and the product's
    primitives, which may import only this module of the core, raise it too."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details) if details else {}

    def record(self) -> tuple[str, str, dict[str, Any]]:
        """The rejection as an outcome's value: ``(code, message, details)``."""
        return (self.code, self.message, self.details)


@dataclass(frozen=True, slots=True)
class Pending:
    """Returned by ``StateMachine.apply`` for a command that completes later: ``token`` is the
    state machine's own id for the wait (use the entry index: unique and deterministic). The
    completion is reported by the optional ``drain_completions()`` hook as
    ``(token, ok, value)``; ``raft_node.host.applier`` turns it into the answer of the original
    request."""

    token: int


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes, now_ms: int) -> Any:
        """Apply one committed command; the return value goes back to the proposing client.

        Raise ``CommandRejected`` for a command that is well-formed but not allowed (the client
        gets a typed ``Rejected`` error; state must be left unchanged). Return ``Pending`` for a
        command that completes later.
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
#   validate(command: bytes) -> None              the leader calls it before proposing a client
#       command; a ``CommandRejected`` it raises is the client's answer, and nothing is appended
#       (garbage must not cost a log entry on every replica). It must depend on the bytes alone,
#       never on state, and refuse a command only if ``apply`` would refuse it the same way in any
#       state (or if no client may send it, like the machine's own tick): ``apply`` still checks
#       everything, since entries no leader validated reach it too (system commands, entries
#       from a leader running older code).
