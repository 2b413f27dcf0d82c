"""Cluster membership: the configuration in force and the single-server changes to it.

Raft thesis, chapter 4 (single-server changes), with its two safety conditions:

- **One change at a time.** Any two majorities of configurations that differ by one server
  overlap, so a change needs no joint phase, as long as a change is only proposed when the
  previous one is committed (``Raft.pending_conf_index``).
- **A new leader commits an entry of its own term first** (the thesis' 2015 erratum): otherwise
  a change made by a deposed leader and one made by its successor could both be in force on
  disjoint majorities. The leader refuses a change until its no-op is committed.

A configuration takes effect on a node as soon as its entry is **appended** to that node's log,
not when committed (so the new majority decides the entry that introduces it); a follower whose
log is truncated past such an entry falls back to the configuration before it. Configurations
are therefore tracked per log position (``ConfLog``) and carried in snapshots.

**Learners** receive the log and snapshots but do not vote and are not counted toward commit,
so a new machine catches up without weakening the quorum; ``promote`` then makes it a voter.

Entry format (``EntryType.CONF_CHANGE``): the *resulting* configuration, as JSON
``{"voters": [...], "learners": [...], "context": ...}``. Carrying the result rather than a
delta makes an entry meaningful on its own (after truncation, in a snapshot). ``context`` is the
host's (node addresses); the core passes it through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raft_node.core.messages import NodeId

ADD_LEARNER, PROMOTE, REMOVE = "add_learner", "promote", "remove"
CHANGES = (ADD_LEARNER, PROMOTE, REMOVE)


def encode_context(context: Any) -> bytes:
    """A configuration's host context (JSON-able: node addresses) as bytes, for the wire and
    the disk; b"" for none."""
    return b"" if context is None else json.dumps(context, sort_keys=True).encode()


def decode_context(raw: bytes) -> Any:
    """The inverse of ``encode_context``; ``ValueError`` if it is not JSON."""
    return json.loads(raw) if raw else None


class ConfChangeRefused(Exception):
    """A membership change the leader will not propose now. ``code`` says why: ``pending``
    (another change is not committed yet: retry), ``not_ready`` (a new leader has not committed
    in its term yet: retry), ``exists``, ``unknown_node``, ``not_learner``, ``last_voter``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ConfState:
    """A configuration: who votes, who only learns, and the host's context (addresses)."""

    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...] = ()
    context: Any = None

    def members(self) -> tuple[NodeId, ...]:
        return self.voters + self.learners

    def encode(self) -> bytes:
        body = {"voters": list(self.voters), "learners": list(self.learners)}
        body["context"] = self.context
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfState:
        body = json.loads(data)
        return cls(tuple(body["voters"]), tuple(body["learners"]), body.get("context"))


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server change; ``context`` becomes the new configuration's context (None:
    keep the current one)."""

    op: str
    node: NodeId
    context: Any = None

    def apply_to(self, current: ConfState) -> ConfState:
        """The configuration after this change, or ``ConfChangeRefused``."""
        voters, learners = list(current.voters), list(current.learners)
        node = self.node
        if self.op == ADD_LEARNER:
            if node in voters or node in learners:
                raise ConfChangeRefused("exists", f"{node} is already a member")
            learners.append(node)
        elif self.op == PROMOTE:
            if node not in learners:
                raise ConfChangeRefused("not_learner", f"{node} is not a learner")
            learners.remove(node)
            voters.append(node)
        elif self.op == REMOVE:
            if node in voters:
                if len(voters) == 1:
                    raise ConfChangeRefused("last_voter", f"{node} is the last voter")
                voters.remove(node)
            elif node in learners:
                learners.remove(node)
            else:
                raise ConfChangeRefused("unknown_node", f"{node} is not a member")
        else:
            raise ValueError(f"unknown membership change {self.op!r}; one of {CHANGES}")
        context = current.context if self.context is None else self.context
        return ConfState(tuple(sorted(voters)), tuple(sorted(learners)), context)


class ConfLog:
    """The configurations of the log: the one at the snapshot (``base``) and one per
    configuration entry after it, as ``(index, term, configuration)``, so truncation and
    compaction know which is in force."""

    def __init__(self, base: ConfState) -> None:
        self.base = base
        self.entries: list[tuple[int, int, ConfState]] = []  # ascending index

    @property
    def current(self) -> ConfState:
        return self.entries[-1][2] if self.entries else self.base

    @property
    def last_index(self) -> int:
        """Index of the latest configuration entry (0 if it is the base)."""
        return self.entries[-1][0] if self.entries else 0

    def add(self, index: int, term: int, conf: ConfState) -> None:
        """A configuration entry is in the log at ``index``; entries after it are gone."""
        while self.entries and self.entries[-1][0] >= index:
            self.entries.pop()
        self.entries.append((index, term, conf))

    def retain(self, term_of: Callable[[int], int | None]) -> None:
        """Drop the entries no longer in the log (``term_of`` is the log's term lookup)."""
        self.entries = [e for e in self.entries if term_of(e[0]) == e[1]]

    def at(self, index: int) -> ConfState:
        """The configuration in force at log position ``index``."""
        conf = self.base
        for at_index, _, entry_conf in self.entries:
            if at_index > index:
                break
            conf = entry_conf
        return conf

    def compact_to(self, index: int) -> None:
        self.base = self.at(index)
        self.entries = [e for e in self.entries if e[0] > index]

    def reset(self, base: ConfState) -> None:
        self.base, self.entries = base, []
