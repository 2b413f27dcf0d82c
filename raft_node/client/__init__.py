"""Python clients of a raftsync cluster: ``RaftClient`` (blocking, for Django views and Celery
workers) and ``AsyncRaftClient`` (asyncio, pipelined).

Both keep one authenticated connection, prefer the leader (every response names it), and retry
across leader changes with jittered exponential backoff until the call's deadline; that policy
is one sans-I/O module (``policy``) both follow. Errors are typed (``errors``).

Modules: ``errors`` (the typed errors), ``policy`` (addresses, targets, backoff, the retry
policy of one call), ``connection`` (the pipelined asyncio connection), ``async_client``,
``sync_client`` and ``watcher`` (WATCH event streams).
"""

from raft_node.client.async_client import AsyncRaftClient
from raft_node.client.connection import AsyncConnection
from raft_node.client.errors import (
    AuthenticationFailed,
    BadRequest,
    ClusterUnavailable,
    NotLeader,
    OutcomeUnknown,
    RaftError,
    Rejected,
    Timeout,
)
from raft_node.client.policy import Address, parse_addresses
from raft_node.client.sync_client import RaftClient
from raft_node.client.watcher import Watcher

__all__ = [
    "Address",
    "AsyncConnection",
    "AsyncRaftClient",
    "AuthenticationFailed",
    "BadRequest",
    "ClusterUnavailable",
    "NotLeader",
    "OutcomeUnknown",
    "RaftClient",
    "RaftError",
    "Rejected",
    "Timeout",
    "Watcher",
    "parse_addresses",
]
