"""Membership requests on a node: list the configuration, or make one single-server change.

The core decides what a change may be (``raft_node.core.conf``); this module adds what only a
running node knows:

- **addresses.** A configuration entry carries the address of every member in its context
  (``{"addresses": {id: "host:port"}}``), so any node, including one started later with an empty
  data directory, can reach the members of the configuration in force. Until the first change,
  the addresses are the static ``NodeConfig.cluster``.
- **waiting.** A change is answered once its entry is applied here (committed), or failed if
  another entry took its place (the leader lost leadership first) or ``request_timeout`` passed.
- **progress.** ``list`` on the leader reports how far behind each member is (entries, and bytes
  of those still in the leader's log, or "needs a snapshot"), which ``add`` prints while a learner
  catches up and uses to decide when to promote it.

Refusals are ``rejected`` errors whose codes the clients map to typed exceptions:
``member_exists``, ``unknown_member``, ``not_learner``, ``last_voter``, ``change_pending``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from raft_node.core.conf import ADD_LEARNER, ConfChange, ConfChangeRefused, ConfState
from raft_node.core.messages import NodeId
from raft_node.host.config import NodeConfig
from raft_node.host.node_host import NodeHost
from raft_node.transport import client_protocol as p

CODES = {
    "exists": "member_exists",
    "unknown_node": "unknown_member",
    "not_learner": "not_learner",
    "last_voter": "last_voter",
    "pending": "change_pending",
    "not_ready": "change_pending",
}


def addresses_of(conf: ConfState, static: dict[NodeId, tuple[str, int]]) -> dict[NodeId, str]:
    """Every member's ``host:port``: from the configuration's context, else the static map."""
    context = conf.context if isinstance(conf.context, dict) else {}
    known = {n: f"{h}:{port}" for n, (h, port) in static.items()}
    known.update(context.get("addresses") or {})
    return {n: known[n] for n in conf.members() if n in known}


class MembershipService:
    def __init__(self, host: NodeHost, config: NodeConfig) -> None:
        self.host = host
        self.config = config

    def describe(self) -> dict[str, Any]:
        """The configuration in force here, with each member's progress when we lead."""
        host = self.host
        conf = host.configuration
        raft = host.raw.raft
        out: dict[str, Any] = {
            "voters": list(conf.voters),
            "learners": list(conf.learners),
            "addresses": addresses_of(conf, self.config.cluster),
            "leader": raft.lead,
            "index": raft.log.last_index(),
            "pending": raft.pending_conf_index > raft.log.committed,
            "progress": {},
        }
        if host.is_leader:
            last = raft.log.last_index()
            for node, pr in raft.prs.items():
                behind = max(0, last - pr.match)
                out["progress"][node] = {
                    "match": pr.match,
                    "behind": behind,
                    "bytes_behind": self._bytes_behind(pr.match),
                    "state": pr.state.name.lower(),
                }
        return out

    def _bytes_behind(self, match: int) -> int | None:
        """Bytes of the entries after ``match`` (None: some are compacted, a snapshot goes)."""
        log_ = self.host.raw.raft.log
        if match < log_.offset:
            return None
        entries = log_.slice(match + 1, log_.last_index() + 1) if match < log_.last_index() else []
        return sum(e.size() for e in entries)

    async def handle(self, req: p.Members, hint: str) -> list:
        host = self.host
        if not host.is_leader:
            return p.err(req.req_id, p.NOT_LEADER, "membership is served by the leader", hint)
        if req.op == "list":
            return p.ok(req.req_id, self.describe(), hint)
        conf = host.configuration
        addresses = addresses_of(conf, self.config.cluster)
        if req.op == ADD_LEARNER:
            if not _is_address(req.address):
                return p.err(req.req_id, p.BAD_REQUEST, "add_learner needs host:port")
            addresses[req.node] = req.address
        elif req.op == "remove":
            addresses.pop(req.node, None)
        try:
            index, term, _ = host.propose_conf_change(
                ConfChange(req.op, req.node, {"addresses": addresses})
            )
        except ConfChangeRefused as exc:
            code = CODES.get(exc.code)
            if code is None:  # not_leader: lost it just now
                return p.err(req.req_id, p.NOT_LEADER, str(exc), hint)
            return p.rejected(req.req_id, code, str(exc), {"node": req.node})
        host.wake()
        deadline = time.monotonic() + self.config.request_timeout
        while (outcome := host.conf_change_outcome(index, term)) is None:
            if time.monotonic() > deadline:
                message = f"change at index {index} not committed in time; it may still be"
                return p.err(req.req_id, p.TIMEOUT, message)
            await asyncio.sleep(0.01)
        if not outcome:
            return p.err(req.req_id, p.UNAVAILABLE, "leadership moved before the change committed")
        return p.ok(req.req_id, {**self.describe(), "index": index}, hint)


def _is_address(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536
