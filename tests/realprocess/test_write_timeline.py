"""Smoke test of ``bench/write_timeline.py``: its traced nodes start, record and stop, most writes
are matched to their steps, and both tables come out. No figure is checked (timings prove
nothing in a test), only that every segment was measured."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "write_timeline.py"
# bench/write_timeline.OVERLAPPING: the bench scripts are not an importable package.
OVERLAPPING = ("appends sent -> first follower reads", "answer written -> client call returns")

pytestmark = pytest.mark.realprocess


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_one_write_in_flight_is_traced_through_every_segment() -> None:
    out = run("--writes", "300", "--warmup", "50")
    matched = re.search(r"(\d+) of 300 writes matched", out)
    assert matched is not None, out
    assert int(matched.group(1)) >= 150, out  # ticks may hide a few; most must match
    rows = [line for line in out.splitlines() if line.startswith("| ") and "µs" not in line]
    assert len(rows) == 15, out  # 13 segments, the leader's own save, the total
    for row in rows:
        label = row.split("|")[1].strip()
        if label not in OVERLAPPING:  # those two can be negative (see the script's doc)
            assert float(row.split("|")[2]) >= 0, row
    total = next(r for r in rows if "total" in r)
    assert float(total.split("|")[2]) > 0


def test_many_in_flight_gives_each_node_its_shares() -> None:
    out = run("--inflight", "8", "--seconds", "1", "--warmup", "20")
    assert re.search(r"8 in flight: [\d,]+ writes/s; the machine was busy \d+%", out), out
    assert "(leader) | client requests per save" in out
    assert out.count("(follower) | traced steps, outermost") == 2
