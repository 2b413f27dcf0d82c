"""``manage.py raft_members list|add|promote|remove|replace``: change the cluster's membership
while it runs. A thin wrapper around ``coordination.node.members_command``, shared with
``raftsync members``."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError

from coordination.node import members_command, node_settings


class Command(BaseCommand):
    help = "List the members, or add (as learner, then voter), promote, remove or replace one."
    requires_system_checks: ClassVar[list[str]] = []  # it validates the COORDINATION keys it uses

    def add_arguments(self, parser: Any) -> None:
        members_command.add_arguments(parser)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            code = members_command.run(
                node_settings.load, opts, self.stdout, dev=node_settings.dev_mode()
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if code:
            sys.exit(code)
