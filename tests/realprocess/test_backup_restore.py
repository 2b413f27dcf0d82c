"""Backup and restore of a whole cluster (issue 13, item 4), with real processes.

A populated 3-node cluster (a session holding locks, a semaphore, queue messages ready, delayed
and leased, cache entries with and without TTLs, a result, a rate-limit bucket) is saved, and
restored into a brand-new 3-node cluster on new ports and directories, by the runbook in
docs/deployment.md ("Backups and restore") run as written: its ``sh`` blocks, in order, with the
variables it names set here (save, restore once per node, start each node, status). The new
cluster is then compared with the old one entry by entry, twice: through the state machine's
queries, and by taking a backup of the new cluster and comparing both images part by part.
A session whose deadline passed in between resumes, thanks to the new leader's grace.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from coordination.primitives import commands as c
from coordination.primitives.machine import CoordinationMachine
from raft_node.client import RaftClient
from raft_node.host.applier import Applier
from raft_node.storage.backup import verify_backup
from raft_node.testing.launcher import free_port

pytestmark = [pytest.mark.realprocess]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPT = BIN / "raftsync"
SECTION = re.search(
    r"## Backups and restore\n(.*?)\n## ", (ROOT / "docs" / "deployment.md").read_text(), re.S
)
assert SECTION is not None
SAVE, RESTORE, START, STATUS = re.findall(r"```sh\n(.*?)```", SECTION.group(1), re.S)
GRACE_TTL_MS = 10_000  # the session that must outlive its old deadline through the grace (long
# enough that a save on a loaded machine finishes before it: the old cluster compares too)
LONG = 600_000
CLOCKS = {"cache": -1, "ratelimits": 0, "results": 0}  # where a part's state keeps log time


def _env(cluster: str, secret: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAFTSYNC_") and k != "DJANGO_SETTINGS_MODULE"
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {
        **env,
        "PYTHONUNBUFFERED": "1",
        "RAFTSYNC_CLUSTER": cluster,
        "RAFTSYNC_CLUSTER_SECRET": secret,
        **extra,
    }


def _sh(block: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"
    return done


def _populate(client: RaftClient) -> dict[str, int]:
    """Every kind of state, held by two sessions; returns their ids and a leased message's."""
    short = client.propose(c.session_open(GRACE_TTL_MS, "grace-me"))["session"]
    worker = client.propose(c.session_open(LONG, "worker"))["session"]
    client.propose(c.lock_acquire(short, "lock/exclusive", "exclusive", "alice", 0))
    client.propose(c.lock_acquire(worker, "lock/shared", "shared", "bob", 0))
    client.propose(c.lock_acquire(short, "lock/shared", "shared", "alice", 0))
    for owner in ("w1", "w2"):
        client.propose(c.sem_acquire(worker, "sem/pool", 3, owner, 0))
    client.propose(c.queue_declare("jobs", 3, None, None))
    for i in range(6):
        client.propose(c.queue_put("jobs", f"job-{i}".encode(), i % 2, f"d{i}"))
    client.propose(c.queue_put("jobs", b"later", 0, None, LONG))  # delayed
    leased = client.propose(c.queue_get_many(worker, "jobs", 0, LONG, 2))
    assert len(leased) == 2, leased
    leased_ids = [m["id"] for m in leased]
    client.propose(c.cache_set("cache/forever", b"v" * 1000, None))
    client.propose(c.cache_set("cache/ttl", b"expires later", LONG))
    client.propose(c.cache_set("cache/counter", b"1", None))
    client.propose(c.cache_incr("cache/counter", 41))
    client.propose(c.result_set("result/1", b"done", LONG, True, False))
    client.propose(c.ratelimit_take("rl/api", 10, 3_600_000, 10, 3))  # refills in 18 min
    return {"short": short, "worker": worker, "leased": leased_ids[0]}


def _view(client: RaftClient) -> dict[str, Any]:
    """Every entry, as the state machine's queries show it (linearizable reads)."""
    read = client.read
    sessions = sorted(read(c.session_list()), key=lambda s: s["session"])
    cache_keys = read(c.cache_keys("", 1000))
    return {
        "sessions": [{k: s[k] for k in ("session", "ttl_ms", "label")} for s in sessions],
        "locks": read(c.lock_list()),
        "lock_exclusive": read(c.lock_inspect("lock/exclusive")),
        "lock_shared": read(c.lock_inspect("lock/shared")),
        "semaphore": read(c.sem_inspect("sem/pool")),
        "queues": read(c.queue_list()),
        "ready": read(c.queue_peek("jobs", 100)),
        "cache_keys": cache_keys,
        "cache": {k["key"]: read(c.cache_get(k["key"])) for k in cache_keys},
        "result": read(c.result_get("result/1")),
        # Its tokens are computed from log time at the read: compare what is stored.
        "ratelimit": {
            k: v
            for k, v in read(c.ratelimit_get("rl/api")).items()
            if k not in ("tokens", "full_in_ms")
        },
    }


def _parts(image: bytes) -> dict[str, Any]:
    """Each part's state (and the applier's dedup table) from a backup image."""
    machine = CoordinationMachine()
    applier = Applier(machine)
    applier.restore(image)
    state = msgpack.unpackb(machine.snapshot(), raw=False, strict_map_key=False)[1]
    state["applier.clients"] = {k: v[:3] for k, v in applier.clients.items()}
    state["applier.waits"] = applier.waits
    return state


