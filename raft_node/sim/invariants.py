"""Raft's safety properties, checked by the simulator after every step.

Each check is incremental (O(1) per event or per persisted entry) so thousands of seeded runs
fit in CI:

- Election safety: at most one leader per term (``leader_of_term``).
- One vote per term: a node never grants votes to two candidates in one term, across restarts
  (``grants`` lives in the checker, which survives node crashes).
- Leader append-only: while a node leads in a term, its log only grows, in memory and on disk.
- Log matching: two persisted entries with the same (index, term) have the same chain hash, i.e.
  identical prefixes (``entry_chain``).
- Leader completeness: a new leader's log contains the latest entry known committed in an
  earlier term (a leader of an older term may still win after a newer term committed more: a
  delayed vote can elect it while it is cut off from the newer leader).
- State machine safety: every node applies the same entry (same chain hash) at each index.
- Monotonicity: term and commit index never decrease (in memory per incarnation, and on disk);
  a persisted vote never changes within a term.
"""

from __future__ import annotations

from dataclasses import dataclass

from raft_node.core.messages import NONE, HardState, NodeId
from raft_node.core.raft import Raft
from raft_node.core.ready import Ready, Role
from raft_node.sim.disk import SimDisk


class Violation(AssertionError):
    """A safety property failed. The message names the property and the evidence."""


@dataclass
class _Memory:
    term: int
    commit: int
    leader_last: int  # last index while leader in ``term`` (-1 when not leader)


class Checker:
    def __init__(self) -> None:
        self.leader_of_term: dict[int, NodeId] = {}
        self.grants: dict[tuple[NodeId, int], NodeId] = {}
        self.entry_chain: dict[tuple[int, int], int] = {}
        self.applied_chain: dict[int, int] = {0: 0}
        self.applied_term: dict[int, int] = {0: 0}
        self.committed_chain: dict[int, int] = {0: 0}
        self.max_committed = 0
        # term -> highest index seen committed by a node whose persisted term was that term
        self.committed_in_term: dict[int, int] = {}
        self._memory: dict[NodeId, _Memory] = {}
        self._disk_leader_last: dict[tuple[NodeId, int], int] = {}

    # -- hooks called by the simulator ---------------------------------------------------------

    def base_hash(self, index: int) -> int:
        """Chain hash at a snapshot's index: whatever every node applied there."""
        try:
            return self.applied_chain[index]
        except KeyError:
            raise Violation(f"snapshot at index {index}, which no node ever applied") from None

    def on_start(self, node: NodeId, raft: Raft, disk: SimDisk) -> None:
        hs = disk.hard_state
        if (raft.term, raft.vote) != (hs.term, hs.vote):
            raise Violation(
                f"{node} restarted with term/vote {raft.term}/{raft.vote!r}, "
                f"disk has {hs.term}/{hs.vote!r}"
            )
        self._memory[node] = _Memory(raft.term, raft.log.committed, -1)

    def after_event(self, node: NodeId, raft: Raft) -> None:
        mem = self._memory[node]
        term, commit = raft.term, raft.log.committed
        if term < mem.term:
            raise Violation(f"{node} term went back from {mem.term} to {term}")
        if commit < mem.commit:
            raise Violation(f"{node} commit index went back from {mem.commit} to {commit}")
        log = raft.log
        if not (log.applied <= log.committed <= log.last_index()):
            raise Violation(
                f"{node} log cursors out of order: applied {log.applied} "
                f"commit {log.committed} last {log.last_index()}"
            )
        if raft.role == Role.LEADER:
            other = self.leader_of_term.setdefault(term, node)
            if other != node:
                raise Violation(f"two leaders in term {term}: {other} and {node}")
            last = log.last_index()
            if term == mem.term and last < mem.leader_last:
                raise Violation(f"leader {node} log shrank from {mem.leader_last} to {last}")
            mem.leader_last = last
        else:
            mem.leader_last = -1
        mem.term, mem.commit = term, commit

    def on_vote_granted(self, voter: NodeId, term: int, candidate: NodeId) -> None:
        other = self.grants.setdefault((voter, term), candidate)
        if other != candidate:
            raise Violation(f"{voter} voted for both {other} and {candidate} in term {term}")

    def on_persisted(
        self, node: NodeId, role: Role, rd: Ready, disk: SimDisk, before: HardState
    ) -> None:
        hs = disk.hard_state
        if hs.term < before.term or hs.commit < before.commit:
            raise Violation(f"{node} persisted hard state went back: {before} -> {hs}")
        if hs.term == before.term and before.vote != NONE and hs.vote != before.vote:
            raise Violation(
                f"{node} changed its vote in term {hs.term}: {before.vote} -> {hs.vote}"
            )
        for e in rd.entries:
            chain = disk.chain_at(e.index)
            known = self.entry_chain.setdefault((e.index, e.term), chain)  # type: ignore[arg-type]
            if known != chain:
                raise Violation(
                    f"log matching: {node} stores ({e.index}, term {e.term}) with a different "
                    "prefix than another node"
                )
        if role == Role.LEADER and rd.entries:
            key = (node, hs.term)
            prev = self._disk_leader_last.get(key)
            if prev is not None and rd.entries[0].index <= prev:
                raise Violation(
                    f"leader {node} overwrote its own persisted entry {rd.entries[0].index} "
                    f"in term {hs.term}"
                )
            self._disk_leader_last[key] = rd.entries[-1].index
        if hs.commit > disk.snapshot.index:
            self._record_commit(node, hs.commit, disk.chain_at(hs.commit), hs.term)

    def _record_commit(self, node: NodeId, index: int, chain: int | None, term: int) -> None:
        if chain is None:
            raise Violation(f"{node} committed index {index} that it has not persisted")
        known = self.committed_chain.setdefault(index, chain)
        if known != chain:
            raise Violation(f"{node} committed a different entry at index {index}")
        self.max_committed = max(self.max_committed, index)
        if index > self.committed_in_term.get(term, 0):
            self.committed_in_term[term] = index

    def on_became_leader(self, node: NodeId, term: int, disk: SimDisk) -> None:
        """Raft's Leader Completeness: an entry committed in term ``t`` is in the log of every
        leader of a term after ``t``. A commit is recorded with the term its node had persisted
        then, which is at least the term it was committed in, so this never over-reaches."""
        index = max((i for t, i in self.committed_in_term.items() if t < term), default=0)
        if index <= disk.snapshot.index:
            return
        if disk.chain_at(index) != self.committed_chain[index]:
            raise Violation(
                f"leader completeness: {node} leads term {term} without committed entry {index}"
            )

    def on_applied(self, node: NodeId, index: int, term: int, disk: SimDisk) -> None:
        chain = disk.chain_at(index)
        if chain is None:
            raise Violation(f"{node} applied entry {index} that is not on its disk")
        known = self.applied_chain.setdefault(index, chain)
        if known != chain:
            raise Violation(f"state machine safety: {node} applied a different entry at {index}")
        self.applied_term.setdefault(index, term)
