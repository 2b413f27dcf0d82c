"""Real disk faults for real node processes: a full tmpfs (ENOSPC), and an ``LD_PRELOAD`` shim
whose ``fsync``/``fdatasync`` fail with EIO or sleep, switched on by files in a control dir.

Why a shim and not device-mapper: a dm ``error``/``flakey``/``delay`` target on a loop device is
the most faithful fault, but containers usually have no device-mapper driver (``dmsetup`` fails
with "/dev/mapper/control: open failed" here). The shim fails the very call the storage makes,
and it behaves like a disk that lost the writes: once an fsync has failed, every later one
fails too (a restart is the only repair), and whatever the node wrote but never synced is gone,
as after a real lost write-back: the file is cut back to its length at its last good fsync, and
the ranges ``pwrite`` wrote since then inside that length (a preallocated segment) read as
zeros again.

Also the shared load and evidence: ``Writer`` streams unique cache writes and stamps each
acknowledgement, so a test can count acks after a fault, measure the longest gap without acks,
and (pinned to the failing node) see whether that node acknowledged anything after its failure;
``durable_last_index`` reads what a stopped node's disk really kept.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from coordination.primitives import commands as c
from coordination.primitives import limits
from raft_node.client import RaftError
from raft_node.client.policy import Targets
from raft_node.storage.durable import DurableStorage
from raft_node.testing.launcher import LocalCluster

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 65536
static ino_t synced_ino[MAX_FD];
static off_t synced_size[MAX_FD];
static ino_t dirty_ino[MAX_FD];
static off_t dirty_lo[MAX_FD], dirty_hi[MAX_FD]; /* pwrite'n since the last good sync */
static volatile int broken; /* a failed disk stays failed until the process restarts */
static void lose(int fd, off_t length);

static int control(const char *name, char *buf, size_t len) {
    const char *dir = getenv("DISKFAULT_DIR");
    char path[4096];
    if (dir == NULL) return -1;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = buf ? read(fd, buf, len - 1) : 0;
    close(fd);
    if (buf) buf[n > 0 ? n : 0] = 0;
    return 0;
}

static int faulty(int fd, const char *name) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    char buf[32];
    struct stat st;
    if (control("delay_ms", buf, sizeof buf) == 0) {
        long ms = atol(buf);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (!broken && control("eio", NULL, 0) == 0) broken = 1;
    if (broken) {
        if (fd >= 0 && fd < MAX_FD && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)
            && synced_ino[fd] == st.st_ino) {
            (void)ftruncate(fd, synced_size[fd]); /* the unsynced tail is lost */
            if (dirty_ino[fd] == st.st_ino) lose(fd, synced_size[fd]);
        }
        errno = EIO;
        return -1;
    }
    int rc = real(fd);
    if (rc == 0 && fd >= 0 && fd < MAX_FD && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        synced_ino[fd] = st.st_ino;
        synced_size[fd] = st.st_size;
        dirty_ino[fd] = 0;
    }
    return rc;
}

static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);

/* Unsynced writes inside the file's synced length are lost too: zeros again. */
static void lose(int fd, off_t length) {
    static const char zeros[4096];
    off_t end = dirty_hi[fd] < length ? dirty_hi[fd] : length;
    if (real_pwrite == NULL) return;
    for (off_t at = dirty_lo[fd]; at < end;) {
        size_t n = end - at < (off_t)sizeof zeros ? (size_t)(end - at) : sizeof zeros;
        ssize_t done = real_pwrite(fd, zeros, n, at);
        if (done <= 0) break;
        at += done;
    }
    dirty_ino[fd] = 0;
}

static ssize_t tracked_pwrite(int fd, const void *buf, size_t count, off_t offset) {
    struct stat st;
    if (real_pwrite == NULL)
        real_pwrite = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    if (!broken && fd >= 0 && fd < MAX_FD && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        if (dirty_ino[fd] != st.st_ino) {
            dirty_ino[fd] = st.st_ino;
            dirty_lo[fd] = offset;
            dirty_hi[fd] = offset;
        }
        if (offset < dirty_lo[fd]) dirty_lo[fd] = offset;
        if (offset + (off_t)count > dirty_hi[fd]) dirty_hi[fd] = offset + (off_t)count;
    }
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    return tracked_pwrite(fd, buf, count, offset);
}
ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    return tracked_pwrite(fd, buf, count, offset);
}

int fsync(int fd) { return faulty(fd, "fsync"); }
int fdatasync(int fd) { return faulty(fd, "fdatasync"); }
"""


def build_shim(directory: Path) -> Path:
    """Compile the shim with the system C compiler; skip the test when there is none."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build the fsync fault shim")
    src = directory / "fsync_fault.c"
    lib = directory / "fsync_fault.so"
    src.write_text(SHIM_SOURCE)
    done = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot build the fsync fault shim: {done.stderr.strip()[:200]}")
    return lib


def use_shim(cluster: LocalCluster, lib: Path) -> dict[str, Path]:
    """Preload the shim into every node; each gets its own control dir (returned)."""
    controls = {}
    for node in cluster.ids:
        ctl = cluster.base_dir / f"{node}.diskfault"
        ctl.mkdir()
        cluster.node_env[node] = {"LD_PRELOAD": str(lib), "DISKFAULT_DIR": str(ctl)}
        controls[node] = ctl
    return controls


def mount_tmpfs(path: Path, size_mb: int) -> None:
    """A small filesystem of its own for one node's data dir: it fills up without filling the
    machine's disk. Needs root (or CAP_SYS_ADMIN): skip the test otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command to put a data dir on a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}M", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root needed): {done.stderr.strip()[:200]}")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, leave: int) -> int:
    """Fill the filesystem of ``path`` with one file until ENOSPC, then give back ``leave``
    bytes, so the node's next few writes still fit and one of them hits the wall mid-load.
    Returns the filler's size."""
    filler = path / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler.stat().st_size


