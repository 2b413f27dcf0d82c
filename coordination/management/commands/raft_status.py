"""``manage.py raft_status``: every node's role, term, indexes, contact and lag.

Exit status 0 when exactly one node reports itself leader, 1 otherwise (usable as a health
check). A thin wrapper around ``coordination.node.status_report``, shared with ``raftsync status``.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError

from coordination.node import node_settings, status_report
from coordination.node.options import add_options


class Command(BaseCommand):
    help = "Show the Raft status of every node; exit 1 if the cluster has no leader."
    requires_system_checks: ClassVar[list[str]] = []  # it validates the COORDINATION keys it uses

    def add_arguments(self, parser: Any) -> None:
        add_options(parser, status_report.OPTIONS)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            code = status_report.run(
                node_settings.load, opts, self.stdout, dev=node_settings.dev_mode()
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if code:
            sys.exit(code)
