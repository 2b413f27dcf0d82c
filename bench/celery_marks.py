"""Reading what the benchmark's worker processes wrote: completion marks and profile samples.

Marks are read incrementally (an offset per file, whole lines only), so waiting for a
repetition to finish costs a few small reads per poll whatever the number of tasks, and the
reader never sees a half-written line as a completion.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchlib import percentile


class Marks:
    """Completions per repetition: ``seq -> first completion instant``, plus repeats."""

    def __init__(self, marks_dir: Path) -> None:
        self.dir = marks_dir
        self._offsets: dict[Path, int] = {}
        self._done: dict[int, dict[int, float]] = {}
        self._repeats: dict[int, int] = {}

    def poll(self) -> None:
        for path in self.dir.glob("done-*.log"):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # a line being written is read on the next poll
            self._offsets[path] = offset + end
            for line in chunk[:end].decode().splitlines():
                rep, seq, _task_id, t = line.split()
                done = self._done.setdefault(int(rep), {})
                if int(seq) in done:
                    self._repeats[int(rep)] = self._repeats.get(int(rep), 0) + 1
                    done[int(seq)] = min(done[int(seq)], float(t))
                else:
                    done[int(seq)] = float(t)

    def wait(self, rep: int, n: int, timeout: float, interval: float = 0.02) -> bool:
        """Poll until ``n`` distinct tasks of ``rep`` completed; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if len(self._done.get(rep, {})) >= n:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def done(self, rep: int) -> dict[int, float]:
        return dict(self._done.get(rep, {}))

    def duplicates(self, rep: int) -> int:
        return self._repeats.get(rep, 0)


def profile_summary(marks_dir: Path, windows: list[list[float]]) -> dict[str, Any]:
    """Per timed transport method: calls that started inside a measured window, their latency
    percentiles, and the share of the windows' time spent in them (clipped to the windows;
    summed over calling threads: near 100% for one thread means it did nothing else)."""
    samples: dict[str, list[float]] = {}
    busy: dict[str, float] = {}
    threads: dict[str, set[str]] = {}
    for path in marks_dir.glob("profile-*.jsonl"):
        role = path.name.split("-")[1]  # profile-<role>-<pid>.jsonl
        for line in path.read_text().splitlines():
            row = json.loads(line)
            row["m"] = f"{role} {row['m']}"
            start, end = row["t"], row["t"] + row["s"]
            inside = sum(max(0.0, min(end, b) - max(start, a)) for a, b in windows)
            if any(a <= start <= b for a, b in windows):
                samples.setdefault(row["m"], []).append(row["s"])
                threads.setdefault(row["m"], set()).add(row["th"])
            if inside > 0:  # a call that began before a window counts for its part inside
                busy[row["m"]] = busy.get(row["m"], 0.0) + inside
    total = sum(b - a for a, b in windows) or float("nan")
    out = {}
    for method, values in sorted(samples.items()):
        ms = sorted(v * 1000 for v in values)
        out[method] = {
            "count": len(ms),
            "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99),
            "mean_ms": sum(ms) / len(ms),
            "busy_share": busy.get(method, 0.0) / total,
            "threads": ", ".join(sorted(threads[method])),
        }
    return out
