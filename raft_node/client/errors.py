"""The raft client's typed errors: what a caller of ``RaftClient``/``AsyncRaftClient`` catches.

Every error carries ``code``, ``message`` and ``details``, the fields of the wire's error record
(``client_protocol.ErrorRecord``), so a layer above (the coordination clients, the REST API)
can map it by code without reading its text:

- ``Rejected(code, message, details)``: the state machine refused the command; retrying will
  not help. ``code`` is the state machine's (``deadlock``, ``bad_command``...); this generic
  class is what the engine knows, and the product above maps codes to its own subclasses.
- ``OutcomeUnknown`` (``outcome_unknown``), a ``Timeout``: a *write* was sent and no definite
  answer came back before the deadline (no answer, the connection lost after sending, a leader
  that lost leadership or stopped with the entry in its log). It may have been applied, or may
  still be. It carries the request id ``(client_id, seq)``; ``resolve`` on the client that
  raised it re-sends that very request, and the cluster's exactly-once table answers with the
  recorded result (or applies it, once, if it never was). See ``RESOLVE_WINDOW_S``.
- ``Timeout`` (``timeout``): a read (or status, transfer) got no answer in time.
- ``ClusterUnavailable`` (``unavailable``): no node could be reached, or no leader was known,
  until the deadline. For a write it is *definite*: every attempt failed before the request
  was accepted anywhere, so it was not applied and never will be. A ``resolve`` never ends so:
  its write was already in doubt, and finding no leader now says nothing about the earlier
  attempt, so it raises ``OutcomeUnknown`` again.
- ``NotLeader`` (``not_leader``): the node is not the leader (``leader`` names the one it knows).

``definite`` (a class attribute) says which errors mean "it did not happen": True for all but
``Timeout`` and ``OutcomeUnknown``.
- ``BadRequest`` (``bad_request``): the request itself is malformed.
- ``AuthenticationFailed`` (``auth_failed``): the cluster refused our credentials: the cluster
  secret, or in TLS our certificate (or we refused the node's).
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from raft_node.transport import client_protocol as p
from raft_node.transport.auth import TLSRefused


class RaftError(Exception):
    """Base class of client errors: ``code`` (stable, for programs), ``message`` (for people)
    and ``details`` (a dict, for programs)."""

    code = "raft_error"
    definite = True  # the request surely had no effect (False: it may have had)

    def __init__(self, message: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details) if details else {}

    @classmethod
    def from_record(cls, code: str, message: str, details: dict[str, Any]) -> RaftError:
        """This error built from a wire record's fields (the one constructor every error class
        shares, so a table of codes can build any of them)."""
        exc = cls(message, details)
        exc.code = code
        return exc


class NotLeader(RaftError):
    code = p.NOT_LEADER

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(message, {"leader": leader} if leader else None)
        self.leader = leader

    @classmethod
    def from_record(cls, code: str, message: str, details: dict[str, Any]) -> RaftError:
        return cls(message, str(details.get("leader", "")))


class Timeout(RaftError):
    code = p.TIMEOUT
    definite = False


# How long after a write was first sent ``resolve`` may re-send it. The applier remembers each
# client id's latest (seq, result) until that id has been unseen for an hour of log time
# (``raft_node.host.applier.DEFAULT_CLIENT_TTL_MS``); after that a re-sent request would be
# taken for a new one and could apply twice. Half the hour leaves room for a leader's clock
# running ahead of ours.
RESOLVE_WINDOW_S = 1800.0


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """What ``resolve`` needs to re-send a write: its id, its body, and when it was first sent
    (``time.monotonic()``, to refuse once the cluster may have forgotten it)."""

    client_id: str
    seq: int
    body: bytes = field(repr=False)
    sent_at: float


class OutcomeUnknown(Timeout):
    """A write may or may not have been applied (see the module docstring). ``request_id`` is
    ``(client_id, seq)``; ``resolve(exc)`` on the client (or the coordinator) that raised it
    learns the final outcome. A ``Timeout``, so ``except Timeout`` code keeps working.

    Built from a wire record or unpickled it still names the request, but cannot be resolved:
    the body stays in the process that sent it."""

    code = "outcome_unknown"

    def __init__(
        self,
        message: str = "",
        details: dict[str, Any] | None = None,
        write: PendingWrite | None = None,
    ) -> None:
        if write is not None:
            details = {**(details or {}), "client_id": write.client_id, "seq": write.seq}
        super().__init__(message, details)
        self.write = write
        self.args = (message, self.details)  # rebuilt as cls(*args) (pickle, Celery)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled without the body and send time: ``sent_at`` is this host's monotonic clock,
        meaningless elsewhere, so a copy names the request but cannot re-send it."""
        return (type(self), self.args)

    @property
    def request_id(self) -> tuple[str, int]:
        return str(self.details.get("client_id", "")), int(self.details.get("seq", 0))

    def resend(self, window: float = RESOLVE_WINDOW_S) -> PendingWrite:
        """The write to re-send, if it is still safe to (``ValueError`` if it cannot be
        resolved at all, ``OutcomeUnknown`` again once the window has passed)."""
        if self.write is None:
            raise ValueError(f"request {self.request_id} cannot be resolved here: no body")
        age = time.monotonic() - self.write.sent_at
        if age > window:
            raise OutcomeUnknown(
                f"request {self.request_id} was sent {age:.0f} s ago, beyond the {window:.0f} s "
                "in which the cluster surely remembers its outcome; re-sending could apply it "
                "twice, so it stays unknown",
                write=self.write,
            )
        return self.write


