"""The raft client's typed errors: what a caller of ``RaftClient``/``AsyncRaftClient`` catches.

Every error carries ``code``, ``message`` and ``details``, the fields of the wire's error record
(``client_protocol.ErrorRecord``), so a layer above (the coordination clients, the REST API)
can map it by code without reading its text:

- ``Rejected(code, message, details)``: the state machine refused the command; retrying will
  not help. ``code`` is the state machine's (``deadlock``, ``bad_command``...); this generic
  class is what the engine knows, and the product above maps codes to its own subclasses.
- ``Timeout`` (``timeout``): the deadline passed while the cluster was reachable; the outcome of
  a write is unknown (it may still be applied; a retry with the same client id and sequence
  number is safe, and the client does exactly that inside the deadline).
- ``ClusterUnavailable`` (``unavailable``): no node could be reached, or no leader was known,
  until the deadline.
- ``NotLeader`` (``not_leader``): the node is not the leader (``leader`` names the one it knows).
- ``BadRequest`` (``bad_request``): the request itself is malformed.
- ``AuthenticationFailed`` (``auth_failed``): the cluster refused our credentials: the cluster
  secret, or in TLS our certificate (or we refused the node's).
"""

from __future__ import annotations

import ssl
from typing import Any

from raft_node.transport import client_protocol as p
from raft_node.transport.auth import TLSRefused


class RaftError(Exception):
    """Base class of client errors: ``code`` (stable, for programs), ``message`` (for people)
    and ``details`` (a dict, for programs)."""

    code = "raft_error"

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
