"""Smoke test of the growth benchmark (``bench/bench_growth.py --quick``), and its checks.

The quick run starts a real cluster and goes through every step (keys at two levels, a queue
backlog, three value sizes, the snapshots and RSS readings) in about 10 s, and the report must
have its tables and both checks; no figure is judged (timings on a shared machine prove nothing
in a test). The checks themselves are arithmetic on recorded figures, tested here on made-up
ones: a falling or rising memory per key is not flat, and a per-key snapshot time that rises
is superlinear while one that falls (fixed costs spread out) is linear.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import growth_report  # noqa: E402


@pytest.mark.realprocess
def test_quick_run_writes_the_growth_table_and_both_checks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, str(ROOT / "bench" / "bench_growth.py"), "--quick"]
    argv += ["--out-dir", str(out), "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.terminate()  # unwinds like Ctrl-C: the cluster and the driver are stopped
        proc.communicate(timeout=60)
        pytest.fail("bench_growth.py --quick took over 90 s")
    assert proc.returncode == 0, stdout + stderr[-4000:]
    report = (out / "growth-latest.md").read_text()
    for text in ("1,000 keys", "2,000 keys", "queued messages", "65,536 B", "RSS n1 / n2 / n3"):
        assert text in report
    assert "memory per key: " in report and "snapshot serialisation, CPU time: " in report
    assert "n/a" not in report.split("## Checks")[1].split("## Details")[0]
    data = json.loads((out / "growth-latest.json").read_text())
    assert [row["keys"] for row in data["rows"]] == [1_000, 2_000, 2_000]
    for row in [data["start"], *data["rows"]]:
        assert set(row["rss_mb"]) == {"n1", "n2", "n3"}
        assert all(
            node["bytes"] > 0 and node["ms"] > 0 for node in row["snapshot"]["nodes"].values()
        )
    assert [v["size"] for v in data["values"]] == [100, 4096, 65536]


def _result(rss: list[float], snapshot_ms: list[float]) -> dict[str, Any]:
    """A recorded run with the start and two levels (10k, 100k keys)."""

    def row(name: str, keys: int, mb: float, ms: float) -> dict[str, Any]:
        nodes = {n: {"bytes": 1, "ms": ms, "serialize_cpu_ms": ms / 2} for n in ("n1", "n2")}
        return {
            "name": name,
            "keys": keys,
            "rss_mb": {"n1": mb, "n2": mb},
            "snapshot": {"nodes": nodes},
            "restarted": {"rss_mb": mb, "state": {"state_kb": mb * 1024}},
            "results": {},
        }

    rows = [
        row(f"{k} keys", k, mb, ms)
        for k, mb, ms in zip((10_000, 100_000), rss[1:], snapshot_ms, strict=True)
    ]
    return {"start": row("start", 0, rss[0], 1.0), "rows": rows, "values": []}


def test_memory_per_key_flat_falling_and_rising() -> None:
    mib_per_key = 1 / (1 << 20)  # RSS is in MiB: keys * bytes per key * this
    flat = _result(
        [100, 100 + 10_000 * 600 * mib_per_key, 100 + 100_000 * 640 * mib_per_key], [10, 100]
    )
    ok, text = growth_report.memory_check(flat)
    assert ok and text.startswith("memory per key: flat")
    falling = _result(
        [100, 100 + 10_000 * 900 * mib_per_key, 100 + 100_000 * 600 * mib_per_key], [10, 100]
    )
    ok, text = growth_report.memory_check(falling)
    assert not ok and "not flat, falling" in text and "1.50" in text
    rising = _result(
        [100, 100 + 10_000 * 600 * mib_per_key, 100 + 100_000 * 900 * mib_per_key], [10, 100]
    )
    ok, text = growth_report.memory_check(rising)
    assert not ok and "not flat, rising" in text


def test_snapshot_time_linear_unless_the_per_key_time_rises() -> None:
    rss = [100.0, 110.0, 200.0]
    ok, text = growth_report.snapshot_check(_result(rss, [30, 150]), "ms", "snapshot")
    assert ok and "linear" in text and "exponent 10,000->100,000 0.70" in text
    ok, text = growth_report.snapshot_check(_result(rss, [10, 200]), "ms", "snapshot")
    assert not ok and "superlinear" in text and "rise 2.00" in text