def test_a_populated_cluster_survives_save_and_restore_into_a_new_cluster(
    coordination_cluster, tmp_path: Path
) -> None:
    old = coordination_cluster
    old_spec = ",".join(f"{n}={h}:{p}" for n, (h, p) in old.addresses.items())
    with old.client(timeout=10) as client:
        ids = _populate(client)
        before = _view(client)
    backup = tmp_path / "cluster.rsb"
    env = _env(old_spec, old.secret, BACKUP=str(backup))

    started = time.monotonic()
    saved = _sh(SAVE, env, tmp_path)
    save_seconds = time.monotonic() - started
    header = json.loads(saved.stdout[saved.stdout.index("{") :])
    assert header["verified"] and header["voters"] == ["n1", "n2", "n3"]
    with old.client(timeout=10) as client:
        assert _view(client) == before  # nothing moved while it was taken
        applied = client.status()["applied"]
    assert 0 < header["index"] <= applied

    new_ports = {n: free_port() for n in ("a", "b", "c")}
    new_spec = ",".join(f"{n}=127.0.0.1:{p}" for n, p in new_ports.items())
    restore_seconds = 0.0
    for node in new_ports:
        node_env = {**env, "NEW_CLUSTER": new_spec, "NODE": node, "DATA_DIR": str(tmp_path / node)}
        started = time.monotonic()
        _sh(RESTORE, node_env, tmp_path)
        restore_seconds += time.monotonic() - started
    # The short session's deadline, in the old cluster's log time, passes before the new
    # cluster starts: only the new leader's grace can keep it.
    time.sleep(GRACE_TTL_MS / 1000)
    procs = {}
    try:
        for node in new_ports:
            node_env = {**env, "NEW_CLUSTER": new_spec, "NODE": node}
            node_env["DATA_DIR"] = str(tmp_path / node)
            log = open(tmp_path / f"{node}.log", "wb")  # noqa: SIM115 - owned by the child
            procs[node] = subprocess.Popen(
                ["bash", "-c", START],
                env=node_env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
        started = time.monotonic()
        _sh(STATUS, {**env, "NEW_CLUSTER": new_spec}, tmp_path)
        elect_seconds = time.monotonic() - started
        addresses = [("127.0.0.1", p) for p in new_ports.values()]
        with RaftClient(addresses, old.secret, timeout=10) as client:
            after = _view(client)
            short = client.read(c.session_get(ids["short"]))
            # A backup of the new cluster, to compare the images part by part.
            second = tmp_path / "restored.rsb"
            _sh(SAVE, {**env, "RAFTSYNC_CLUSTER": new_spec, "BACKUP": str(second)}, tmp_path)
            # Resumes: the session is live with a fresh TTL, and its holder goes on using it;
            # the lease holder acks a message it leased in the old cluster.
            assert short is not None and short["expires_in_ms"] > 0, short
            client.propose(c.session_keepalive(ids["short"]))
            client.propose(c.queue_ack(ids["worker"], "jobs", ids["leased"]))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=15)
    assert after == before
    _compare_images(backup, second)
    print(
        f"\nbackup/restore timings: save {save_seconds:.2f} s (incl. inspect), restore "
        f"{restore_seconds:.2f} s for 3 nodes, new cluster elected+status {elect_seconds:.2f} s, "
        f"image {header['size']} bytes at index {header['index']}"
    )


def _compare_images(first: Path, second: Path) -> None:
    """Entry by entry: every part of the restored cluster's state equals the saved one, but
    for what log time moves (the new leader's grace and clock stamps): session deadlines and
    the clock some parts keep (the log time of the last entry they saw)."""
    a, b = (_parts(verify_backup(p)[1]) for p in (first, second))
    assert set(a) == set(b)
    for state in (a, b):
        for part, at in CLOCKS.items():
            state[part]["counters"][at] = None
    differ = [part for part in sorted(a) if part != "sessions" and a[part] != b[part]]
    assert not differ, {part: (a[part], b[part]) for part in differ}
    live_a, live_b = ({row[0]: row[1::2] for row in x["sessions"][0]} for x in (a, b))
    assert live_a == live_b  # the same sessions, TTLs and labels (deadlines were extended)
    assert a["sessions"][1] == b["sessions"][1]


def _manage(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "raft_snapshot", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_django_command_saves_and_refuses_a_corrupt_file(
    coordination_cluster, tmp_path: Path
) -> None:
    """``manage.py raft_snapshot``: the same flags; ``--json`` states index, term and sha256;
    a damaged file is refused by inspect and restore with an error naming it, writing nothing."""
    old = coordination_cluster
    spec = ",".join(f"{n}={h}:{p}" for n, (h, p) in old.addresses.items())
    env = _env(spec, old.secret)
    with old.client(timeout=10) as client:
        client.propose(c.cache_set("django/one", b"1", None))
    path = tmp_path / "b.rsb"
    saved = _manage("save", str(path), "--json", env=env, cwd=ROOT)
    assert saved.returncode == 0, saved.stderr
    report = json.loads(saved.stdout)
    assert report["index"] > 0 and len(report["sha256"]) == 64
    assert verify_backup(path)[0].sha256 == report["sha256"]
    follower = next(n for n in old.ids if n != old.leader())
    other = tmp_path / "f.rsb"
    assert _manage("save", str(other), "--from-node", follower, env=env, cwd=ROOT).returncode == 0
    assert verify_backup(other)[0].extra["node"] == follower

    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    for args in (
        ("inspect", str(path)),
        ("restore", str(path), "--cluster", "x=127.0.0.1:1", "--data-dir", str(tmp_path / "x")),
    ):
        refused = _manage(*args, env=env, cwd=ROOT)
        assert refused.returncode != 0
        assert "checksum mismatch" in refused.stderr and str(path) in refused.stderr
    assert not (tmp_path / "x").exists()
    console = subprocess.run(
        [str(SCRIPT), "snapshot", "inspect", str(path)], env=env, capture_output=True, text=True
    )
    assert console.returncode == 1 and "checksum mismatch" in console.stderr
