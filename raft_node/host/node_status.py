"""One node's Raft status, as ``raft_status``, the REST API and the admin show it.

Kept apart from ``NodeHost`` (which only passes in what it holds) because it is a read-only
view: the fields operators see, and the one side effect a leader's report has, keeping the
``follower_lag`` gauge current for Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from raft_node.core.messages import NodeId
from raft_node.core.raft import Raft
from raft_node.core.ready import Role


def node_status(
    raft: Raft,
    now: float,
    last_contact: Mapping[NodeId, float],
    follower_lag: Any,
    address: Callable[[NodeId], str],
) -> dict[str, Any]:
    """``raft``'s status at monotonic time ``now``. ``last_contact`` holds when each peer was
    last heard from, ``follower_lag`` is the metrics gauge a leader sets per peer, and
    ``address`` turns a node id into ``host:port`` ("" when unknown)."""
    last_index = raft.log.last_index()
    status: dict[str, Any] = {
        "id": raft.id,
        "address": address(raft.id),
        "role": raft.role.name.lower(),
        "term": raft.term,
        "leader": raft.lead,
        "leader_address": address(raft.lead),
        "commit": raft.log.committed,
        "applied": raft.log.applied,
        "last_index": last_index,
        "snapshot_index": raft.log.snapshot.index,
        "last_contact_ms": None,
        "peers": {},
    }
    if raft.lead and raft.lead != raft.id and raft.lead in last_contact:
        status["last_contact_ms"] = round((now - last_contact[raft.lead]) * 1000)
    if raft.role == Role.LEADER:
        for peer, pr in raft.prs.items():
            if peer == raft.id:
                continue
            seen = last_contact.get(peer)
            lag = max(0, last_index - pr.match)
            follower_lag.labels(peer=peer).set(lag)
            status["peers"][peer] = {
                "match": pr.match,
                "lag": lag,
                "state": pr.state.name.lower(),
                "last_contact_ms": None if seen is None else round((now - seen) * 1000),
            }
    return status
