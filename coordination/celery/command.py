"""``celery -A proj raftsync status``: the Raft cluster behind the app's ``raft://`` broker.

Celery loads this module through its ``celery.commands`` entry point whenever the ``celery``
command starts, which also imports ``coordination`` and so registers the ``raft`` transport
alias before the app opens a broker connection (kombu has no entry point for transports), and
teaches every task the ``distributed_lock`` option (``lock_option``), Django or not.
This module must therefore import nothing that needs Django settings at import time.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from celery.bin.base import CeleryCommand, handle_preload_options

from coordination.celery import (
    connect,
    lock_option,  # noqa: F401  (the distributed_lock task option)
)


@click.group(name="raftsync")
def raftsync() -> None:
    """raftsync: the Raft cluster behind a raft:// broker."""


@raftsync.command(cls=CeleryCommand)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--timeout", type=float, default=2.0, help="Seconds to wait for each node.")
@click.pass_context
@handle_preload_options
def status(ctx: Any, as_json: bool, timeout: float, **_: Any) -> None:
    """Each member's role, term and indexes; exit 1 unless exactly one leader answers."""
    app = ctx.obj.app
    broker = app.conf.broker_url or ""
    if not broker.startswith(f"{connect.SCHEME}://"):
        raise click.UsageError(f"the app's broker is not raft:// (broker_url={broker!r})")
    coord = connect.coordinator_for(
        connect.hosts_from_urls([broker]), app.conf.broker_transport_options
    )
    from raft_node.client import RaftClient, RaftError, parse_addresses

    rows = []
    for address in parse_addresses(coord.addresses):
        try:
            with RaftClient([address], coord.secret, timeout=timeout, ssl=coord.ssl) as client:
                rows.append(client.status())
        except RaftError as exc:
            rows.append({"address": f"{address[0]}:{address[1]}", "error": str(exc)})
    leaders = sorted({r["id"] for r in rows if r.get("role") == "leader"})
    if as_json:
        click.echo(json.dumps({"leader": leaders[0] if len(leaders) == 1 else None, "nodes": rows}))
    else:
        for r in rows:
            if "error" in r:
                click.echo(f"{r['address']:22} unreachable: {r['error']}")
            else:
                click.echo(
                    f"{r['id']:6} {r['role']:10} term {r['term']:>4} commit {r['commit']:>8} "
                    f"applied {r['applied']:>8}"
                )
        click.echo(f"leader: {leaders[0] if len(leaders) == 1 else 'NONE'}")
    if len(leaders) != 1:
        sys.exit(1)
