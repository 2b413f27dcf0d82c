"""A 3-member etcd cluster from the ``etcd`` binary, for ``bench_vs_etcd.py``: start, status,
kill -9 and restart a member, the failover probe, and etcd's own Go load tool (``etcdctl check
perf``).

Everything talks to etcd over gRPC with the stubs ``aetcd`` ships (the same generated code the
load driver's client uses), with the *synchronous* grpc channel here: the orchestrator is a plain
blocking program and only the failover probe needs many RPCs in flight (``grpc.aio`` there).

The members run with fsync on (etcd's default: its WAL is fsynced before a proposal is
acknowledged), data directories under the run's temporary directory, ports chosen at run time,
and heartbeat/election timers passed in (``bench_vs_etcd.py`` matches them to raftsync's
defaults, so failover compares protocols rather than configurations).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from raft_node.testing.launcher import free_port

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
INSTALL_HINT = (
    "etcd is not installed, so the side-by-side benchmark cannot run (nothing failed).\n"
    "Install it from Debian's packages and run again:\n"
    "    apt-get install -y etcd-server etcd-client\n"
    "(etcd-server ships /usr/bin/etcd; etcd-client ships /usr/bin/etcdctl, whose `check perf` is\n"
    "the Go load tool this benchmark uses for etcd's server-side capacity.)"
)


def etcd_version() -> str:
    out = subprocess.run([ETCD or "etcd", "--version"], capture_output=True, text=True, timeout=10)
    first = out.stdout.strip().splitlines()
    return first[0] if first else "unknown"


def _status(endpoint: str, timeout: float) -> Any | None:
    """``Maintenance.Status`` of one member, or None when it does not answer in time."""
    import grpc
    from aetcd import rpc

    channel = grpc.insecure_channel(endpoint)
    try:
        return rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=timeout)
    except grpc.RpcError:
        return None
    finally:
        channel.close()


class EtcdCluster:
    """Members ``e1``..``e3`` on loopback, each ``etcd`` process started by us (so its pid is the
    server's, for /proc CPU readings) with its own data directory and log file."""

    def __init__(self, base_dir: Path, heartbeat_ms: int, election_ms: int, size: int = 3) -> None:
        self.base_dir = Path(base_dir)
        self.heartbeat_ms, self.election_ms = heartbeat_ms, election_ms
        self.ids = [f"e{i}" for i in range(1, size + 1)]
        self.client_port = {m: free_port() for m in self.ids}
        self.peer_port = {m: free_port() for m in self.ids}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.token = f"bench-{os.getpid()}-{int(time.time())}"
        self.initial = ",".join(f"{m}=http://127.0.0.1:{self.peer_port[m]}" for m in self.ids)
        self.member_ids: dict[int, str] = {}  # etcd's numeric member id -> our name

    def endpoint(self, member: str) -> str:
        return f"127.0.0.1:{self.client_port[member]}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(m) for m in self.ids]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def log_path(self, member: str) -> Path:
        return self.base_dir / f"{member}.log"

    def argv(self, member: str) -> list[str]:
        """One member's command line. ``--initial-cluster-state new`` is ignored by etcd once the
        data directory has a WAL, so a restart after kill -9 uses the same command."""
        client = f"http://{self.endpoint(member)}"
        peer = f"http://127.0.0.1:{self.peer_port[member]}"
        return [
            ETCD or "etcd",
            *("--name", member, "--data-dir", str(self.base_dir / member)),
            *("--listen-client-urls", client, "--advertise-client-urls", client),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", self.initial, "--initial-cluster-token", self.token),
            *("--initial-cluster-state", "new"),
            *("--heartbeat-interval", str(self.heartbeat_ms)),
            *("--election-timeout", str(self.election_ms)),
            *("--logger", "zap", "--log-level", "warn"),
        ]

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for member in self.ids:
            self.start_member(member)

    def start_member(self, member: str) -> None:
        # Only what etcd needs from the environment: an ETCD_* variable would override a flag.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(self.log_path(member), "ab") as log:
            self.procs[member] = subprocess.Popen(
                self.argv(member), env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self, member: str) -> None:
        proc = self.procs[member]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def statuses(self, timeout: float = 0.5) -> dict[str, Any]:
        """Each live member's status (members that do not answer are left out)."""
        out = {}
        for member in self.ids:
            if self.procs.get(member) is not None and self.procs[member].poll() is None:
                st = _status(self.endpoint(member), timeout)
                if st is not None:
                    self.member_ids[st.header.member_id] = member
                    out[member] = st
        return out

    def leader(self) -> tuple[str, int] | None:
        """(leader's name, its term) when a live member reports itself as the leader."""
        for member, st in self.statuses().items():
            if st.leader and st.leader == st.header.member_id:
                return member, st.raftTerm
        return None

    def wait_for_leader(self, timeout: float = 30.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.leader()
            if found is not None:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"etcd: no leader within {timeout}s (see {self.base_dir}/*.log)")

    def wait_converged(self, timeout: float = 60.0) -> None:
        """All members up, agreeing on the leader, and at the same applied index (the cluster is
        idle here, so equal indexes mean the restarted member caught up)."""
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            seen = self.statuses()
            if len(seen) == len(self.ids):
                leaders = {st.leader for st in seen.values()}
                applied = {st.raftAppliedIndex for st in seen.values()}
                if len(leaders) == 1 and 0 not in leaders and len(applied) == 1:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"etcd did not converge: { {m: str(s) for m, s in seen.items()} }")

    def tails(self) -> str:
        out = []
        for member in self.ids:
            with contextlib.suppress(OSError):
                out.append(f"{member}: {self.log_path(member).read_text(errors='replace')[-1500:]}")
        return "\n".join(out)