class ClusterUnavailable(RaftError):
    code = p.UNAVAILABLE


class BadRequest(RaftError):
    code = p.BAD_REQUEST


class AuthenticationFailed(RaftError):
    """The cluster refused our credentials (wrong cluster secret, a TLS certificate one side
    does not accept, TLS on one side only): not retried, since only a configuration change
    fixes it."""

    code = "auth_failed"


def tls_refusal(exc: BaseException, addr: tuple[str, int]) -> AuthenticationFailed | None:
    """``AuthenticationFailed`` (``details["tls"]`` set) for a TLS failure that a retry on the
    same node cannot fix, else None (a reset in the middle of a TLS handshake is an ordinary
    network failure). The clients try the other nodes before raising it (``Attempts.refused``).

    Refusals: we do not accept the node's certificate; the node sent an alert; the node
    answered in plain text (``WRONG_VERSION_NUMBER``); the node closed the connection right
    after the handshake (``TLSRefused``: it refused our certificate)."""
    if isinstance(exc, TLSRefused):
        why = "refused_by_node"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        why = "node_certificate_not_trusted"
    elif isinstance(exc, ssl.SSLError) and (
        "ALERT" in str(exc.reason or "") or exc.reason == "WRONG_VERSION_NUMBER"
    ):
        why = str(exc.reason)
    else:
        return None
    return AuthenticationFailed(
        f"TLS with {addr[0]}:{addr[1]} failed: {exc} (check this client's TLS_CERT/TLS_KEY, "
        "that the nodes' TLS_CA holds its issuer, and that its TLS_CA holds the nodes' CA)",
        {"tls": why},
    )


class Rejected(RaftError):
    """The state machine refused the command with ``code`` (its own vocabulary)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.code = code
        self.args = (code, message, self.details)  # rebuilt as cls(*args) (pickle, Celery)

    @classmethod
    def from_record(cls, code: str, message: str, details: dict[str, Any]) -> RaftError:
        return cls(code, message, details)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def raise_for(resp: p.Response) -> None:
    """Raise the error a final (not retried) error response stands for."""
    error = resp.error
    if error is None:
        return
    if resp.kind == p.REJECTED:
        raise Rejected(error.code, error.message, error.details)
    if resp.kind == p.BAD_REQUEST:
        raise BadRequest(error.message, error.details)
