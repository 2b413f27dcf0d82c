"""Changing who is in the cluster, for operators: the implementation behind ``manage.py
raft_members``, ``raftsync members``, the REST API's ``/api/cluster/members/`` and the admin.

    raft_members list                          voters, learners, addresses, how far behind
    raft_members add n4=10.0.0.4:7001          learner -> caught up -> voter (progress printed)
    raft_members promote n4 | remove n2
    raft_members replace n2 n4=10.0.0.4:7001   add n4, catch up, promote, then remove n2

A new machine starts first, with an empty data dir: ``run_raft_node --id n4 --listen
10.0.0.4:7001 --join <any member>``. ``add`` checks that it answers before proposing anything,
adds it as a learner (it gets the log or a snapshot without counting toward the quorum, so the
cluster is never weaker while it catches up), waits until it is within ``CAUGHT_UP`` entries of
the leader, then promotes it. Each step is one single-server change (``raft_node.core.conf``);
refusals are typed (``coordination.exceptions.MembershipRefused`` and its subclasses).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from coordination.errors import build, typed
from raft_node.client import RaftClient, RaftError

CAUGHT_UP = 50  # entries behind the leader's last index at most, to be promoted
POLL = 0.5
Progress = Callable[[str], None]


def parse_member(spec: str) -> tuple[str, str]:
    """``"n4=10.0.0.4:7001"`` -> ``("n4", "10.0.0.4:7001")``; ``ValueError`` otherwise."""
    node, sep, address = spec.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not node or not colon or not host or not port.isdigit():
        raise ValueError(f"expected ID=HOST:PORT, got {spec!r}")
    return node, address


class Membership:
    """Membership operations through a raft client (any member's address; it follows the
    leader). ``progress`` receives one line per step or per poll while a learner catches up."""

    def __init__(
        self,
        client: RaftClient,
        *,
        secret: bytes,
        ssl: Any = None,
        progress: Progress | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.client, self.secret, self.ssl = client, secret, ssl
        self.progress = progress or (lambda line: None)
        self.timeout = timeout

    def _call(self, op: str, node: str = "", address: str = "") -> dict[str, Any]:
        try:
            return self.client.members(op, node, address, timeout=self.timeout)
        except RaftError as exc:
            raise typed(exc) from None

    def list(self) -> dict[str, Any]:
        return self._call("list")

    def promote(self, node: str) -> dict[str, Any]:
        self.progress(f"promoting {node} to voter")
        return self._call("promote", node)

    def remove(self, node: str) -> dict[str, Any]:
        self.progress(f"removing {node}")
        return self._call("remove", node)

    def add(
        self,
        node: str,
        address: str,
        *,
        wait: bool = True,
        promote: bool = True,
        catch_up_timeout: float = 600.0,
    ) -> dict[str, Any]:
        """Add ``node`` as a learner (unless it is one already: ``add`` resumes), then, with
        ``wait``, wait until it has caught up and, with ``promote``, make it a voter."""
        current = self.list()
        if node in current["voters"]:
            raise build("member_exists", f"{node} is already a voter", {"node": node})
        if node not in current["learners"]:
            self._check_reachable(node, address)
            self.progress(f"adding {node} ({address}) as a learner")
            current = self._call("add_learner", node, address)
        if not wait:
            return current
        self.wait_caught_up(node, catch_up_timeout)
        return self.promote(node) if promote else self.list()

    def replace(self, old: str, node: str, address: str, **options: Any) -> dict[str, Any]:
        """``add`` the new node (caught up, promoted), then remove the old one: the cluster has
        its full number of voters at every step but the last."""
        current = self.list()
        if old not in current["voters"] and old not in current["learners"]:
            raise build("unknown_member", f"{old} is not a member", {"node": old})
        self.add(node, address, **options)
        return self.remove(old)

    def wait_caught_up(self, node: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_line = ""
        while True:
            state = self.list()
            row = state["progress"].get(node)
            if row is not None:
                behind, size = row["behind"], row["bytes_behind"]
                if behind <= CAUGHT_UP and row["state"] == "replicate":
                    self.progress(f"{node} caught up ({behind} entries behind)")
                    return
                shown = "needs a snapshot" if size is None else f"{size / 1e6:.1f} MB"
                line = f"{node}: {behind} entries behind ({shown}), {row['state']}"
                if line != last_line:
                    self.progress(line)
                    last_line = line
            if time.monotonic() > deadline:
                raise build(
                    "member_unreachable",
                    f"{node} did not catch up within {timeout:.0f} s; it stays a learner "
                    "(run add again to keep waiting, or remove it)",
                    {"node": node},
                )
            time.sleep(POLL)

    def _check_reachable(self, node: str, address: str) -> None:
        try:
            probe = RaftClient(address, self.secret, timeout=3.0, ssl=self.ssl, name="probe")
            try:
                status = probe.status(timeout=3.0)
            finally:
                probe.close()
        except (RaftError, OSError) as exc:
            raise build(
                "member_unreachable",
                f"{node} does not answer at {address}: start it first (run_raft_node --id "
                f"{node} --listen {address} --join <member>): {exc}",
                {"node": node, "address": address},
            ) from None
        if status.get("id") != node:
            raise build(
                "member_unreachable",
                f"the node at {address} is {status.get('id')!r}, not {node!r}",
                {"node": node, "address": address},
            )
