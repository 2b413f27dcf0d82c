"""Latency of ``DurableStorage.save()`` with fsync on: what one Raft ``Ready`` costs the host.

Each sample is one ``save(hard_state, entries)`` call (one record, one ``pwrite``, one
``fdatasync``) with ``--batch`` entries of ``--entry-bytes`` bytes and an advancing commit index,
the shape a busy leader's Ready has; a second row per batch turns the segment preallocation off
(the file grows with every save). Two "raw" rows measure the same bytes on the same disk with
nothing of ours around them: ``os.write`` + ``os.fsync`` on a growing file, and ``os.pwrite`` +
``os.fdatasync`` inside ``posix_fallocate``d space. So the table shows how much of the latency
is the disk, how much is ours, and what preallocation saves.

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
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raft_node.core.messages import Entry, HardState
from raft_node.storage.durable import DurableStorage


def percentile(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    rank = max(1, min(len(sorted_ns), round(p / 100 * len(sorted_ns))))
    return sorted_ns[rank - 1] / 1000


def bench_durable(
    path: Path, batch: int, entry_bytes: int, saves: int, warmup: int, preallocate: bool = True
) -> list[int]:
    payload = os.urandom(entry_bytes)
    samples: list[int] = []
    kw = {} if preallocate else {"preallocate_bytes": 0}
    with DurableStorage(path, **kw) as store:
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


def bench_raw(path: Path, nbytes: int, saves: int, warmup: int, preallocated: bool) -> list[int]:
    """The floor: write ``nbytes`` and sync, nothing else; at the end of a growing file with
    ``fsync``, or inside space allocated up front with ``fdatasync``."""
    data = os.urandom(nbytes)
    samples: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND * (not preallocated), 0o644)
    try:
        if preallocated:
            os.posix_fallocate(fd, 0, nbytes * (warmup + saves))
        for n in range(warmup + saves):
            t0 = time.perf_counter_ns()
            if preallocated:
                os.pwrite(fd, data, n * nbytes)
                os.fdatasync(fd)
            else:
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
        f"{name:<26}{percentile(s, 50):>10.0f}{percentile(s, 95):>10.0f}"
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
        f"{'save() sync on':<26}{'p50 us':>10}{'p95 us':>10}{'p99 us':>10}"
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
    counts = {"saves": args.saves, "warmup": args.warmup}
    print("\n".join(lines), flush=True)
    for batch in (int(b) for b in args.batches.split(",")):
        nbytes = batch * args.entry_bytes
        durable = partial(bench_durable, batch=batch, entry_bytes=args.entry_bytes, **counts)
        raw = partial(bench_raw, nbytes=nbytes, **counts)
        for name, run in (
            (f"batch={batch}", durable),
            ("  no preallocation", partial(durable, preallocate=False)),
            (f"  raw write+fsync {nbytes}B", partial(raw, preallocated=False)),
            ("  raw prealloc+fdatasync", partial(raw, preallocated=True)),
        ):
            lines.append(row(name, run(args.dir / f"b{batch}-{len(lines)}"), batch))
            print(lines[-1], flush=True)
    shutil.rmtree(args.dir, ignore_errors=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
