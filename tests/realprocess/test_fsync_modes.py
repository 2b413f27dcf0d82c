"""Smoke test of ``bench/fsync_modes.py``: every mode runs with one writer and with three, prints
its row and removes its files. No figure is checked (timings prove nothing in a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.realprocess

MODES = ("fallocate+fdatasync", "zero-filled+fdatasync", "growing+fdatasync", "O_DSYNC")
# O_DIRECT+O_DSYNC too, where the filesystem takes O_DIRECT (tmpfs does not)


ARGS = ("--records", "20", "--writers", "1,3")


def test_every_mode_prints_a_row_per_writer_count_and_leaves_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fsync_modes.py"), "--dir", str(tmp_path), *ARGS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in row[1:-1]] for row in rows if row[1].strip() != "mode"]
    for mode in (*MODES, "O_DIRECT+O_DSYNC"):
        assert sorted(row[1] for row in rows if row[0] == mode) == ["1", "3"], done.stdout
    measured = [row for row in rows if not row[2].startswith("not supported")]
    assert {row[0] for row in measured} >= set(MODES)
    assert all(float(row[2]) > 0 for row in measured)
    assert list(tmp_path.iterdir()) == []  # the temporary directory and its files are gone
