"""What the cluster holds right now, gathered for the admin pages (and ``/api/cluster/``).

Read-only. The primitives' queries do the work; this module only asks the nodes and joins the
answers for display: the leader's view of each follower, the locks each session holds or waits
for, a queue with its dead-letter queue. Every read is linearizable (ReadIndex on the leader)
except node status, which each node answers about itself.

Times in the primitives are *log time* (the leader's clock stamped into entries), not wall time.
"Time left" below is measured from the log time of the last applied entry, which stands still
while nothing is applied; keepalives and ticks keep it within a fraction of a TTL of now.
"""

from __future__ import annotations

from typing import Any

from coordination.client import cache as cache_client
from coordination.client import operations as ops
from coordination.client.coordinator import Coordinator
from coordination.node.membership import Membership
from coordination.primitives.queues_state import DLQ_SUFFIX, is_dlq
from raft_node.client import RaftError, status_probe
from raft_node.client.status_probe import STATUS_TIMEOUT

NODE_TIMEOUT = STATUS_TIMEOUT  # per node, all at once: a dead node must not hold the page
LOCKS_SHOWN = 100  # locks inspected per page (one query each)
MESSAGES_SHOWN = 20  # ready messages and dead letters listed per queue
KEYS_SHOWN = 100  # cache keys listed per page
PREVIEW_CHARS = 120  # payload bytes shown per message


# -- nodes ----------------------------------------------------------------------------------------


def node_statuses(timeout: float = NODE_TIMEOUT) -> list[dict[str, Any]]:
    """Each configured node's own status answer, or ``{id, address, error, unreachable}``;
    asked directly, in parallel and once (``raft_node.client.status_probe``), so a dead or
    paused node costs ``timeout`` once, not a client's retries."""
    from coordination.node import node_settings

    conf = node_settings.coordination()
    _, client_ssl = node_settings.ssl_contexts(conf)
    members = list(node_settings.cluster_addresses().items())
    secret = node_settings.cluster_secret(conf)
    return status_probe.node_statuses(members, secret, timeout=timeout, ssl=client_ssl)


def membership_client(coord: Coordinator) -> Membership:
    return Membership(coord.new_client(), secret=coord.secret, ssl=coord.ssl)


def membership(coord: Coordinator) -> dict[str, Any] | None:
    """The membership in force, as the leader reports it, one row per member (role, address,
    entries behind); None when no leader answers (the node table still shows each node)."""
    try:
        state = membership_client(coord).list()
    except (RaftError, OSError, ValueError):
        return None
    rows = []
    for node in [*state["voters"], *state["learners"]]:
        progress = state["progress"].get(node, {})
        rows.append(
            {
                "id": node,
                "role": "voter" if node in state["voters"] else "learner",
                "address": state["addresses"].get(node, ""),
                "behind": progress.get("behind"),
                "replication": progress.get("state"),
            }
        )
    return {"members": rows, "pending": state["pending"]}


def cluster(timeout: float = NODE_TIMEOUT) -> dict[str, Any]:
    """Node statuses with what only the leader knows about each follower added: ``lag``
    (entries of the leader's log it lacks), ``replication`` (probe/replicate/snapshot) and
    ``leader_contact_ms`` (since the leader last heard from it). ``apply_backlog`` is a node's
    committed-but-not-applied entries. With two nodes claiming leadership (a deposed leader
    that has not heard of the new term yet), the higher term is the leader."""
    nodes = node_statuses(timeout)
    claims = [n for n in nodes if n.get("role") == "leader"]
    leader = max(claims, key=lambda n: n["term"]) if claims else None
    peers = leader["peers"] if leader is not None else {}
    rows = []
    for node in nodes:
        row = {**node, "is_leader": leader is not None and node["id"] == leader["id"]}
        if "error" not in node:
            row["apply_backlog"] = node["commit"] - node["applied"]
            peer = peers.get(node["id"])
            if row["is_leader"]:
                row["lag"] = 0
            elif peer is not None:
                row["lag"] = peer["lag"]
                row["replication"] = peer["state"]
                row["leader_contact_ms"] = peer["last_contact_ms"]
        rows.append(row)
    return {"leader": leader["id"] if leader is not None else None, "nodes": rows}


# -- sessions and locks ---------------------------------------------------------------------------


def log_now(sessions: list[dict[str, Any]]) -> int | None:
    """The log time of the last applied entry, read off any session row (None without one)."""
    for row in sessions:
        if row.get("expires_in_ms") is not None:
            return row["expires_ms"] - row["expires_in_ms"]
    return None


