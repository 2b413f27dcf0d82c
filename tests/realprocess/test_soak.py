"""The soak run (``bench/soak.py``): a mixed workload on a real cluster with a fault every few
seconds, failing if a node's RSS, descriptors or disk grow past the stated bounds or more than
2% of operations fail. The short form runs with the chaos tests (``make test-chaos``, in CI);
the ten-minute form, which writes ``bench/results/soak-latest.md``, is ``slow``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _soak(minutes: float, fault_every: float, out: Path) -> str:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            "--minutes",
            str(minutes),
            "--fault-every",
            str(fault_every),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=minutes * 60 + 180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out.read_text()


@pytest.mark.chaos
def test_soak_short_form(tmp_path: Path) -> None:
    report = _soak(1.5, 15, tmp_path / "soak.md")
    assert "FAIL" not in report and report.count("kill -9") >= 2


@pytest.mark.chaos
@pytest.mark.slow
def test_soak_ten_minutes() -> None:
    report = _soak(10, 30, ROOT / "bench" / "results" / "soak-latest.md")
    assert "FAIL" not in report
