"""Membership in the protocol: tracking the configuration in force, and changing it.

A mixin of ``Raft`` (like ``LeaderRole``), on the ``RaftState`` contract. The rules are in
``raft_node.core.conf``; this module applies them where the log changes:

- a configuration entry takes effect when **appended** (by the leader in
  ``propose_conf_change``; by a follower in ``track_appended``), and a follower whose log loses
  such an entry to a truncation falls back to the one before (``ConfLog.retain``);
- a snapshot carries the configuration at its index (``snapshot_meta``) and installs it;
- the leader proposes a change only when the previous one is committed and it has committed an
  entry of its own term; once its own removal is committed it hands over and steps down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from raft_node.core.conf import ConfChange, ConfChangeRefused, ConfLog, ConfState
from raft_node.core.messages import NONE, Entry, EntryType, SnapshotMeta
from raft_node.core.messages import MessageType as MT
from raft_node.core.progress import Progress
from raft_node.core.quorum import MajorityConfig
from raft_node.core.ready import Role

if TYPE_CHECKING:
    from raft_node.core.role_state import RaftState

    _Base = RaftState
else:
    _Base = object


def conf_of(meta: SnapshotMeta) -> ConfState:
    return ConfState(tuple(meta.voters), tuple(meta.learners), meta.context)


class MembershipRole(_Base):
    def init_membership(self, base: ConfState, entries: Sequence[Entry]) -> None:
        """At start: the snapshot's configuration, then every configuration entry after it."""
        self.conf_log = ConfLog(base)
        self.pending_conf_index = 0
        for entry in entries:
            if entry.type == EntryType.CONF_CHANGE:
                self.conf_log.add(entry.index, entry.term, ConfState.decode(entry.data))
        self._use_conf(self.conf_log.current)

    @property
    def conf(self) -> ConfState:
        """The configuration in force on this node (the latest in its log)."""
        return self.conf_log.current

    def _use_conf(self, conf: ConfState) -> None:
        self.quorum = MajorityConfig(conf.voters)
        self.learners = frozenset(conf.learners)
        if self.role != Role.LEADER:
            return
        nxt = self.log.last_index() + 1
        inflight = self.config.max_inflight
        for member in conf.members():
            if member not in self.prs:
                pr = self.prs[member] = Progress(nxt, inflight)
                pr.recent_active = True  # give it an election timeout to answer
        for member in [m for m in self.prs if m not in conf.members() and m != self.id]:
            del self.prs[member]
            if self.lead_transferee == member:
                self.lead_transferee = NONE

    # -- where the log changes -----------------------------------------------------------------

    def track_appended(self, entries: Sequence[Entry]) -> None:
        """A follower's log took ``entries`` (after truncating whatever conflicted)."""
        before = self.conf_log.current
        self.conf_log.retain(self.log.term)
        for entry in entries:
            if entry.type == EntryType.CONF_CHANGE and self.log.term(entry.index) == entry.term:
                self.conf_log.add(entry.index, entry.term, ConfState.decode(entry.data))
        if self.conf_log.current is not before:
            self._use_conf(self.conf_log.current)

    def install_conf(self, meta: SnapshotMeta) -> None:
        """A snapshot replaced the log: its configuration is the one in force."""
        if meta.voters:
            self.conf_log.reset(conf_of(meta))
            self._use_conf(self.conf_log.current)

    def snapshot_meta(self, index: int, term: int) -> SnapshotMeta:
        """The meta of a snapshot at ``index`` (the configuration in force there); compacts the
        configuration history to it."""
        conf = self.conf_log.at(index)
        self.conf_log.compact_to(index)
        return SnapshotMeta(index, term, conf.voters, conf.learners, conf.context)

    # -- the leader's side ---------------------------------------------------------------------

    def propose_conf_change(self, change: ConfChange) -> tuple[int, ConfState]:
        """Append the configuration ``change`` leads to; returns its index and the
        configuration, in force here at once. Raises ``ConfChangeRefused``."""
        if self.role != Role.LEADER:
            raise ConfChangeRefused("not_leader", "not the leader")
        if self.lead_transferee != NONE:
            raise ConfChangeRefused("pending", "leadership transfer in progress; retry")
        if self.pending_conf_index > self.log.committed:
            raise ConfChangeRefused(
                "pending", f"the change at index {self.pending_conf_index} is not committed yet"
            )
        if self.log.term(self.log.committed) != self.term:
            raise ConfChangeRefused("not_ready", "this leader has not committed in its term yet")
        new = change.apply_to(self.conf_log.current)
        index = self.log.last_index() + 1
        self.log.append([Entry(self.term, index, new.encode(), EntryType.CONF_CHANGE)])
        self.pending_broadcast = True
        self.pending_conf_index = index
        self.conf_log.add(index, self.term, new)
        self._use_conf(new)  # a leader removing itself is no longer counted toward commit
        return index, new

    def step_down_if_removed(self) -> None:
        """A leader whose removal is committed hands leadership to the most caught-up voter
        (TimeoutNow) and steps down; it never campaigns again (not promotable)."""
        if self.id in self.quorum or self.conf_log.last_index > self.log.committed:
            return
        last = self.log.last_index()
        caught_up = [v for v in self.quorum.voters if v in self.prs and self.prs[v].match == last]
        if caught_up:
            self._reply(caught_up[0], MT.TIMEOUT_NOW)
        self.become_follower(self.term, NONE)
