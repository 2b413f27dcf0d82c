"""``manage.py raft_snapshot save|inspect|restore FILE``: back up a running cluster to a file,
verify one, or seed a new cluster's data directories from one (like ``etcdctl snapshot``).

A thin wrapper around ``coordination.node.snapshot_tool``, shared with ``raftsync snapshot``;
only the settings source differs (this project's ``COORDINATION`` and DEBUG).
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError

from coordination.node import node_settings, snapshot_tool
from coordination.node.options import add_options
from raft_node.client import RaftError
from raft_node.storage.backup import BackupError


class Command(BaseCommand):
    help = (
        "Back up the cluster (save FILE), verify a backup (inspect FILE), or write new data "
        "directories from one (restore FILE --cluster ... [--node-id ID] --data-dir DIR)."
    )
    requires_system_checks: ClassVar[list[str]] = []  # it validates the COORDINATION keys it uses

    def add_arguments(self, parser: Any) -> None:
        snapshot_tool.add_positionals(parser)
        add_options(parser, snapshot_tool.OPTIONS)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            snapshot_tool.run(node_settings.load, opts, self.stdout, dev=node_settings.dev_mode())
        except (ValueError, BackupError, RaftError) as exc:
            raise CommandError(str(exc)) from exc
