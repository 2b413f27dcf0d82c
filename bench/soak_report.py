"""The soak's verdict: the per-minute tables of ``bench/results/soak-latest.md`` and the bounds it
checks (``bench/soak.py`` collects the samples, one a second).

Why the memory bound is defined this way. Two things move a node's RSS that are not leaks:

- **Retained state fills up to its caps.** The watch history keeps the last 50,000 changes
  (23-28 MB of Python objects at 470-570 bytes an event, 5-10 MB accounted), the cache its
  2,000 keys, Celery results their 60 s. Under the soak's load the history alone took more than
  ten minutes to fill, so "RSS at the end against RSS after a fixed warm-up" measured the fill
  (the run before this one failed a 40 MB bound that way). So the soak now fills the state to
  its caps before the clock starts (``soak.fill``) and then lets ``--warm-up`` minutes pass
  for what only time settles (result expiry, the first log compaction).
- **The allocator keeps freed snapshot images.** Each node snapshots every 5,000 entries (every
  5-10 s here) into one 8 MB ``bytes``. glibc serves the first one with ``mmap``, then raises its
  mmap threshold to that size, so later images come from the heap, whose freed memory goes back
  to the system only when the top of the heap is trimmed: RSS climbs in 8-24 MB steps at
  snapshots and falls back by about 40 MB every 4-6 snapshots (measured with RSS sampled every
  second: 123 -> 163 -> 123 MB on all three nodes, with no fault). With
  ``MALLOC_MMAP_THRESHOLD_=1048576`` the same run stays within 98-108 MB.

So the bounds compare **floors**: a process's lowest RSS over a window of ``WINDOW`` minutes,
the memory it held even right after the allocator gave back what it could (not counting a
process's first seconds, while a restarted node loads: ``soak.Sampler``). The first window
starts after the warm-up, the second is the run's last; in a run too short for both, the
memory bounds are not measured (said in the report) and only the others apply.

- **leak**: the processes that live through the whole run, the witness node (never killed; it
  is paused, loses and gains leadership, sees its peers die) and the Celery worker, may raise
  their floor by less than ``LEAK_BOUND_MB``. What can still move a floor once the state is at
  its caps: the history's mix of events (a cache event costs about 100 bytes more than a lock
  event: at most 5 MB over 50,000) and the number of live results (a few thousand of about
  1 KB). A leak of 2 MB a minute breaks it in the 10-minute run (the windows' starts are six
  minutes apart).
- **restarts**: a node killed and restarted rebuilds the same state from a snapshot and the
  log, so its floor in the last window may be at most ``LEAK_BOUND_MB`` above the highest
  node floor of the first window.
- **descriptors**: a node's count at the end of the last minute at most ``FD_BOUND`` above the
  highest node count at the warm-up's end (clients gather at the leader, so a node's count
  follows its role), the worker's at most ``FD_BOUND`` above its own; **disk** (log segments
  and snapshots) under ``DISK_BOUND_MB``; failed operations at most ``ERROR_BUDGET`` of all
  (every fault makes some calls fail or time out); no Celery task returning a wrong result.
"""

from __future__ import annotations

from typing import Any

from benchlib import percentile

LEAK_BOUND_MB = 10.0
WINDOW = 2  # minutes over which a floor is taken
FD_BOUND = 10
DISK_BOUND_MB = 200.0
ERROR_BUDGET = 0.02
KINDS = ("cache", "lock", "queue", "celery")
WORKER = "worker"

# minute -> process (n1.., "worker") -> {"rss_mb" (last), "floor_mb" (absent if the process
# was never settled that minute), "peak_mb", "fds", "disk_mb" (nodes), "pid"}
Procs = dict[int, dict[str, dict[str, float]]]
# minute -> {"history_events", "history_mb", "cache_keys", "results", "image_mb"}
State = dict[int, dict[str, float]]
Check = tuple[str, bool]


