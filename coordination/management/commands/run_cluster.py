"""``manage.py run_cluster``: a local development cluster in one terminal.

Starts ``--nodes`` ``run_raft_node`` processes on consecutive ports (data under ``var/``), the
Django web server (``--web``, default 127.0.0.1:8000, SQLite migrated first) and a Celery worker
on the ``raft://`` broker (``--worker``), so nothing outside this repository is needed. Any
process that dies is restarted (with backoff); Ctrl-C or SIGTERM stops them all (SIGTERM first,
so a leader hands over; SIGKILL after a grace period). The cluster secret comes from settings/env,
or is generated once and kept in ``var/cluster.secret`` so restarts and other commands agree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from coordination import node_settings
from raft_node.client import RaftClient, RaftError

MANAGE = Path(settings.BASE_DIR) / "manage.py"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started: float = field(default=0.0)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Command(BaseCommand):
    help = "Run a local N-node raftsync cluster; restarts crashed nodes; Ctrl-C stops all."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--nodes", type=int, default=3)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--base-port", type=int, default=7001)
        parser.add_argument("--data-dir", default=None, help="default: DATA_DIR (var)")
        parser.add_argument(
            "--metrics-base-port",
            type=int,
            default=0,
            help="node i serves /metrics on this port + i - 1 (0 = off)",
        )
        parser.add_argument("--no-restart", action="store_true")
        parser.add_argument(
            "--web", default="127.0.0.1:8000", help="address of the web server; 'off' to run none"
        )
        parser.add_argument("--no-worker", action="store_true", help="run no Celery worker")

    def handle(self, *args: Any, **opts: Any) -> None:
        data_dir = Path(opts["data_dir"] or settings.COORDINATION["DATA_DIR"])
        data_dir.mkdir(parents=True, exist_ok=True)
        ids = [f"n{i}" for i in range(1, opts["nodes"] + 1)]
        ports = {n: opts["base_port"] + i for i, n in enumerate(ids)}
        cluster = ",".join(f"{n}={opts['host']}:{ports[n]}" for n in ids)
        secret = node_settings.cluster_secret(
            {**settings.COORDINATION, "DATA_DIR": str(data_dir)}, create=True
        ).decode()
        env = {**os.environ, "RAFTSYNC_CLUSTER_SECRET": secret, "RAFTSYNC_CLUSTER": cluster}
        children = []
        for i, node in enumerate(ids):
            argv = [
                sys.executable,
                str(MANAGE),
                "run_raft_node",
                "--id",
                node,
                "--cluster",
                cluster,
                "--data-dir",
                str(data_dir / node),
            ]
            if opts["metrics_base_port"]:
                argv += ["--metrics-port", str(opts["metrics_base_port"] + i)]
            children.append(Child(node, argv, env))
        broker = ";".join(f"raft://{opts['host']}:{ports[n]}" for n in ids)
        env["RAFTSYNC_CELERY_BROKER_URL"] = broker
        children += self._services(opts, env)
        self.stdout.write(f"starting {len(ids)} nodes: {cluster}")
        self.stdout.write(f"cluster secret in {data_dir / 'cluster.secret'}; Ctrl-C stops all")
        stop = _StopFlag()
        for c in children:
            c.start()
        try:
            self._supervise(children, cluster, secret, stop, restart=not opts["no_restart"])
        finally:
            _stop_all(children)

    def _services(self, opts: dict[str, Any], env: dict[str, str]) -> list[Child]:
        """The web server and the Celery worker, both on this cluster."""
        services = []
        if opts["web"] != "off":
            subprocess.run(
                [sys.executable, str(MANAGE), "migrate", "--noinput", "-v", "0"],
                env=env,
                check=True,
            )
            argv = [sys.executable, str(MANAGE), "runserver", opts["web"], "--noreload"]
            services.append(Child("web", argv, {**env, "RAFTSYNC_DEBUG": "1"}))  # dev server
            self.stdout.write(f"web: http://{opts['web']}/admin/")
        if not opts["no_worker"]:
            argv = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "syncproject",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
            ]
            services.append(Child("worker", argv, env))
            self.stdout.write(f"celery worker on {env['RAFTSYNC_CELERY_BROKER_URL']}")
        return services

    def _supervise(
        self, children: list[Child], cluster: str, secret: str, stop: _StopFlag, restart: bool
    ) -> None:
        announced = None
        while not stop.set:
            time.sleep(0.2)
            now = time.monotonic()
            for c in children:
                if c.alive() or c.proc is None:
                    continue
                if not restart:
                    self.stderr.write(f"{c.name} exited ({c.proc.returncode}); not restarting")
                    return
                if c.next_start == 0.0:
                    # Back off if it keeps dying right after start (bad config, port taken).
                    quick = now - c.started < 5
                    c.next_start = now + (min(30.0, 2.0**c.restarts) if quick else 0.5)
                    self.stderr.write(f"{c.name} exited with {c.proc.returncode}; restarting")
                elif now >= c.next_start:
                    c.restarts += 1
                    c.next_start = 0.0
                    c.start()
            leader = _leader(cluster, secret)
            if leader != announced and leader:
                self.stdout.write(f"leader: {leader}")
                announced = leader


class _StopFlag:
    def __init__(self) -> None:
        self.set = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, *_: object) -> None:
        self.set = True


def _leader(cluster: str, secret: str) -> str | None:
    try:
        with RaftClient(cluster, secret, timeout=0.3) as client:
            status = client.status()
    except RaftError:
        return None
    return status.get("leader") or None


def _stop_all(children: list[Child], grace: float = 10.0) -> None:
    """The cluster's clients (web, worker) first, so they do not see it vanish under them."""
    services = [c for c in children if c.name in ("web", "worker")]
    for group in (services, [c for c in children if c not in services]):
        _stop_group(group, grace)


def _stop_group(children: list[Child], grace: float) -> None:
    for c in children:
        if c.alive():
            assert c.proc is not None
            c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for c in children:
        if c.proc is None:
            continue
        try:
            c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
