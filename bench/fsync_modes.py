"""How a durable append is best issued on this disk: the ways to make one record durable, side
by side, with one writer and with three at once (three nodes sharing one disk, as the local
benchmarks do).

    .venv/bin/python bench/fsync_modes.py [--dir /path/on/the/disk] [--records 3000] [--writers 1,3]

Modes, each appending ``--record-bytes`` records to its own file (one file per writer):

- ``fallocate+fdatasync``: ``pwrite`` into ``posix_fallocate``d space, then ``fdatasync``; what
  ``DurableStorage`` does;
- ``zero-filled+fdatasync``: the same into space filled with written zeros (no unwritten extents
  to convert);
- ``growing+fdatasync``: the file grows with each record (no preallocation);
- ``O_DSYNC``: ``pwrite`` on a descriptor opened ``O_DSYNC`` in preallocated space (the write
  returns once durable; no separate call);
- ``O_DIRECT+O_DSYNC``: a whole aligned 4 KiB block per record (the last block rewritten), past
  the page cache.

Each writer pauses 0.3 ms between records, about a follower's time between two appends. The
table gives p50 / p90 / p99 / mean in µs over every writer's samples. Nothing asserts; the
directory's files are removed afterwards. ``bench/README.md`` ("Where a write's time goes")
has the figures measured on the project's machine.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import percentile

PREALLOCATED = 4 << 20
BLOCK = 4096


def _fallocate(fd: int) -> None:
    os.posix_fallocate(fd, 0, PREALLOCATED)


def _zero_fill(fd: int) -> None:
    os.pwrite(fd, b"\0" * PREALLOCATED, 0)


def _nothing(fd: int) -> None:
    pass


# name -> (prepare the file, extra open flags, records go as whole aligned blocks)
MODES: dict[str, tuple[Callable[[int], None], int, bool]] = {
    "fallocate+fdatasync": (_fallocate, 0, False),
    "zero-filled+fdatasync": (_zero_fill, 0, False),
    "growing+fdatasync": (_nothing, 0, False),
    "O_DSYNC": (_fallocate, os.O_DSYNC, False),
    "O_DIRECT+O_DSYNC": (_zero_fill, getattr(os, "O_DIRECT", 0) | os.O_DSYNC, True),
}


def append_records(mode: str, path: str, records: int, size: int) -> list[float]:
    """One writer: ``records`` durable appends in ``mode``; the seconds each took."""
    prepare, flags, whole_blocks = MODES[mode]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        prepare(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDWR | flags)
    block = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    record = b"r" * size
    samples: list[float] = []
    offset = 0
    try:
        for _ in range(records):
            started = time.perf_counter()
            if whole_blocks:
                os.pwrite(fd, block, offset // BLOCK * BLOCK)
            else:
                os.pwrite(fd, record, offset)
                if not flags & os.O_DSYNC:
                    os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
            offset += size
            time.sleep(0.0003)
    finally:
        os.close(fd)
        os.unlink(path)
    return samples


def _writer(mode: str, path: str, records: int, size: int, out: multiprocessing.Queue) -> None:
    out.put(append_records(mode, path, records, size))


def supported(mode: str, directory: Path) -> bool:
    """Whether ``directory``'s filesystem takes ``mode``'s open flags (tmpfs refuses
    ``O_DIRECT``)."""
    probe = directory / "probe"
    try:
        os.close(os.open(probe, os.O_RDWR | os.O_CREAT | MODES[mode][1], 0o644))
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True


def measure(mode: str, directory: Path, writers: int, records: int, size: int) -> list[float]:
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(
            target=_writer, args=(mode, str(directory / f"{i}.log"), records, size, out)
        )
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    samples = sorted(s for _ in procs for s in out.get(timeout=600))
    for proc in procs:
        proc.join()
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=None, help="a directory on the disk to test")
    ap.add_argument("--records", type=int, default=3000, help="records per writer")
    ap.add_argument("--record-bytes", type=int, default=250)
    ap.add_argument("--writers", default="1,3", help="comma-separated writer counts")
    args = ap.parse_args()
    counts = [int(n) for n in args.writers.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"# fsync_modes: {args.records} records of {args.record_bytes} B per writer, {tmp}")
        print("| mode | writers | p50 µs | p90 µs | p99 µs | mean µs |")
        print("|---|--:|--:|--:|--:|--:|")
        for writers in counts:
            for mode in MODES:
                if not supported(mode, Path(tmp)):
                    print(f"| {mode} | {writers} | not supported by this filesystem | | | |")
                    continue
                s = measure(mode, Path(tmp), writers, args.records, args.record_bytes)
                row = [percentile(s, q) * 1e6 for q in (50, 90, 99)] + [sum(s) / len(s) * 1e6]
                print(f"| {mode} | {writers} | " + " | ".join(f"{v:.0f}" for v in row) + " |")


if __name__ == "__main__":
    main()
