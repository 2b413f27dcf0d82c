"""Smoke test of the side-by-side etcd benchmark (``bench/bench_vs_etcd.py --quick``).

It checks that the benchmark runs end to end — both clusters start, every workload, the failover
trial and the report and CDF are produced — not any figure: timings on a shared machine prove
nothing in a test. Without the ``etcd`` binary (a machine that has not run ``apt-get install
etcd-server etcd-client``) it is skipped, and the benchmark's own no-etcd path (a message and
exit 0, so CI never breaks on a missing binary) is checked instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_vs_etcd.py"

pytestmark = pytest.mark.realprocess


def _run(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run the benchmark; past ``timeout`` it gets SIGTERM (which it unwinds like Ctrl-C,
    stopping its clusters and drivers) rather than SIGKILL, which would orphan them."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"bench_vs_etcd.py --quick took over {timeout:.0f}s:\n{err[-4000:]}")
    return proc.returncode, out, err


def test_without_etcd_says_how_to_install_and_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no etcd on this PATH
    rc, out, err = _run(["--quick", "--out-dir", str(tmp_path / "out")], env, 60)
    assert rc == 0, err
    assert "apt-get install -y etcd-server etcd-client" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(
    shutil.which("etcd") is None,
    reason="etcd not installed (apt-get install etcd-server etcd-client)",
)
def test_quick_run_writes_the_table_and_the_cdf(tmp_path: Path) -> None:
    missing = "bench dependency missing: pip install -r requirements-dev.txt"
    pytest.importorskip("aetcd", reason=missing)
    pytest.importorskip("matplotlib", reason=missing)
    out = tmp_path / "out"
    args = ["--quick", "--out-dir", str(out), "--data-dir", str(tmp_path)]
    rc, stdout, err = _run(args, dict(os.environ), 45)
    assert rc == 0, stdout + err[-4000:]
    report = (out / "vs_etcd.md").read_text()
    for row in ("1 client, writes/s", "in flight", "lease + txn", "v3lock", "failover", "CPU per"):
        assert row in report
    assert "| - | - |" not in report  # every row got figures from both systems
    assert (out / "vs_etcd_cdf.png").stat().st_size > 10_000
