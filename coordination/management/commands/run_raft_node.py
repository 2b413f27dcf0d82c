"""``manage.py run_raft_node``: host one Raft node in this process until SIGTERM/SIGINT.

A thin wrapper: the options and the implementation are ``coordination.node.node_runner``'s,
shared with ``raftsync node``; only the settings source differs (this project's ``COORDINATION``
and DEBUG).
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError

from coordination.node import node_runner, node_settings
from coordination.node.options import add_options


class Command(BaseCommand):
    help = "Run one raftsync Raft node (flags > RAFTSYNC_* > COORDINATION > defaults)."
    # The node needs only COORDINATION, which it validates itself (one line naming the key); the
    # project's other checks (URLs, DRF...) are the web server's business, not the node's.
    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: Any) -> None:
        add_options(parser, node_runner.OPTIONS)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            code = node_runner.run(node_settings.load, opts, dev=node_settings.dev_mode())
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if code:
            sys.exit(code)
