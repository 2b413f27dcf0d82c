"""What a role mixin of ``Raft`` may use of the node's shared state: ``RaftState``.

``LeaderRole`` (``raft_node.core.leader``) is a mixin of ``Raft``: its methods run on a ``Raft``
instance and read and write the same fields. It used to import ``Raft`` itself for typing, which
made ``raft.py`` and ``leader.py`` import each other. This protocol names exactly the fields and
methods a role relies on, so the mixin depends on this contract and ``Raft`` (which inherits the
mixin) provides it; a role that starts using something else must say so here first.
"""

from __future__ import annotations

from typing import Any, Protocol

from raft_node.core.conf import ConfLog, ConfState
from raft_node.core.log import RaftLog
from raft_node.core.messages import Message, NodeId
from raft_node.core.messages import MessageType as MT
from raft_node.core.progress import Progress
from raft_node.core.quorum import MajorityConfig
from raft_node.core.read_only import ReadOnly, ReadState
from raft_node.core.ready import Role


class RaftState(Protocol):
    """The part of ``Raft`` that its role mixins share (see ``Raft.__init__`` for meanings)."""

    id: NodeId
    term: int
    lead: NodeId
    role: Role
    log: RaftLog
    prs: dict[NodeId, Progress]
    quorum: MajorityConfig
    read_only: ReadOnly
    read_states: list[ReadState]
    pending_read_index: list[Message]
    pending_broadcast: bool
    commit_unsent: bool
    lead_transferee: NodeId
    election_elapsed: int
    heartbeat_timeout: int
    max_size_per_msg: int
    config: Any  # raft.Config
    conf_log: ConfLog
    learners: frozenset[NodeId]
    pending_conf_index: int

    def _use_conf(self, conf: ConfState) -> None:
        """Make ``conf`` the configuration in force (quorum, learners, the leader's progress)."""
        ...

    def step_down_if_removed(self) -> None:
        """A leader whose own removal is committed steps down (``MembershipRole``)."""
        ...

    def send(self, m: Message) -> None:
        """Queue ``m`` for the host (``msgs`` or, for a leader's appends, ``msgs_early``)."""
        ...

    def _reply(self, to: NodeId, type_: MT, **fields: object) -> None:
        """Send a message of ``type_`` in the current term to ``to``."""
        ...

    def become_follower(self, term: int, lead: NodeId) -> None:
        """Step down to follower of ``lead`` in ``term``."""
        ...
