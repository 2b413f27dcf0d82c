"""``LocalCluster``: real node processes on free loopback ports, for tests and benchmarks.

Each node is ``python manage.py run_raft_node`` (the command users run) in its own process with
its own data directory. Faults are real: ``kill`` sends SIGKILL (nothing flushed), ``pause``
SIGSTOP, ``partition`` cuts links through a ``FaultProxy`` (with ``proxied=True`` every peer link
goes through the proxy; clients always talk to nodes directly).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from raft_node.client import RaftClient, RaftError
from raft_node.testing.faultproxy import FaultProxy

Address = tuple[str, int]


_PORTS = random.Random()  # seeded from the OS: parallel test workers pick different ports
_GIVEN: set[int] = set()  # handed out by this process (not bound yet, so a bind test passes)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on now, from *below* the kernel's ephemeral range.

    A port the kernel hands out (bind to 0) comes from the ephemeral range, which every
    outgoing connection on the machine draws from too: between this call and the node's bind,
    a client socket (a test's, a worker's) may take it, and the node dies with "address already
    in use" (seen under three busy test workers). Ports below that range are only taken by
    explicit binds, so a random one that binds now stays free far more reliably.
    """
    low = 20_000
    high = min(_ephemeral_range()[0], 65_536) - 1
    for _ in range(200) if high > low else ():
        port = _PORTS.randint(low, high)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as s:  # an unusual port range: let the kernel choose
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(
        self,
        base_dir: Path,
        manage_py: Path,
        *,
        nodes: int = 3,
        secret: str = "test-cluster-secret",
        proxied: bool = False,
        settings: dict[str, Any] | None = None,
        node_settings: dict[str, dict[str, Any]] | None = None,
        client_ssl: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """``settings`` become every node's ``RAFTSYNC_*`` environment, ``node_settings[id]``
        that node's on top (its own TLS certificate, say); ``client_ssl`` is the TLS context of
        the cluster's own clients (``status``, ``wait_for_leader``...): assign it to switch."""
        self.base_dir = Path(base_dir)
        self.manage_py = Path(manage_py)
        self.secret = secret
        self.host = host
        self.ids = [f"n{i}" for i in range(1, nodes + 1)]
        self.addresses: dict[str, Address] = {n: (host, free_port(host)) for n in self.ids}
        self.settings = {
            "TICK_INTERVAL_MS": 10,
            "ELECTION_TICKS": 15,
            "HEARTBEAT_TICKS": 2,
            "STATE_MACHINE": "raft_node.kvstore.KVStore",  # the engine's tests and benchmark
            **(settings or {}),
        }
        self.node_settings = node_settings or {}
        # Extra environment per node (e.g. libfaketime's, to move one node's wall clock).
        self.node_env: dict[str, dict[str, str]] = {}
        self.client_ssl = client_ssl
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.proxy = FaultProxy(host) if proxied else None
        self._peer_maps = self._build_peer_maps()

    def _build_peer_maps(self) -> dict[str, str]:
        """The ``--cluster`` each node gets: direct addresses, or proxy links to its peers."""
        maps = {}
        for node in self.ids:
            members = []
            for peer in self.ids:
                addr = self.addresses[peer]
                if self.proxy is not None and peer != node:
                    addr = self.proxy.add_link(node, peer, addr)
                members.append(f"{peer}={addr[0]}:{addr[1]}")
            maps[node] = ",".join(members)
        return maps

    # -- processes -----------------------------------------------------------------------------

    def log_path(self, node: str) -> Path:
        return self.base_dir / f"{node}.log"

    def start(self) -> None:
        for node in self.ids:
            self.start_node(node)

    def add_machine(self, node: str) -> Address:
        """A new machine for ``node`` (not a member): its address. ``start_node`` starts it with
        ``--join`` through a member, on an empty data dir; ``raft_members add`` makes it one."""
        self.addresses[node] = (self.host, free_port(self.host))
        self.ids.append(node)
        return self.addresses[node]

    def start_node(self, node: str) -> None:
        host, port = self.addresses[node]
        env = {
            **os.environ,
            "RAFTSYNC_CLUSTER_SECRET": self.secret,
            "RAFTSYNC_DEBUG": "0",
            "PYTHONUNBUFFERED": "1",
            **self.node_env.get(node, {}),
        }
        settings = {**self.settings, **self.node_settings.get(node, {})}
        env.update({f"RAFTSYNC_{k}": str(v) for k, v in settings.items()})
        argv = [
            sys.executable,
            str(self.manage_py),
            "run_raft_node",
            "--id",
            node,
            *self._membership_flags(node),
            "--data-dir",
            str(self.base_dir / node),
            "--listen",
            f"{host}:{port}",
        ]
        log = open(self.log_path(node), "ab")  # noqa: SIM115 - owned by the child
        self.procs[node] = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.manage_py.parent
        )
        log.close()

    def _membership_flags(self, node: str) -> list[str]:
        """The original members get ``--cluster``; a machine added later ``--join``s through
        the first original member that is running."""
        if node in self._peer_maps:
            return ["--cluster", self._peer_maps[node]]
        via = next(n for n in self._peer_maps if self.alive(n))
        host, port = self.addresses[via]
        return ["--join", f"{host}:{port}"]

    def kill(self, node: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[node]
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=15)

    def pause(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGSTOP)

    def resume(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGCONT)

    def alive(self, node: str) -> bool:
        return node in self.procs and self.procs[node].poll() is None

    def stop(self) -> None:
        for _node, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.proxy is not None:
            self.proxy.close()

    # -- clients and status --------------------------------------------------------------------

    def client(self, nodes: Iterable[str] | None = None, timeout: float = 5.0) -> RaftClient:
        addrs = [self.addresses[n] for n in (nodes or self.ids)]
        return RaftClient(addrs, self.secret, timeout=timeout, ssl=self.client_ssl)

    def status(self, node: str, timeout: float = 1.0) -> dict[str, Any] | None:
        try:
            with self.client([node], timeout=timeout) as c:
                return c.status()
        except RaftError:
            return None

    def leader(self, among: Iterable[str] | None = None) -> str | None:
        for node in among or self.ids:
            if self.alive(node):
                st = self.status(node, timeout=0.5)
                if st is not None and st["role"] == "leader":
                    return node
        return None

    def wait_for_leader(
        self, among: Iterable[str] | None = None, timeout: float = 20.0, exclude: str | None = None
    ) -> str:
        deadline = time.monotonic() + timeout
        nodes = [n for n in (among or self.ids) if n != exclude]
        while time.monotonic() < deadline:
            leader = self.leader(nodes)
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise TimeoutError(f"no leader among {nodes} within {timeout}s")

    def wait_converged(self, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Wait until every live node has applied the same commit index as the leader."""
        deadline = time.monotonic() + timeout
        statuses: dict[str, Any] = {}
        while time.monotonic() < deadline:
            statuses = {n: self.status(n) for n in self.ids if self.alive(n)}
            values = list(statuses.values())
            if all(values) and len({(s["commit"], s["applied"]) for s in values}) == 1:
                leader = [s for s in values if s["role"] == "leader"]
                if leader and leader[0]["commit"] == leader[0]["applied"]:
                    return statuses
            time.sleep(0.1)
        raise TimeoutError(f"cluster did not converge: {statuses}")

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
