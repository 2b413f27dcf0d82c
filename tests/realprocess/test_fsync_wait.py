"""A write is acknowledged only once the leader's own log is synced, and a follower's slow disk
does not hold it back (the other follower completes the majority). Checked on real node
processes with ``bench/fsync_wait.py``, which makes one process's ``fdatasync``/``fsync`` return
late with ``strace`` fault injection: 100 ms is far above a write's time here (about 1 ms), so
the bounds below tell the two orderings apart whatever the machine's load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DELAY_MS = 100

pytestmark = [
    pytest.mark.realprocess,
    pytest.mark.skipif(shutil.which("strace") is None, reason="apt-get install strace"),
    pytest.mark.skipif(os.geteuid() != 0, reason="strace attaches to the node processes: root"),
]


def test_the_leader_acknowledges_after_its_own_sync_not_after_every_follower(tmp_path: Path):
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "fsync_wait.py"), "--skip-etcd"),
            *("--writes", "5", "--delay-ms", str(DELAY_MS), "--data-dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = [[c.strip() for c in line.split("|")[1:-1]] for line in done.stdout.splitlines()]
    rows = {cells[1]: float(cells[2]) for cells in table if cells[:1] == ["raftsync"]}
    assert set(rows) == {"no delay", "leader's syncs delayed", "one follower's syncs delayed"}
    assert rows["leader's syncs delayed"] >= DELAY_MS, done.stdout  # waits for the leader's disk
    assert rows["one follower's syncs delayed"] < DELAY_MS / 2, done.stdout  # not for both
