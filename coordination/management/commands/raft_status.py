"""``manage.py raft_status``: every node's role, term, indexes, contact and lag.

Exit status 0 when exactly one node reports itself leader, 1 otherwise (usable as a health
check).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from coordination import node_settings
from raft_node.client import RaftClient, RaftError


class Command(BaseCommand):
    help = "Show the Raft status of every node; exit 1 if the cluster has no leader."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--cluster", help="id=host:port,... (default: CLUSTER)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--timeout", type=float, default=2.0)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            members = node_settings.cluster_addresses(opts["cluster"])
            secret = node_settings.cluster_secret()
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        rows = [self._status(node, addr, secret, opts["timeout"]) for node, addr in members.items()]
        leaders = {r["id"] for r in rows if r.get("role") == "leader"}
        if opts["json"]:
            self.stdout.write(json.dumps({"leader": _only(leaders), "nodes": rows}, indent=2))
        else:
            self._table(rows, leaders)
        if len(leaders) != 1:
            raise SystemExit(1)

    def _status(self, node: str, addr: tuple[str, int], secret: bytes, timeout: float) -> dict:
        try:
            with RaftClient([addr], secret, timeout=timeout) as client:
                status = client.status()
        except RaftError as exc:
            return {"id": node, "address": f"{addr[0]}:{addr[1]}", "error": str(exc)}
        return status

    def _table(self, rows: list[dict], leaders: set[str]) -> None:
        head = f"{'node':6} {'address':22} {'role':10} {'term':>5} {'commit':>8} {'applied':>8} "
        head += f"{'contact':>8} {'lag':>6}"
        self.stdout.write(head)
        lags = {}
        for r in rows:
            lags.update({p: v["lag"] for p, v in r.get("peers", {}).items()})
        for r in rows:
            if "error" in r:
                self.stdout.write(f"{r['id']:6} {r['address']:22} unreachable: {r['error']}")
                continue
            contact = "-" if r["last_contact_ms"] is None else f"{r['last_contact_ms']}ms"
            lag = lags.get(r["id"], "-" if r["role"] != "leader" else 0)
            self.stdout.write(
                f"{r['id']:6} {r['address']:22} {r['role']:10} {r['term']:>5} {r['commit']:>8} "
                f"{r['applied']:>8} {contact:>8} {lag!s:>6}"
            )
        self.stdout.write(f"leader: {_only(leaders) or 'NONE'}")


def _only(leaders: set[str]) -> str | None:
    return next(iter(leaders)) if len(leaders) == 1 else None
