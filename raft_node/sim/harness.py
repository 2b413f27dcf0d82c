"""A hand-driven in-memory cluster for directed, transcript-style tests (etcd/raft's ``network``).

Unlike the randomized ``Simulation``, nothing happens here unless the test says so: messages are
delivered breadth-first until the network is quiet, filtered by the cuts and drop rules the test
sets up. Each node handles its ``Ready`` exactly in the documented order (persist, send, apply,
advance) against a ``MemoryStorage`` that survives ``crash``/``restart``.

Why this does not drive ``NodeHost`` (which the node process and ``Simulation`` both run): it is
a harness for unit tests of the *core*, and it deliberately has no applier. The tests here
propose raw bytes (``b"x"``) and assert on exactly which entries each node applied, no-op
entries included, with their terms (``ListStateMachine``); ``NodeHost`` applies only commands in
its applier's ``(client_id, seq, stamp, body)`` envelope, hides no-ops, and adds the host's own
policy (tick and grace proposals, snapshots on its own schedule, request expiry), each of which
would put entries into a transcript the test did not ask for. So its Ready loop stays the
minimal one the core's contract describes, with no host policy to duplicate; everything the
host adds is tested through ``NodeHost`` itself (``tests/raft/test_node_host.py``) and the
randomized ``Simulation``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from raft_node.core.conf import ConfChange, ConfState
from raft_node.core.messages import Entry, EntryType, HardState, Message, NodeId
from raft_node.core.raft import Config, Raft
from raft_node.core.rawnode import RawNode
from raft_node.core.read_only import ReadState
from raft_node.core.ready import Role
from raft_node.storage.memory import MemoryStorage

DropRule = Callable[[Message], bool]
Rewrite = Callable[[Message], Message]


@dataclass
class ListStateMachine:
    """Records every applied entry (no-ops included); snapshots are the JSON list."""

    applied: list[tuple[int, int, bytes]] = field(default_factory=list)  # (index, term, data)

    def apply(self, entry: Entry) -> None:
        if entry.type in (EntryType.NORMAL, EntryType.NOOP):
            self.applied.append((entry.index, entry.term, entry.data))

    def snapshot(self) -> bytes:
        return json.dumps([[i, t, d.decode()] for i, t, d in self.applied]).encode()

    def restore(self, blob: bytes) -> None:
        self.applied = [(i, t, d.encode()) for i, t, d in json.loads(blob)]


class Net:
    def __init__(
        self,
        ids: Iterable[NodeId],
        *,
        seed: int = 0,
        pre_vote: bool = True,
        check_quorum: bool = True,
        election_tick: int = 10,
        raft_class: type[Raft] = Raft,
        max_size_per_msg: int = 1 << 20,
        voters: Iterable[NodeId] | None = None,
    ) -> None:
        self.ids = list(ids)
        self.voters = list(voters) if voters is not None else self.ids  # the initial config
        self.rng = random.Random(seed)
        self.settings = {
            "pre_vote": pre_vote,
            "check_quorum": check_quorum,
            "election_tick": election_tick,
            "max_size_per_msg": max_size_per_msg,
        }
        self.raft_class = raft_class
        self.storage = {i: MemoryStorage() for i in self.ids}
        self.nodes: dict[NodeId, RawNode | None] = {}
        self.sm: dict[NodeId, ListStateMachine] = {}
        self.cuts: set[tuple[NodeId, NodeId]] = set()
        self.drop_rules: list[DropRule] = []
        self.rewrites: list[Rewrite] = []
        self.delivered: list[Message] = []
        self.read_states: dict[NodeId, list[ReadState]] = {i: [] for i in self.ids}
        for i in self.ids:
            self.restart(i)

    # -- setup ---------------------------------------------------------------------------------

    def preload(self, node: NodeId, terms: list[int], hard_term: int | None = None) -> None:
        """Give a (down or fresh) node a stored log with the given entry terms (index 1..n)."""
        st = self.storage[node]
        # Same (index, term) -> same data on every node, as log matching requires.
        st.entries = [Entry(t, i + 1, f"{i + 1}:{t}".encode()) for i, t in enumerate(terms)]
        term = hard_term if hard_term is not None else (terms[-1] if terms else 0)
        st.hard_state = HardState(term, "", 0)
        self.restart(node)

    def restart(self, node: NodeId) -> None:
        config = Config(
            id=node,
            voters=self.voters,
            rng=random.Random(self.rng.getrandbits(32)),
            heartbeat_tick=1,
            **self.settings,  # type: ignore[arg-type]
        )
        self.nodes[node] = RawNode(config, self.storage[node], self.raft_class)
        sm = ListStateMachine()
        snap = self.storage[node].snapshot
        if snap.index:
            sm.restore(snap.data)
        self.sm[node] = sm

    def crash(self, node: NodeId) -> None:
        self.nodes[node] = None

    # -- accessors -----------------------------------------------------------------------------

    def raw(self, node: NodeId) -> RawNode:
        rn = self.nodes[node]
        assert rn is not None, f"{node} is down"
        return rn

    def raft(self, node: NodeId) -> Raft:
        return self.raw(node).raft

    def leaders(self) -> list[NodeId]:
        return [i for i, rn in self.nodes.items() if rn is not None and rn.raft.role == Role.LEADER]

    def log_terms(self, node: NodeId) -> list[int]:
        log = self.raft(node).log
        return [e.term for e in log.entries]

    # -- faults --------------------------------------------------------------------------------

    def cut(self, a: NodeId, b: NodeId) -> None:
        self.cuts |= {(a, b), (b, a)}

    def isolate(self, node: NodeId) -> None:
        for other in self.ids:
            if other != node:
                self.cut(node, other)

    def heal(self) -> None:
        self.cuts.clear()
        self.drop_rules.clear()
        self.rewrites.clear()

    # -- driving -------------------------------------------------------------------------------

    def process(self, node: NodeId) -> list[Message]:
        """Handle every pending Ready of ``node``; return the messages it sends."""
        out: list[Message] = []
        rn = self.nodes[node]
        while rn is not None and rn.has_ready():
            rd = rn.ready()
            out.extend(rd.messages_early)
            self.storage[node].save(rd.hard_state, rd.entries, rd.snapshot)
            out.extend(rd.messages)
            sm = self.sm[node]
            if rd.snapshot is not None:
                sm.restore(rd.snapshot.data)
            for e in rd.committed_entries:
                sm.apply(e)
            self.read_states[node].extend(rd.read_states)
            rn.advance(rd)
        return out

    def deliver(self, msgs: Iterable[Message], limit: int = 100_000) -> None:
        """Deliver ``msgs`` and everything they cause, breadth-first, until quiet."""
        queue = list(msgs)
        steps = 0
        while queue:
            steps += 1
            if steps > limit:
                raise RuntimeError("network did not quiesce")
            m = queue.pop(0)
            if (m.frm, m.to) in self.cuts or any(rule(m) for rule in self.drop_rules):
                continue
            for rewrite in self.rewrites:
                m = rewrite(m)
            rn = self.nodes.get(m.to)
            if rn is None:
                continue
            self.delivered.append(m)
            rn.step(m)
            queue.extend(self.process(m.to))

    def settle(self, *nodes: NodeId) -> None:
        msgs: list[Message] = []
        for n in nodes or self.ids:
            msgs.extend(self.process(n))
        self.deliver(msgs)

    def campaign(self, node: NodeId) -> None:
        self.raw(node).campaign()
        self.deliver(self.process(node))

    def propose(self, node: NodeId, data: bytes) -> tuple[int, int]:
        result = self.raw(node).propose(data)
        self.deliver(self.process(node))
        return result

    def change(self, node: NodeId, change: ConfChange) -> tuple[int, ConfState]:
        """Propose a membership change on ``node`` (the leader) and run the network."""
        result = self.raw(node).propose_conf_change(change)
        self.deliver(self.process(node))
        return result

    def tick(self, node: NodeId, n: int = 1) -> None:
        for _ in range(n):
            self.raw(node).tick()
            self.deliver(self.process(node))

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for node in self.ids:
                if self.nodes[node] is not None:
                    self.tick(node)

    def read_index(self, node: NodeId, ctx: bytes) -> list[ReadState]:
        """Issue a ReadIndex request, run the network, return the node's read states."""
        self.read_states[node].clear()
        self.raw(node).read_index(ctx)
        self.deliver(self.process(node))
        return self.read_states[node]

    def compact(self, node: NodeId, keep: int = 0) -> None:
        """Snapshot ``node``'s state machine at its applied index and compact."""
        rn = self.raw(node)
        snap = rn.compact(rn.raft.log.applied, self.sm[node].snapshot(), keep)
        self.storage[node].save_snapshot(snap)
        self.storage[node].compact(min(rn.raft.log.offset, snap.index))
