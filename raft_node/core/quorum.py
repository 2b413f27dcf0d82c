"""Majority arithmetic: commit index and election outcome for a set of voters.

Kept apart from the protocol so joint consensus (two majority configs that must both agree) can
be added as one more class with the same two methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum

from raft_node.core.messages import NodeId


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


class MajorityConfig:
    __slots__ = ("quorum", "voters")

    def __init__(self, voters: Iterable[NodeId]) -> None:
        self.voters: tuple[NodeId, ...] = tuple(sorted(set(voters)))
        if not self.voters:
            raise ValueError("a cluster needs at least one voter")
        self.quorum = len(self.voters) // 2 + 1

    def committed_index(self, match: Mapping[NodeId, int]) -> int:
        """Highest index that a majority of voters have persisted."""
        acked = sorted((match.get(v, 0) for v in self.voters), reverse=True)
        return acked[self.quorum - 1]

    def vote_result(self, votes: Mapping[NodeId, bool]) -> VoteResult:
        granted = rejected = 0
        for v in self.voters:
            answer = votes.get(v)
            if answer is True:
                granted += 1
            elif answer is False:
                rejected += 1
        if granted >= self.quorum:
            return VoteResult.WON
        if len(self.voters) - rejected < self.quorum:
            return VoteResult.LOST
        return VoteResult.PENDING

    def has_quorum(self, members: Iterable[NodeId]) -> bool:
        present = set(members)
        return sum(1 for v in self.voters if v in present) >= self.quorum

    def __contains__(self, node: NodeId) -> bool:
        return node in self.voters

    def __len__(self) -> int:
        return len(self.voters)
