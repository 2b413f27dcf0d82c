"""``raftsync``: run and inspect nodes on a machine with no Django project.

    raftsync node   [--id --cluster --data-dir --metrics-port --listen --secret-file ...]
    raftsync status [--cluster --json --timeout --wait --secret-file]
    raftsync snapshot save|inspect|restore FILE [--cluster --data-dir --node-id --json ...]
    raftsync settings                      every key's effective value and where it came from

Settings come from the flags, then ``RAFTSYNC_<KEY>`` environment variables, then the defaults
(``docs/settings.md``): the same resolver, options and code as ``manage.py run_raft_node`` and
``manage.py raft_status``, without Django. There is no DEBUG here, so no development secret:
give ``RAFTSYNC_CLUSTER_SECRET`` or ``--secret-file`` (e.g. ``var/cluster.secret`` made by
``manage.py run_cluster``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from coordination import __version__, conf
from coordination.node import members_command, node_runner, snapshot_tool, status_report
from coordination.node.options import add_options
from raft_node.client import RaftError
from raft_node.storage.backup import BackupError

SECRET_HOW = "or pass --secret-file FILE"


def _load(overrides: Mapping[str, Any]) -> conf.Resolved:
    return conf.resolve({}, os.environ, overrides)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="raftsync",
        description="Run and inspect raftsync Raft nodes. Settings: flags > RAFTSYNC_* > defaults.",
    )
    top.add_argument("--version", action="version", version=f"raftsync {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    node = commands.add_parser("node", help="run one Raft node until SIGTERM/SIGINT")
    add_options(node, node_runner.OPTIONS)
    status = commands.add_parser("status", help="every node's role, term, indexes and lag")
    add_options(status, status_report.OPTIONS)
    members = commands.add_parser("members", help="list, add, promote, remove or replace members")
    members_command.add_arguments(members)
    snapshot = commands.add_parser(
        "snapshot", help="back up the cluster to a file, verify one, or restore from one"
    )
    snapshot_tool.add_positionals(snapshot)
    add_options(snapshot, snapshot_tool.OPTIONS)
    commands.add_parser("settings", help="the effective settings and where each came from")
    return top


def _show_settings(out: Any) -> int:
    resolved = _load({})
    for key, spec in conf.SPEC.items():
        value = "(hidden)" if spec.secret and resolved[key] else repr(resolved[key])
        out.write(f"{key:22} {value:60} {resolved.source(key)}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    opts = vars(args)
    try:
        if args.command == "node":
            return node_runner.run(_load, opts, dev=False, how=SECRET_HOW)
        if args.command == "status":
            return status_report.run(_load, opts, sys.stdout, dev=False, how=SECRET_HOW)
        if args.command == "members":
            return members_command.run(_load, opts, sys.stdout, dev=False, how=SECRET_HOW)
        if args.command == "snapshot":
            return snapshot_tool.run(_load, opts, sys.stdout, dev=False, how=SECRET_HOW)
        return _show_settings(sys.stdout)
    except ValueError as exc:  # settings and usage problems: one line, exit 2
        print(f"raftsync {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (BackupError, RaftError) as exc:  # a bad backup file, an unreachable cluster
        print(f"raftsync {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