def render(
    header: list[str],
    procs: Procs,
    state: State,
    samples: dict[tuple[int, str], list[float]],
    errors: dict[tuple[int, str], int],
    faults: list[str],
    checks: list[Check],
    notes: list[str],
) -> str:
    """The report: processes per minute (``*``: a node restarted during that minute), latency
    per minute, retained state per minute, the faults and the bounds."""
    lines = [*header, "", "Processes per minute (RSS from 1 s samples; fds at the minute's end):"]
    lines += ["", "| minute | process | RSS MB lowest | highest | fds | disk MB |"]
    lines.append("|---:|---|---:|---:|---:|---:|")
    pids: dict[str, float] = {}
    for minute in sorted(procs):
        for name, s in sorted(procs[minute].items()):
            mark = " *" if name in pids and pids[name] != s["pid"] else ""
            pids[name] = s["pid"]
            disk = "" if name == WORKER else f"{s['disk_mb']:.1f}"
            floor = f"{s['floor_mb']:.1f}" if "floor_mb" in s else "-"
            lines.append(
                f"| {minute} | {name}{mark} | {floor} | {s['peak_mb']:.1f} | "
                f"{s['fds']:.0f} | {disk} |"
            )
    lines += ["", "Latency per minute (p50 / p99 ms, operations, errors):", ""]
    lines += ["| minute | " + " | ".join(KINDS) + " |", "|---:|" + "---:|" * len(KINDS)]
    for minute in sorted(procs):  # not the few calls that end after the last minute
        cells = []
        for kind in KINDS:
            xs = sorted(samples.get((minute, kind), []))
            err = errors.get((minute, kind), 0)
            cells.append(
                f"{percentile(xs, 50):.1f} / {percentile(xs, 99):.1f} ({len(xs)}, {err} err)"
            )
        lines.append(f"| {minute} | " + " | ".join(cells) + " |")
    lines += ["", "Retained state per minute (what the caps bound; image: largest snapshot):", ""]
    lines += [
        "| minute | watch history events | history MB accounted | cache keys | results "
        "| snapshot image MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for minute in sorted(state):
        s = state[minute]
        lines.append(
            f"| {minute} | {s['history_events']:.0f} | {s['history_mb']:.1f} | "
            f"{s['cache_keys']:.0f} | {s['results']:.0f} | {s['image_mb']:.1f} |"
        )
    lines += ["", "Faults:", "", *[f"- {f}" for f in faults], "", "Bounds:", ""]
    lines += [f"- {'ok  ' if ok else 'FAIL'} {what}" for what, ok in checks]
    lines += [f"- note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


def bounds(procs: Procs, witness: str, warm_up: int) -> tuple[list[Check], list[str]]:
    """The checks of the module docstring, and notes on what could not be measured."""
    checks: list[Check] = []
    order = sorted(procs)
    first, last_minute = range(warm_up, warm_up + WINDOW), order[-1]
    last = range(last_minute - WINDOW + 1, last_minute + 1)
    for name in (witness, WORKER):
        pids = {procs[m][name]["pid"] for m in order if name in procs[m]}
        checks.append((f"{name} ran throughout (one process: {sorted(pids)})", len(pids) == 1))
    checks += _descriptors_and_disk(procs, warm_up - 1)
    if last.start < first.stop:
        note = f"memory not measured: a run of {warm_up + 2 * WINDOW} minutes at least is needed"
        return checks, [f"{note} (a {WINDOW}-minute window after the warm-up, and the last)"]

    def floor(name: str, window: range) -> float | None:
        values = [procs[m].get(name, {}).get("floor_mb") for m in window if m in procs]
        settled = [v for v in values if v is not None]
        return min(settled) if settled else None

    span = f"minutes {first.start}-{first.stop - 1} -> {last.start}-{last.stop - 1}"
    for name in (witness, WORKER):
        before, after = floor(name, first), floor(name, last)
        if before is None or after is None:
            checks.append((f"leak: {name} sampled in both windows", False))
            continue
        trend = ", ".join(
            f"{procs[m][name].get('floor_mb', float('nan')):.1f}"
            for m in order
            if m >= warm_up and name in procs[m]
        )
        checks.append(
            (
                f"leak: {name} RSS floor {before:.1f} -> {after:.1f} MB ({span}): "
                f"{after - before:+.1f} < {LEAK_BOUND_MB:.0f} (floor per minute: {trend})",
                after - before < LEAK_BOUND_MB,
            )
        )
    before_nodes = {n for m in first if m in procs for n in procs[m] if n != WORKER}
    steady = max(f for n in before_nodes if (f := floor(n, first)) is not None)
    for node in sorted(n for n in procs[last_minute] if n != WORKER):
        after = floor(node, last)
        if after is None:
            checks.append((f"{node} settled in minutes {last.start}-{last.stop - 1}", False))
            continue
        checks.append(
            (
                f"{node} RSS floor {after:.1f} MB in minutes {last.start}-{last.stop - 1} <= "
                f"{steady:.1f} (highest floor of minutes {first.start}-{first.stop - 1}) "
                f"+ {LEAK_BOUND_MB:.0f}",
                after <= steady + LEAK_BOUND_MB,
            )
        )
    return checks, []


def _descriptors_and_disk(procs: Procs, ref_minute: int) -> list[Check]:
    ref, last = procs.get(ref_minute, {}), procs[max(procs)]
    checks: list[Check] = []
    if WORKER in ref and WORKER in last:
        fds = last[WORKER]["fds"] - ref[WORKER]["fds"]
        checks.append((f"{WORKER} descriptors {fds:+.0f} <= {FD_BOUND}", fds <= FD_BOUND))
    nodes = sorted(n for n in ref if n != WORKER)
    if not nodes:
        return [*checks, (f"nodes sampled at the end of minute {ref_minute}", False)]
    steady_fds = max(ref[n]["fds"] for n in nodes)  # clients gather at the leader: by role
    for node in nodes:
        if node not in last:
            checks.append((f"{node} running in the last minute", False))
            continue
        fds, disk = last[node]["fds"], last[node]["disk_mb"]
        checks.append(
            (
                f"{node} descriptors {fds:.0f} <= {steady_fds:.0f} (highest at the warm-up's "
                f"end) + {FD_BOUND}",
                fds <= steady_fds + FD_BOUND,
            )
        )
        checks.append((f"{node} disk {disk:.1f} MB < {DISK_BOUND_MB:.0f}", disk < DISK_BOUND_MB))
    return checks


def budget(
    samples: dict[tuple[int, str], list[Any]], errors: dict[tuple[int, str], int], wrong: int
) -> list[Check]:
    """Failed operations within ``ERROR_BUDGET``; no Celery task with a wrong result; every
    kind of operation did work."""
    done = sum(len(v) for v in samples.values())
    failed = sum(errors.values())
    idle = [k for k in KINDS if not any(samples.get((m, k)) for m, _ in samples)]
    return [
        (
            f"failed operations {failed} of {done + failed} <= {ERROR_BUDGET:.0%}",
            failed <= ERROR_BUDGET * (done + failed),
        ),
        (f"Celery tasks with a wrong result: {wrong}", wrong == 0),
        (f"every kind of operation completed some (idle: {idle or 'none'})", not idle),
    ]
