"""Process supervision for ``manage.py run_cluster``: start children, restart the ones that die
(with backoff when they die young: a bad config or a taken port must not spin), and stop them
all on Ctrl-C/SIGTERM, the cluster's clients (web, worker) before the nodes so they never see it
vanish under them. Django-free; the command decides what the children are.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from raft_node.client import RaftClient, RaftError

CLIENT_SERVICES = ("web", "worker")


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


class StopFlag:
    """Set by SIGINT/SIGTERM; the supervisor loop polls it."""

    def __init__(self) -> None:
        self.set = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, *_: object) -> None:
        self.set = True


def supervise(
    children: list[Child],
    cluster: str,
    secret: str,
    stop: StopFlag,
    *,
    restart: bool,
    say: Callable[[str], None],
    complain: Callable[[str], None],
) -> None:
    """Until ``stop``: restart dead children (unless ``restart`` is off: then return at the
    first death) and announce each new leader of ``cluster``."""
    announced = None
    while not stop.set:
        time.sleep(0.2)
        now = time.monotonic()
        for c in children:
            if c.alive() or c.proc is None:
                continue
            if not restart:
                complain(f"{c.name} exited ({c.proc.returncode}); not restarting")
                return
            if c.next_start == 0.0:
                quick = now - c.started < 5
                c.next_start = now + (min(30.0, 2.0**c.restarts) if quick else 0.5)
                complain(f"{c.name} exited with {c.proc.returncode}; restarting")
            elif now >= c.next_start:
                c.restarts += 1
                c.next_start = 0.0
                c.start()
        leader = current_leader(cluster, secret)
        if leader != announced and leader:
            say(f"leader: {leader}")
            announced = leader


def current_leader(cluster: str, secret: str) -> str | None:
    try:
        with RaftClient(cluster, secret, timeout=0.3) as client:
            status = client.status()
    except RaftError:
        return None
    return status.get("leader") or None


def stop_all(children: list[Child], grace: float = 10.0) -> None:
    """SIGTERM (a leader hands over), SIGKILL after ``grace``; clients first, then nodes."""
    services = [c for c in children if c.name in CLIENT_SERVICES]
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
