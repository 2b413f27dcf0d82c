"""Latency of ``DurableStorage.save()`` with fsync on: what one Raft ``Ready`` costs the host.

Each sample is one ``save(hard_state, entries)`` call (one record, one write, one fsync) with
``--batch`` entries of ``--entry-bytes`` bytes and an advancing commit index, the shape a busy
leader's Ready has. A "raw" row measures a bare ``os.write`` + ``os.fsync`` of the same bytes on
the same disk, so the table shows how much of the latency is the disk and how much is ours.

    python bench/bench_storage.py --dir /tmp/bench-storage [--saves 3000] [--out table.txt]

Percentiles come from the sorted samples (nearest rank). The directory is wiped first.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raft_node.core.messages import Entry, HardState
from raft_node.storage.durable import DurableStorage


def percentile(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    rank = max(1, min(len(sorted_ns), round(p / 100 * len(sorted_ns))))
    return sorted_ns[rank - 1] / 1000


def bench_durable(path: Path, batch: int, entry_bytes: int, saves: int, warmup: int) -> list[int]:
    payload = os.urandom(entry_bytes)
    samples: list[int] = []
    with DurableStorage(path) as store:
        index = 0
        for n in range(warmup + saves):
            entries = [Entry(1, index + k + 1, payload) for k in range(batch)]
            hs = HardState(1, "n1", index)
            t0 = time.perf_counter_ns()
            store.save(hs, entries)
            elapsed = time.perf_counter_ns() - t0
            index += batch
            if n >= warmup:
                samples.append(elapsed)
    return samples


def bench_raw(path: Path, nbytes: int, saves: int, warmup: int) -> list[int]:
    """The floor: append ``nbytes`` and fsync, nothing else."""
    data = os.urandom(nbytes)
    samples: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for n in range(warmup + saves):
            t0 = time.perf_counter_ns()
            os.write(fd, data)
            os.fsync(fd)
            elapsed = time.perf_counter_ns() - t0
            if n >= warmup:
                samples.append(elapsed)
    finally:
        os.close(fd)
    return samples


def row(name: str, samples: list[int], entries_per_save: int) -> str:
    s = sorted(samples)
    saves_per_s = len(s) / (sum(s) / 1e9)
    return (
        f"{name:<22}{percentile(s, 50):>10.0f}{percentile(s, 95):>10.0f}"
        f"{percentile(s, 99):>10.0f}{saves_per_s:>11.0f}{saves_per_s * entries_per_save:>13.0f}"
    )


def header(args: argparse.Namespace) -> list[str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [
        f"command: python {' '.join(sys.argv)}",
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"{platform.system()} {platform.release()}, python {platform.python_version()}",
        f"commit:  {commit}   dir: {args.dir}   entry: {args.entry_bytes} B   "
        f"saves per row: {args.saves} (+{args.warmup} warmup)",
        "",
        f"{'save() fsync=on':<22}{'p50 us':>10}{'p95 us':>10}{'p99 us':>10}"
        f"{'saves/s':>11}{'entries/s':>13}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="scratch directory (wiped)")
    parser.add_argument("--saves", type=int, default=3000, help="measured saves per row")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--entry-bytes", type=int, default=128)
    parser.add_argument("--batches", default="1,16,64", help="entries per save, comma-separated")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    lines = header(args)
    print("\n".join(lines), flush=True)
    for batch in (int(b) for b in args.batches.split(",")):
        samples = bench_durable(
            args.dir / f"batch{batch}", batch, args.entry_bytes, args.saves, args.warmup
        )
        lines.append(row(f"batch={batch}", samples, batch))
        print(lines[-1], flush=True)
        raw = bench_raw(
            args.dir / f"raw{batch}.bin", batch * args.entry_bytes, args.saves, args.warmup
        )
        lines.append(row(f"  raw write+fsync {batch * args.entry_bytes}B", raw, batch))
        print(lines[-1], flush=True)
    shutil.rmtree(args.dir, ignore_errors=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
