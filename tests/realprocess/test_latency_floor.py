"""Smoke test of ``bench/latency_floor.py``: its four processes start, talk and stop, and it
prints one row per configuration. No figure is checked (timings prove nothing in a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.realprocess


def test_the_floor_benchmark_prints_its_rows_and_leaves_nothing_behind(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "latency_floor.py"),
            "--writes",
            "50",
            "--warmup",
            "5",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 4 hops")]
    assert len(rows) == 3, done.stdout
    assert all(float(row.split("|")[2]) > 0 for row in rows)
    assert list(tmp_path.iterdir()) == []  # its files are removed
