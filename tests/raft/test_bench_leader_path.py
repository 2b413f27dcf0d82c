"""Smoke test of ``bench/leader_path.py``: a single-voter node answers every write it is handed
with success (the script raises otherwise), and one line of figures comes out. No figure is
checked (timings prove nothing in a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_leader_path_benchmark_answers_every_write() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "leader_path.py"), "--rounds", "4", "--reps", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "µs per write min" in done.stdout