async def etcd_failover_probe(
    cluster: EtcdCluster,
    victim: str,
    term: int,
    interval: float,
    timeout: float,
    sig: int = signal.SIGKILL,
) -> float | None:
    """SIGKILL ``victim`` (the leader at ``term``); seconds until a survivor acknowledges a put
    (None: none within ``timeout``). With ``sig=SIGSTOP`` the victim hangs instead, and is
    killed after the probe.

    The twin of ``bench_raft.ours_failover_probe``: every ``interval`` a put with a 0.5 s deadline
    goes to each survivor on a channel connected before the kill (no client backoff). A follower
    forwards the proposal to the leader it knows; an answer whose header carries a term above
    ``term`` can only come from an entry a new leader committed.
    """
    import grpc
    from aetcd import rpc

    survivors = [m for m in cluster.ids if m != victim]
    channels = {m: grpc.aio.insecure_channel(cluster.endpoint(m)) for m in survivors}
    stubs = {m: rpc.KVStub(ch) for m, ch in channels.items()}
    for ch in channels.values():
        await asyncio.wait_for(ch.channel_ready(), 5)
    loop = asyncio.get_running_loop()
    first: asyncio.Future[float] = loop.create_future()
    counter = itertools.count()
    tasks: set[asyncio.Task[None]] = set()

    async def probe(stub: Any) -> None:
        req = rpc.PutRequest(key=b"failover-probe-%d" % next(counter), value=b"x" * 100)
        try:
            resp = await stub.Put(req, timeout=0.5)
        except grpc.aio.AioRpcError:
            return
        if resp.header.raft_term > term and not first.done():
            first.set_result(time.monotonic())

    proc = cluster.procs[victim]
    t_kill = time.monotonic()
    proc.send_signal(sig)
    try:
        deadline = t_kill + timeout
        while not first.done() and time.monotonic() < deadline:
            for member in survivors:
                task = asyncio.create_task(probe(stubs[member]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.wait([first], timeout=interval)
        return first.result() - t_kill if first.done() else None
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels.values():
            await ch.close()
        proc.kill()  # a paused victim ends here (a killed one already has)
        proc.wait(timeout=15)


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (etcdctl, once it has exited)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def check_perf(cluster: EtcdCluster, load: str, log_path: Path) -> dict[str, Any]:
    """``etcdctl check perf --load=<load>`` against all members; its throughput line and the CPU
    its run cost the servers and etcdctl itself.

    check perf is rate limited (s: 150/s, m: 1,000/s, l: 8,000/s, xl: 15,000/s, 60 s each, one
    gRPC client per simulated client, 256-byte keys, 1 KiB values): its "Throughput" is the
    server-side capacity only when it is below the limit (the line then says FAIL, which here
    means "the cluster was the bottleneck", not an error of this benchmark).
    """
    from benchlib import cpu_seconds

    argv = [ETCDCTL or "etcdctl", "--endpoints", ",".join(cluster.endpoints)]
    argv += ["check", "perf", f"--load={load}"]
    pids = cluster.pids()
    server0 = sum(cpu_seconds(p) or 0.0 for p in pids)
    child0 = children_cpu()
    t0 = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=200, env={**os.environ, "ETCDCTL_API": "3"}
    )
    wall = time.monotonic() - t0
    server = sum(cpu_seconds(p) or 0.0 for p in pids) - server0
    client = children_cpu() - child0
    log_path.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    text = proc.stdout + proc.stderr
    m = re.search(r"Throughput (?:is|too low:) (\d+) writes/s", text)
    slowest = re.search(r"[Ss]lowest request took(?: too long:)? ([\d.]+)s", text)
    stddev = re.search(r"Stddev (?:is|too high:) ([\d.]+)s", text)
    if m is None:  # e.g. its final delete of every key it wrote timed out: "Error: ... timed out"
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"check perf printed no throughput (rc={proc.returncode}): {last}")
    rate = float(m.group(1))
    ops = rate * 60  # check perf's fixed 60 s duration
    return {
        "tool": f"etcdctl check perf --load={load}",
        "writes_per_s": rate,
        "slowest_s": float(slowest.group(1)) if slowest else None,
        "stddev_s": float(stddev.group(1)) if stddev else None,
        "verdict": "PASS" if proc.returncode == 0 else "FAIL",
        "wall_s": wall,
        "server_cpu_us_per_op": 1e6 * server / ops if ops else None,
        "client_cpu_us_per_op": 1e6 * client / ops if ops else None,
    }