class Pinned(Targets):
    """Always the one seed: a leader hint is ignored, so every request goes to that node."""

    def leader_is(self, hint: str) -> bool:
        return False


class Writer(threading.Thread):
    """Streams unique cache writes (value ``b"1"``); remembers each acknowledged key, when it was
    acked, and when every attempt started and whether it was acked.

    ``pinned``: the client talks to ``nodes`` (one node) only, never following a leader hint,
    so an acknowledgement can only come from that node: it shows whether a node whose disk
    failed still acknowledged anything after the failure."""

    def __init__(
        self, cluster: LocalCluster, prefix: str, nodes=None, timeout=5.0, pinned=False
    ) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client(nodes, timeout=timeout)
        if pinned:  # the client's own target policy, replaced (test code may reach in)
            self.client._targets = Pinned(self.client._targets.seeds)
        self.prefix = prefix
        self.acked: list[tuple[str, float]] = []
        self.attempts: list[tuple[float, float | None]] = []  # (started, acked at or None)
        self.latencies: list[float] = []
        self.failed = 0
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            key = f"{self.prefix}{i}"
            started = time.monotonic()
            try:
                self.client.propose(c.cache_set(key, b"1", None))
                now = time.monotonic()
                self.acked.append((key, now))
                self.attempts.append((started, now))
                self.latencies.append(now - started)
            except RaftError:
                self.attempts.append((started, None))
                self.failed += 1
                time.sleep(0.01)
            i += 1
        self.client.close()

    def wait_acked(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert self.is_alive(), "the writer stopped"
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {count} writes acked"
            time.sleep(0.01)

    def stop(self) -> list[str]:
        self.halt.set()
        self.join(30)
        return [key for key, _ in self.acked]

    def acked_after(self, t: float) -> int:
        return sum(1 for _, at in self.acked if at > t)

    def started_between(
        self, start: float, end: float, excused: tuple[float, float] = (0.0, 0.0)
    ) -> tuple[int, int]:
        """(attempts, acknowledged ones) among the writes started in ``(start, end)``; an
        acknowledgement that arrived within ``excused`` does not count."""
        inside = [acked for at, acked in self.attempts if start < at < end]
        low, high = excused
        late = [at for at in inside if at is not None and not low <= at <= high]
        return len(inside), len(late)

    def longest_gap(self, since: float) -> float:
        """The longest time without an acknowledgement after ``since`` (the unavailability)."""
        stamps = [since] + [at for _, at in self.acked if at > since]
        return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


def durable_last_index(data_dir: Path, scratch: Path) -> int:
    """The last log index a stopped node's disk holds, as the node itself would recover it on
    restart (a torn tail dropped), read from a copy so the evidence is left as it was."""
    for part in ("log", "snapshots"):
        if (data_dir / part).exists():
            shutil.copytree(data_dir / part, scratch / part)
    with DurableStorage(scratch) as storage:
        state = storage.load()
    return state.entries[-1].index if state.entries else state.snapshot.meta.index


def wait_exit(cluster: LocalCluster, node: str, timeout: float = 20.0) -> int:
    """The node's exit status; fails the test if it is still running (a zombie that cannot
    persist but still listens would be the bug)."""
    try:
        return cluster.procs[node].wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{node} still runs {timeout}s after its disk failed")


def wait_caught_up(cluster: LocalCluster, node: str, timeout: float = 30.0) -> float:
    """Seconds until ``node`` has applied everything the leader had committed when this was
    called. (Under a steady load the nodes' indexes never agree at one instant, so "caught up"
    means reaching a mark, not ``wait_converged``.)"""
    started = time.monotonic()
    leader = cluster.wait_for_leader(timeout=timeout)
    status = cluster.status(leader)
    assert status is not None, f"the leader {leader} does not answer"
    mark = status["commit"]
    while time.monotonic() < started + timeout:
        status = cluster.status(node)
        if status is not None and status["applied"] >= mark:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{node} did not reach index {mark} in {timeout:.0f} s: {status}")


def _unwritten(values: dict[str, Any]) -> dict[str, Any]:
    """The keys whose record does not hold ``b"1"`` (absent: None)."""
    values = {k: None if v is None else v["value"] for k, v in values.items()}
    return {k: v for k, v in values.items() if v != b"1"}


def read_linearizable(cluster: LocalCluster, nodes: list[str], keys: list[str]) -> dict:
    """The keys not written, read through the leader among ``nodes`` (linearizable)."""
    return _read_all(cluster, nodes, keys, stale=False)


def read_local(cluster: LocalCluster, node: str, keys: list[str]) -> dict:
    """The keys not written on ``node`` itself (a stale, local read)."""
    return _read_all(cluster, [node], keys, stale=True)


def _read_all(cluster: LocalCluster, nodes: list[str], keys: list[str], stale: bool) -> dict:
    """Read in batches of ``BATCH_MAX`` keys (thousands of single reads take seconds)."""
    values: dict[str, Any] = {}
    with cluster.client(nodes, timeout=10.0) as client:
        for i in range(0, len(keys), limits.BATCH_MAX):
            batch = keys[i : i + limits.BATCH_MAX]
            values.update(
                zip(batch, client.read(c.cache_get_many(batch), stale=stale), strict=True)
            )
    return _unwritten(values)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0
