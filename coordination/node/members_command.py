"""``raft_members`` (``manage.py raft_members`` and ``raftsync members``): the command line of
``coordination.node.membership``. Exit status 0 on success, 1 when the cluster refused or the
wait ran out (the message says which), 2 for bad usage or settings.

    raft_members list [--json]
    raft_members add n4=10.0.0.4:7001 [--no-wait] [--no-promote] [--catch-up-timeout 600]
    raft_members promote n4
    raft_members remove n2
    raft_members replace n2 n4=10.0.0.4:7001
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from coordination.conf import Resolved
from coordination.exceptions import CoordinationError
from coordination.node import runtime
from coordination.node.membership import Membership, parse_member
from coordination.node.options import Option, add_options, setting_overrides
from raft_node.client import RaftClient, RaftError

ACTIONS = ("list", "add", "promote", "remove", "replace")
OPTIONS = (
    Option("--cluster", "cluster", "id=host:port,... of members to ask", key="CLUSTER"),
    Option("--json", "json", "machine-readable output", action="store_true"),
    Option("--no-wait", "no_wait", "add: do not wait for the learner", action="store_true"),
    Option("--no-promote", "no_promote", "add: leave it a learner", action="store_true"),
    Option(
        "--catch-up-timeout",
        "catch_up_timeout",
        "add/replace: seconds to wait for the learner to catch up",
        type=float,
        default=600.0,
    ),
    Option("--secret-file", "secret_file", "file holding the secret", key="CLUSTER_SECRET_FILE"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument(
        "targets", nargs="*", help="ID, or ID=HOST:PORT (add), or OLD NEW=HOST:PORT (replace)"
    )
    add_options(parser, OPTIONS)


def run(
    load: Callable[[dict[str, Any]], Resolved],
    opts: Mapping[str, Any],
    out: TextIO,
    *,
    dev: bool,
    how: str = "",
) -> int:
    """Do the action and print the resulting membership; ``ValueError`` for bad usage."""
    conf = load(setting_overrides(opts, OPTIONS))
    secret, client_ssl, members_at = runtime.client_access(conf, dev=dev, how=how)
    addresses = list(members_at.values())
    quiet = bool(opts.get("json"))
    client = RaftClient(addresses, secret, timeout=10.0, ssl=client_ssl, name="raft-members")

    def progress(line: str) -> None:
        if not quiet:
            out.write(line + "\n")
            out.flush()

    members = Membership(client, secret=secret, ssl=client_ssl, progress=progress)
    try:
        result = _act(members, opts)
    except (CoordinationError, RaftError) as exc:
        if quiet:
            out.write(json.dumps({"error": exc.code, "message": str(exc)}) + "\n")
        else:
            out.write(f"refused: {exc}\n")
        return 1
    finally:
        client.close()
    if quiet:
        out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    else:
        _table(result, out)
    return 0


def _act(members: Membership, opts: Mapping[str, Any]) -> dict[str, Any]:
    action, args = opts["action"], list(opts.get("targets") or [])
    wanted = {"list": 0, "add": 1, "promote": 1, "remove": 1, "replace": 2}[action]
    if len(args) != wanted:
        raise ValueError(f"{action} takes {wanted} argument(s), got {len(args)}")
    wait = {"catch_up_timeout": opts.get("catch_up_timeout") or 600.0}
    if action == "list":
        return members.list()
    if action == "add":
        node, address = parse_member(args[0])
        return members.add(
            node,
            address,
            wait=not opts.get("no_wait"),
            promote=not opts.get("no_promote"),
            **wait,
        )
    if action == "promote":
        return members.promote(args[0])
    if action == "remove":
        return members.remove(args[0])
    node, address = parse_member(args[1])
    return members.replace(args[0], node, address, **wait)


def _table(state: dict[str, Any], out: TextIO) -> None:
    out.write(f"{'member':8} {'role':8} {'address':24} {'behind':>8}\n")
    for node in [*state["voters"], *state["learners"]]:
        role = "voter" if node in state["voters"] else "learner"
        if node == state.get("leader"):
            role = "leader"
        row = state.get("progress", {}).get(node, {})
        out.write(
            f"{node:8} {role:8} {state['addresses'].get(node, '?'):24} "
            f"{row.get('behind', '-')!s:>8}\n"
        )
