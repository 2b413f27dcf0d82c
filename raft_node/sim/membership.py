"""Membership changes under the simulator's faults.

With ``membership=True`` a run starts with spare machines that are not members (``n4``,
``n5``... beyond the initial voters) and, as one more kind of fault, asks the leader for a
single-server change: add a non-member as learner, promote a learner, or remove a member (the
leader itself included). Sometimes it asks for a second change at once, which a correct leader
refuses while the first is pending: the injected bugs (``raft_node.sim.bugs``) accept it.

The checks that matter here are the ordinary ones (one leader per term, log matching, state
machine safety...) plus ``commit_quorum``: when a leader's commit index advances, a majority
of the voters of the configuration in force on it must have stored that entry.
"""

from __future__ import annotations

from random import Random
from typing import Any

from raft_node.core.conf import ADD_LEARNER, PROMOTE, REMOVE, ConfChange, ConfChangeRefused
from raft_node.core.messages import NodeId
from raft_node.core.raft import Raft
from raft_node.core.ready import Role
from raft_node.sim.invariants import Violation


def pick_change(rng: Random, ids: list[NodeId], raft: Raft) -> ConfChange:
    """A random single-server change that makes sense for the configuration in force."""
    conf = raft.conf
    outsiders = [n for n in ids if n not in conf.members()]
    choices: list[ConfChange] = [ConfChange(ADD_LEARNER, n) for n in outsiders]
    choices += [ConfChange(PROMOTE, n) for n in conf.learners] * 2
    choices += [ConfChange(REMOVE, n) for n in conf.learners]
    if len(conf.voters) > 2:  # keep a cluster that can lose a node and still elect
        choices += [ConfChange(REMOVE, n) for n in conf.voters]
    return rng.choice(choices) if choices else ConfChange(ADD_LEARNER, ids[0])


def change_membership(sim: Any) -> None:
    """Ask the leader (if any) for one change, sometimes two in a row."""
    leader = sim.leader()
    if leader is None or leader.host is None:
        return
    host = leader.host
    for _ in range(2 if sim.rng.random() < 0.3 else 1):
        change = pick_change(sim.rng, sim.ids, host.raw.raft)
        try:
            host.propose_conf_change(change)
            sim.membership_changes += 1
        except ConfChangeRefused:
            sim.membership_refusals += 1
    sim.process(leader)


class CommitQuorum:
    """A leader's commit index advances only on a majority of its configuration's voters."""

    def __init__(self) -> None:
        self._seen: dict[tuple[NodeId, int], int] = {}  # (leader, term) -> commit checked

    def check(self, node: NodeId, raft: Raft, disks: dict[NodeId, Any]) -> None:
        if raft.role != Role.LEADER:
            return
        key, commit = (node, raft.term), raft.log.committed
        seen = self._seen.setdefault(key, commit)  # what it knew on winning was counted earlier
        if commit <= seen:
            return
        self._seen[key] = commit
        chain = disks[node].chain_at(commit)
        holders = [
            v
            for v in raft.quorum.voters
            if v in disks
            and (disks[v].chain_at(commit) == chain or commit <= disks[v].snapshot.index)
        ]
        if len(holders) < raft.quorum.quorum:
            raise Violation(
                f"commit quorum: {node} committed {commit} in term {raft.term} stored only on "
                f"{holders} of voters {list(raft.quorum.voters)}"
            )