def locks(coord: Coordinator, prefix: str = "", limit: int = LOCKS_SHOWN) -> dict[str, Any]:
    """Locks with holders or waiters (by name, up to ``limit``), each with its holders and
    waiters in grant/arrival order, and the refused deadlocks the cluster remembers."""
    listed = coord.locks(prefix, limit + 1)
    shown = [coord.inspect_lock(row["name"]) for row in listed[:limit]]
    shown = [lock for lock in shown if lock["holders"] or lock["waiters"]]  # freed meanwhile
    now = log_now(coord.sessions())
    for lock in shown:
        for waiter in lock["waiters"]:
            waiter["left_ms"] = None if now is None else max(0, waiter["deadline_ms"] - now)
    return {
        "locks": shown,
        "truncated": len(listed) > limit,
        "deadlocks": list(reversed(coord.deadlocks())),  # newest first
    }


def sessions(coord: Coordinator, limit: int = LOCKS_SHOWN) -> dict[str, Any]:
    """Live sessions, each with the locks it holds (name, token) and waits for (from the first
    ``limit`` locks: say so when there are more)."""
    rows = coord.sessions()
    by_id = {row["session"]: {**row, "holds": [], "waits": []} for row in rows}
    lock_rows = locks(coord, limit=limit)
    for lock in lock_rows["locks"]:
        for hold in lock["holders"]:
            if hold["session"] in by_id:
                by_id[hold["session"]]["holds"].append({**hold, "lock": lock["name"]})
        for wait in lock["waiters"]:
            if wait["session"] in by_id:
                by_id[wait["session"]]["waits"].append({**wait, "lock": lock["name"]})
    return {"sessions": list(by_id.values()), "locks_truncated": lock_rows["truncated"]}


# -- queues ---------------------------------------------------------------------------------------


def queues(coord: Coordinator) -> list[dict[str, Any]]:
    """Every queue except the dead-letter queues themselves (each is counted in its queue's
    ``dead_letters``), with ``priorities``: ``(priority, ready count)``, highest first."""
    return [
        {**row, "priorities": _priorities(row)} for row in coord.queues() if not is_dlq(row["name"])
    ]


def queue(coord: Coordinator, name: str, limit: int = MESSAGES_SHOWN) -> dict[str, Any]:
    """One queue's stats, its next ready messages and its dead letters (``UnknownQueue`` if it
    does not exist)."""
    handle = coord.queue(name)
    stats, ready, dead = handle.stats(), handle.peek(limit), handle.dead_letters(limit)
    return {
        "stats": {**stats, "priorities": _priorities(stats)},
        "ready": [_message(m) for m in ready],
        "dead_letters": [_message(m) for m in dead],
        "dlq": name + DLQ_SUFFIX,
    }


def _priorities(stats: dict[str, Any]) -> list[tuple[int, int]]:
    by_priority = stats["depth_by_priority"]
    return [(int(p), by_priority[p]) for p in sorted(by_priority, key=int, reverse=True)]


def _message(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "preview": preview(row["payload"])}


def preview(payload: bytes) -> str:
    """The start of a payload as text (undecodable bytes replaced), marked when cut."""
    text = payload[: PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
    if len(text) > PREVIEW_CHARS or len(payload) > PREVIEW_CHARS * 4:
        return text[:PREVIEW_CHARS] + "…"
    return text


# -- cache ----------------------------------------------------------------------------------------


def cache(coord: Coordinator, prefix: str = "", limit: int = KEYS_SHOWN) -> dict[str, Any]:
    """Cluster cache stats, keys in cluster memory (by key, up to ``limit``, with versions), and
    two hit rates that measure different things: ``fills`` (cluster-wide: L1 misses of
    linearizable clients in every process, and how many found the key) and ``l1`` (this
    process's L1s: reads served without asking the cluster)."""
    stats = coord.cache_stats()
    keys = coord.cache_keys(prefix, limit + 1)
    now = log_now(coord.sessions())
    for row in keys:
        expires = row["expires_ms"]
        row["left_ms"] = None if expires is None or now is None else max(0, expires - now)
    fills = stats["fills_total"]
    found = stats["fill_hits_total"]
    return {
        "stats": stats,
        "keys": keys[:limit],
        "truncated": len(keys) > limit,
        "fills": {
            "total": fills,
            "in_memory": found,
            "evicted": stats["fill_evicted_total"],
            "absent": fills - found - stats["fill_evicted_total"],
            "rate": found / fills if fills else None,
        },
        "l1": cache_client.process_stats(),
    }


# -- rate limits ----------------------------------------------------------------------------------


def ratelimits(coord: Coordinator, prefix: str = "", limit: int = KEYS_SHOWN) -> dict[str, Any]:
    """Buckets still refilling, by key (one more asked, to tell whether the list is cut), each
    with its rate shown as ``count/period``; and the part's totals."""
    rows = coord.run(ops.ratelimit_list(prefix, limit + 1))
    for row in rows:
        row["rate"] = _rate_text(row["count"], row["period_ms"])
    return {
        "buckets": rows[:limit],
        "truncated": len(rows) > limit,
        "stats": coord.run(ops.ratelimit_stats()),
    }


def _rate_text(count: int, period_ms: int) -> str:
    units = {1_000: "s", 60_000: "m", 3_600_000: "h"}
    return f"{count}/{units[period_ms]}" if period_ms in units else f"{count}/{period_ms}ms"
