"""The wait-for graph of the locks part, searched for a cycle when a wait is about to be added.

Nodes are sessions. A -> B (on lock L) when A waits on L and B holds L in an incompatible mode,
or B waits on L ahead of A in an incompatible mode (exclusive conflicts with everything, shared
only with exclusive). The graph is acyclic between commands (every new wait is checked, and
grants and releases only turn "waits ahead" edges into "holds" edges or remove edges), so a
cycle the new wait closes must pass through its session: breadth-first search from the new
wait's targets back to that session finds the shortest one.

Cost: a naive search lists, for every waiting session it visits, everything ahead of that wait
on its lock, which is quadratic in the queue length (a hot lock with thousands of waiters would
stall the apply loop). Here each lock's holders and queue are scanned at most once per mode
class per search: a wait at position ``p`` only scans the part of ``[0, p)`` no earlier wait of
the same search has scanned. That skips exactly the targets the search has already seen, so
the result (including which cycle is named) is the naive breadth-first one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

EXCLUSIVE = "exclusive"


class _LockScan:
    """What one search has already scanned of one lock."""

    __slots__ = ("all_upto", "holders_all", "holders_x", "positions", "waits", "x_upto")

    def __init__(self, lock: Any) -> None:
        self.waits = list(lock.queue.values())
        self.positions = {w.token: i for i, w in enumerate(self.waits)}
        self.all_upto = 0  # every wait in [0, all_upto) was emitted
        self.x_upto = 0  # every exclusive wait in [0, max(x_upto, all_upto)) was emitted
        self.holders_all = False
        self.holders_x = False

    def new_blockers(self, lock: Any, mode: str, token: int) -> list[int]:
        """Sessions a ``mode`` wait with ``token`` waits for, minus those already emitted."""
        out: list[int] = []
        end = self.positions.get(token, len(self.waits))
        if mode == EXCLUSIVE:
            if not self.holders_all:
                self.holders_all = True
                out.extend(h.sid for h in lock.holders.values())
            if end > self.all_upto:
                out.extend(w.sid for w in self.waits[self.all_upto : end])
                self.all_upto = end
        else:
            if not self.holders_x and not self.holders_all:
                self.holders_x = True
                out.extend(h.sid for h in lock.holders.values() if h.mode == EXCLUSIVE)
            start = max(self.x_upto, self.all_upto)
            if end > start:
                out.extend(w.sid for w in self.waits[start:end] if w.mode == EXCLUSIVE)
                self.x_upto = end
        return out


def find_cycle(
    locks: dict[str, Any],
    waits: dict[int, Any],
    session_waits: Callable[[int], Iterable[int]],
    sid: int,
    name: str,
    mode: str,
    token: int,
) -> list[tuple[int, str]] | None:
    """The shortest cycle a new ``mode`` wait (``token``) of session ``sid`` on lock ``name``
    would close, as hops ``(session, lock)`` (the previous session waits for ``session`` on
    ``lock``; the last hop is ``sid``), or None. ``session_waits(session)`` gives the wait
    tokens of a session. Fixed order (holders in grant order, queues in arrival order, a
    session's waits by token), so every replica and every restored snapshot names the same
    cycle."""
    scans: dict[str, _LockScan] = {}

    def blockers(lock_name: str, wait_mode: str, wait_token: int) -> list[int]:
        lock = locks[lock_name]
        scan = scans.get(lock_name)
        if scan is None:
            scan = scans[lock_name] = _LockScan(lock)
        return scan.new_blockers(lock, wait_mode, wait_token)

    parent: dict[int, tuple[int, str]] = {}
    frontier: list[int] = []
    for target in blockers(name, mode, token):
        if target == sid:
            return [(sid, name)]
        if target not in parent:
            parent[target] = (sid, name)
            frontier.append(target)
    for node in frontier:  # grows while iterated: breadth-first
        for wait_token in sorted(session_waits(node)):
            wait = waits[wait_token]
            for target in blockers(wait.name, wait.mode, wait.token):
                if target == sid:
                    hops = [(sid, wait.name)]
                    while node != sid:
                        previous, lock_name = parent[node]
                        hops.append((node, lock_name))
                        node = previous
                    hops.reverse()
                    return hops
                if target not in parent:
                    parent[target] = (node, wait.name)
                    frontier.append(target)
    return None
