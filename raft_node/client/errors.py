"""The raft client's typed errors: what a caller of ``RaftClient``/``AsyncRaftClient`` catches.

- ``Rejected(code, message)``: the state machine refused the command; retrying will not help.
- ``Timeout``: the deadline passed while the cluster was reachable; the outcome of a write is
  unknown (it may still be applied; a retry with the same client id and sequence number is safe,
  and the client does exactly that inside the deadline).
- ``ClusterUnavailable``: no node could be reached, or no leader was known, until the deadline.
- ``NotLeader``: only raised to callers that disabled retries (``retry=False``).
- ``BadRequest``: the request itself is malformed.
- ``AuthenticationFailed``: the cluster refused our credentials.
"""

from __future__ import annotations

from raft_node.transport import client_protocol as p


class RaftError(Exception):
    """Base class of client errors."""


class NotLeader(RaftError):
    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(message)
        self.leader = leader


class Timeout(RaftError):
    pass


class ClusterUnavailable(RaftError):
    pass


class BadRequest(RaftError):
    pass


class AuthenticationFailed(RaftError):
    """The cluster refused our credentials (wrong cluster secret): not retried."""


class Rejected(RaftError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def raise_for(resp: p.Response) -> None:
    """Raise the error a final (not retried) error response stands for."""
    if resp.code == p.REJECTED:
        code, _, message = resp.message.partition(": ")
        raise Rejected(code, message)
    if resp.code == p.BAD_REQUEST:
        raise BadRequest(resp.message)
