"""Every node's Raft status, as a table or JSON: the implementation behind both ``raftsync status``
and ``manage.py raft_status``. Exit status 0 when exactly one node reports itself leader, 1
otherwise, so it works as a health check.

The nodes are asked in parallel, one attempt each, with ``--timeout`` (0.4 s) for everything
(the connect gets half): a killed or paused node is marked unreachable and the report still
comes in under half a second (``raft_node.client.status_probe``). A node that answers slower
than that is marked unreachable too; a loaded cluster may want ``--timeout 2``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from coordination.conf import Resolved
from coordination.node import runtime
from coordination.node.options import Option, setting_overrides
from raft_node.client.status_probe import STATUS_TIMEOUT, node_statuses

OPTIONS = (
    Option("--cluster", "cluster", "id=host:port,... to ask", key="CLUSTER"),
    Option("--json", "json", "machine-readable output", action="store_true"),
    Option(
        "--timeout",
        "timeout",
        "seconds each node has to answer (the connect gets half); the nodes are asked at once",
        type=float,
        default=STATUS_TIMEOUT,
    ),
    Option(
        "--wait",
        "wait",
        "ask again until exactly one leader answers, for up to this many seconds (scripts that "
        "start a cluster, then use it)",
        type=float,
        default=0.0,
    ),
    Option("--secret-file", "secret_file", "file holding the secret", key="CLUSTER_SECRET_FILE"),
)


def run(
    load: Callable[[dict[str, Any]], Resolved],
    opts: Mapping[str, Any],
    out: TextIO,
    *,
    dev: bool,
    how: str = "",
) -> int:
    """Ask every member (in parallel) and print the report; ``ValueError`` for bad settings."""
    conf = load(setting_overrides(opts, OPTIONS))
    secret, client_ssl, addresses = runtime.client_access(conf, dev=dev, how=how)
    members = list(addresses.items())
    timeout = opts.get("timeout") or STATUS_TIMEOUT

    deadline = time.monotonic() + (opts.get("wait") or 0.0)
    while True:
        rows = node_statuses(members, secret, timeout=timeout, ssl=client_ssl)
        leaders = {r["id"] for r in rows if r.get("role") == "leader"}
        if len(leaders) == 1 or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if opts.get("json"):
        out.write(json.dumps({"leader": _only(leaders), "nodes": rows}, indent=2) + "\n")
    else:
        _table(rows, leaders, out)
    return 0 if len(leaders) == 1 else 1


def _table(rows: list[dict[str, Any]], leaders: set[str], out: TextIO) -> None:
    head = f"{'node':6} {'address':22} {'role':10} {'term':>5} {'commit':>8} {'applied':>8} "
    out.write(head + f"{'contact':>8} {'lag':>6}\n")
    lags: dict[str, Any] = {}
    for r in rows:
        lags.update({p: v["lag"] for p, v in r.get("peers", {}).items()})
    for r in rows:
        if "error" in r:
            out.write(f"{r['id']:6} {r['address']:22} unreachable: {r['error']}\n")
            continue
        contact = "-" if r["last_contact_ms"] is None else f"{r['last_contact_ms']}ms"
        lag = lags.get(r["id"], "-" if r["role"] != "leader" else 0)
        out.write(
            f"{r['id']:6} {r['address']:22} {r['role']:10} {r['term']:>5} {r['commit']:>8} "
            f"{r['applied']:>8} {contact:>8} {lag!s:>6}\n"
        )
    out.write(f"leader: {_only(leaders) or 'NONE'}\n")
    unsynced = [r["id"] for r in rows if r.get("fsync") is False]
    if unsynced:
        out.write(
            f"WARNING: fsync is off on {', '.join(unsynced)} (UNSAFE_NO_FSYNC): "
            "a crash may lose acknowledged writes\n"
        )


def _only(leaders: set[str]) -> str | None:
    return next(iter(leaders)) if len(leaders) == 1 else None
