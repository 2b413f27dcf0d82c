"""Backup and restore of a whole cluster: the implementation behind ``manage.py raft_snapshot``
and ``raftsync snapshot`` (they differ only in where the settings come from).

    save FILE       a consistent snapshot of the running cluster (``CLUSTER``), at a stated
                    log index, with its SHA-256, written atomically to FILE
    inspect FILE    verify FILE's checksum and print its header
    restore FILE    verify FILE, check that this ``STATE_MACHINE`` can load it, then write new
                    data directories seeded from it for the cluster ``--cluster``: one
                    (``--node-id ID --data-dir DIR``) or every member's (``DIR/<id>``)

Like ``etcdctl snapshot save/restore``: a restore builds a NEW cluster (its own membership, the
given voters), which then runs with ``run_raft_node`` on those directories. The engine's parts
are ``raft_node.client.backup`` (the pull from the leader) and ``raft_node.storage.backup`` (the
file format and the seeding); see docs/deployment.md, "Backups and restore", for the runbook.
A backup file holds all the data (lock owners, queued messages, cached values): guard it like
the cluster secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from coordination import conf as settings_conf
from coordination.conf import Resolved
from coordination.node import runtime
from coordination.node.options import Option, setting_overrides
from raft_node.client.backup import BackupClient, save_backup
from raft_node.host.applier import Applier
from raft_node.storage.backup import BackupError, restore, verify_backup

ACTIONS = ("save", "inspect", "restore")
OPTIONS = (
    Option(
        "--cluster",
        "cluster",
        "id=host:port,... of the cluster to back up (save), or of the NEW cluster (restore)",
        key="CLUSTER",
    ),
    Option(
        "--data-dir",
        "data_dir",
        "restore: the node's data directory with --node-id; without it, the parent of one "
        "directory per member (DIR/<id>; default DATA_DIR)",
    ),
    Option("--node-id", "node_id", "restore: write only this member's data directory"),
    Option(
        "--from-node",
        "from_node",
        "save: take the snapshot on this member (after a ReadIndex round, still linearizable) "
        "instead of the leader",
    ),
    Option("--json", "json", "machine-readable output", action="store_true"),
    Option("--timeout", "timeout", "seconds per request to the cluster", type=float, default=30.0),
    Option("--secret-file", "secret_file", "file holding the secret", key="CLUSTER_SECRET_FILE"),
)


def add_positionals(parser: Any) -> None:
    parser.add_argument("action", choices=ACTIONS, help="save, inspect or restore")
    parser.add_argument("file", help="the backup file")


def run(
    load: Callable[[dict[str, Any]], Resolved],
    opts: Mapping[str, Any],
    out: TextIO,
    *,
    dev: bool,
    how: str = "",
) -> int:
    """Do ``opts["action"]``; print a report (``--json``: one JSON object). ``ValueError`` for
    bad settings or usage, ``BackupError`` (also a one-line message) for a bad file."""
    conf = load(setting_overrides(opts, OPTIONS))
    action, path = opts["action"], Path(opts["file"])
    if action == "save":
        report = _save(conf, opts, path, dev=dev, how=how)
    elif action == "inspect":
        header, _ = verify_backup(path, load=False)
        report = {"file": str(path), "verified": True, **header.to_dict()}
    else:
        report = _restore(conf, opts, path)
    if opts.get("json"):
        out.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        _describe(action, report, out)
    return 0


def _save(
    conf: Resolved, opts: Mapping[str, Any], path: Path, *, dev: bool, how: str
) -> dict[str, Any]:
    secret = settings_conf.cluster_secret(conf, dev=dev, how=how)
    _, client_ssl = runtime.ssl_contexts(conf)
    members = runtime.cluster_addresses(conf)
    source = opts.get("from_node")
    if source is not None and source not in members:
        raise ValueError(f"--from-node {source!r} is not a member of the cluster {list(members)}")
    addresses = [members[source]] if source else list(members.values())
    timeout = opts.get("timeout") or 30.0
    with BackupClient(
        addresses,
        secret,
        timeout=timeout,
        ssl=client_ssl,
        max_frame_bytes=conf["MAX_FRAME_BYTES"],
        name="raft-snapshot",
    ) as client:
        return save_backup(client, path, leader=source is None, timeout=timeout)


def _restore(conf: Resolved, opts: Mapping[str, Any], path: Path) -> dict[str, Any]:
    cluster = runtime.cluster_addresses(conf)
    node = opts.get("node_id")
    base = Path(opts.get("data_dir") or conf["DATA_DIR"])
    if node is not None:
        if node not in cluster:
            raise ValueError(f"--node-id {node!r} is not a member of --cluster {list(cluster)}")
        if not opts.get("data_dir"):
            base = base / node
        targets = {node: base}
    else:
        targets = {member: base / member for member in cluster}

    def check(image: bytes) -> None:
        Applier(runtime.state_machine(conf)).restore(image)

    report = restore(path, targets, cluster, check=check)
    report["state_machine"] = conf["STATE_MACHINE"]
    report["next_step"] = (
        "start every node with run_raft_node --id ID --cluster "
        + ",".join(f"{n}={a}" for n, a in report["cluster"].items())
        + " --data-dir DIR"
    )
    return report


def _describe(action: str, report: dict[str, Any], out: TextIO) -> None:
    if action == "save":
        out.write(
            f"saved {report['file']}: index {report['index']} term {report['term']} from "
            f"{report['node']}, {report['size']} bytes, sha256 {report['sha256']} "
            f"({report['seconds']} s)\n"
        )
    elif action == "inspect":
        out.write(
            f"{report['file']}: verified; index {report['index']} term {report['term']}, "
            f"{report['size']} bytes, sha256 {report['sha256']}, taken on "
            f"{report.get('node', '?')} of voters {', '.join(report['voters'])}\n"
        )
    else:
        dirs = ", ".join(f"{n} -> {d}" for n, d in report["data_dirs"].items())
        out.write(
            f"restored {report['file']} (index {report['index']} term {report['term']}, sha256 "
            f"{report['sha256']}) into {dirs}\n{report['next_step']}\n"
        )


__all__ = ["ACTIONS", "OPTIONS", "BackupError", "add_positionals", "run"]
