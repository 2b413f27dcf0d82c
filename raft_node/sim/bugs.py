"""Deliberately broken protocols, to prove the simulator's checks can fail.

Each class changes one rule that Raft's safety depends on. Tests run the simulator with them and
assert that a violation is reported; the CLI exposes them as ``--bug NAME`` for demonstrations.
"""

from __future__ import annotations

from raft_node.core.conf import ConfChange, ConfState
from raft_node.core.messages import Message
from raft_node.core.raft import Raft


class CommitOldTermRaft(Raft):
    """Commits by counting replicas of *any* term's entry (the Figure 8 mistake)."""

    def maybe_commit(self) -> bool:
        match = {v: pr.match for v, pr in self.prs.items()}
        index = self.quorum.committed_index(match)
        if index > self.log.committed and self.log.term(index) is not None:
            self.log.commit_to(index)
            return True
        return False


class DoubleVoteRaft(Raft):
    """Grants a vote to every candidate with an up-to-date log, even twice in one term."""

    def _may_grant_vote(self, m: Message) -> bool:
        return True


class NoLogCheckVoteRaft(Raft):
    """Ignores the up-to-date-log check when voting (breaks leader completeness)."""

    def _handle_vote_request(self, m: Message) -> None:
        if self._may_grant_vote(m):
            from raft_node.core.messages import MessageType as MT

            resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
            self._reply(m.frm, resp, term=m.term)
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            super()._handle_vote_request(m)


class TwoConfChangesRaft(Raft):
    """Accepts a membership change while the previous one is not committed (two single-server
    changes at once can leave two disjoint majorities)."""

    def propose_conf_change(self, change: ConfChange) -> tuple[int, ConfState]:
        self.pending_conf_index = 0
        return super().propose_conf_change(change)


class NoTermCommitConfRaft(Raft):
    """Proposes a membership change before committing an entry of its own term (the thesis'
    erratum: a deposed leader's change and its successor's can then both take effect)."""

    def become_leader(self) -> None:
        super().become_leader()
        self.pending_conf_index = 0  # a change may go before the no-op commits

    def propose_conf_change(self, change: ConfChange) -> tuple[int, ConfState]:
        committed, term = self.log.committed, self.term
        real = self.log.term
        self.log.term = lambda i: term if i == committed else real(i)  # type: ignore[method-assign]
        try:
            return super().propose_conf_change(change)
        finally:
            del self.log.term


BUGS: dict[str, type[Raft]] = {
    "commit-old-term": CommitOldTermRaft,
    "two-conf-changes": TwoConfChangesRaft,
    "no-term-commit-conf": NoTermCommitConfRaft,
    "double-vote": DoubleVoteRaft,
    "no-log-check": NoLogCheckVoteRaft,
}
