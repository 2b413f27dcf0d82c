"""``manage.py run_raft_node``: host one Raft node in this process until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from coordination import node_settings
from raft_node.server import NodeServer


class Command(BaseCommand):
    help = "Run one raftsync Raft node (each flag defaults from settings.COORDINATION / env)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--id", dest="node_id", help="this node's id (NODE_ID)")
        parser.add_argument("--cluster", help="id=host:port,... of every voter (CLUSTER)")
        parser.add_argument("--data-dir", help="log and snapshot directory (DATA_DIR/<id>)")
        parser.add_argument("--metrics-port", type=int, help="Prometheus port (METRICS_PORT)")
        parser.add_argument("--listen", help="host:port to bind (default: own CLUSTER address)")

    def handle(self, *args: Any, **opts: Any) -> None:
        _configure_logging()
        try:
            config = node_settings.node_config(
                node_id=opts["node_id"],
                cluster=opts["cluster"],
                data_dir=opts["data_dir"],
                metrics_port=opts["metrics_port"],
                listen=opts["listen"],
            )
            sm = node_settings.state_machine()
        except (ValueError, ImportError, AttributeError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        server = NodeServer(config, sm)
        redis_url = node_settings.coordination()["REDIS_URL"]
        if redis_url and hasattr(sm, "part"):
            from coordination.redis_mirror import RedisMirror

            server.plugins.append(RedisMirror(server, redis_url))
        asyncio.run(_serve(server))
        if server.fatal_error is not None:
            sys.exit(1)


async def _serve(server: NodeServer) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.graceful_stop()))
    await server.run()


def _configure_logging() -> None:
    logger = logging.getLogger("raft_node")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
