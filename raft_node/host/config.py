"""A node's configuration: ``NodeConfig`` (checked before anything starts) and ``parse_cluster``.

Plain data, no I/O: the settings layer (``coordination.node.runtime``) builds a ``NodeConfig``
from resolved settings, the asyncio server (``raft_node.server``) wires a node from it, and the
request handler (``raft_node.host.requests``) reads its addresses and timeouts. Kept apart from
the server so neither of those has to import the process that runs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft_node.core.messages import NodeId

Address = tuple[str, int]

APPEND_BATCH_BYTES = 1 << 20
"""The core's ``Config.max_size_per_msg`` as the server leaves it: entries per append message.
An append carries up to this much, or one larger entry (a client proposal, bounded by the client
frame), so a peer frame must hold ``max_frame_bytes + APPEND_BATCH_BYTES``."""


def parse_address(text: str) -> Address:
    """``"127.0.0.1:7001"`` -> ``("127.0.0.1", 7001)``; ``ValueError`` otherwise."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"bad address {text!r}: expected host:port")
    return (host, int(port))


def parse_cluster(spec: str) -> dict[NodeId, Address]:
    """``"n1=127.0.0.1:7001,n2=127.0.0.1:7002"`` -> ``{"n1": ("127.0.0.1", 7001), ...}``."""
    cluster: dict[NodeId, Address] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        node, sep, addr = part.partition("=")
        host, colon, port = addr.rpartition(":")
        if not sep or not colon or not node or not host or not port.isdigit():
            raise ValueError(f"bad cluster member {part!r}: expected id=host:port")
        if node in cluster:
            raise ValueError(f"node id {node!r} appears twice in the cluster")
        cluster[node] = (host, int(port))
    if not cluster:
        raise ValueError("cluster is empty")
    return cluster


@dataclass
class NodeConfig:
    """Everything one node process needs to know; ``__post_init__`` validates it."""

    node_id: NodeId
    cluster: dict[NodeId, Address]
    data_dir: Path
    secret: bytes
    tick_ms: int = 10
    election_ticks: int = 15
    heartbeat_ticks: int = 2
    snapshot_every: int = 100_000
    snapshot_keep: int = 5_000
    max_frame_bytes: int = 4 << 20
    max_peer_frame_bytes: int = 8 << 20  # append batches; snapshots are streamed in chunks
    snapshot_chunk_bytes: int = 1 << 20  # data per snapshot chunk frame
    max_inflight: int = 256
    fsync: bool = True
    request_timeout: float = 5.0
    metrics_port: int | None = None
    ssl_server: Any = None
    ssl_client: Any = None
    # Builds fresh (ssl_server, ssl_client) from the certificate files, for a reload on SIGHUP
    # (``NodeServer.reload_tls``); None when the node has no TLS or no files to re-read.
    tls_reload: Callable[[], tuple[Any, Any]] | None = None
    listen: Address | None = None  # default: this node's address in ``cluster``
    # The initial voters when they are not all of ``cluster``: a node joining a running cluster
    # knows every member's address but is not a voter itself (``--join``). Once the log holds a
    # configuration, that one is in force (``raft_node.core.conf``).
    voters: list[NodeId] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a config the node could not run with, naming the field, before anything
        starts (a wrong type here used to surface only inside a background task)."""
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"NodeConfig.node_id must be a non-empty string, got {self.node_id!r}")
        if not isinstance(self.cluster, dict) or not self.cluster:
            raise ValueError("NodeConfig.cluster must be a non-empty dict of id -> (host, port)")
        addresses = [(f"cluster[{node!r}]", addr) for node, addr in self.cluster.items()]
        if self.listen is not None:
            addresses.append(("listen", self.listen))
        for name, addr in addresses:
            if not _is_address(addr):
                raise ValueError(f"NodeConfig.{name} must be (host, port), got {addr!r}")
        if self.node_id not in self.cluster:
            raise ValueError(f"node id {self.node_id!r} is not in the cluster {list(self.cluster)}")
        if not isinstance(self.secret, bytes) or not self.secret:
            raise ValueError("a cluster secret is required (NodeConfig.secret: non-empty bytes)")
        self.data_dir = Path(self.data_dir)
        for name in (
            "tick_ms",
            "election_ticks",
            "heartbeat_ticks",
            "snapshot_every",
            "max_frame_bytes",
            "max_peer_frame_bytes",
            "max_inflight",
        ):
            _check_int(name, getattr(self, name), low=1)
        # The peer frame limit bounds append messages only (snapshots are chunked), so it must
        # hold the largest one: refused here rather than as an endless "message_too_large".
        _check_int(
            "max_peer_frame_bytes",
            self.max_peer_frame_bytes,
            low=self.max_frame_bytes + APPEND_BATCH_BYTES,
        )
        # A chunk frame (data + 18 bytes of headers) must fit in a peer frame.
        _check_int(
            "snapshot_chunk_bytes",
            self.snapshot_chunk_bytes,
            low=4096,
            high=self.max_peer_frame_bytes - 64,
        )
        _check_int("snapshot_keep", self.snapshot_keep, low=0)
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError("NodeConfig: heartbeat_ticks must be less than election_ticks")
        if self.metrics_port is not None:
            _check_int("metrics_port", self.metrics_port, low=0, high=65535)
        timeout = self.request_timeout
        if not (_is_number(timeout) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"NodeConfig.request_timeout must be a number > 0, got {timeout!r}")
        if not isinstance(self.fsync, bool):
            raise ValueError(f"NodeConfig.fsync must be a bool, got {self.fsync!r}")


def _is_address(addr: Any) -> bool:
    return (
        isinstance(addr, tuple)
        and len(addr) == 2
        and isinstance(addr[0], str)
        and _is_int(addr[1])
        and 0 <= addr[1] <= 65535
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"NodeConfig.{name} must be an integer {bound}, got {value!r}")
