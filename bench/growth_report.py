"""The report of ``bench_growth.py``: the growth table, the value-size table, and the checks the
issue asks for (memory per key flat, snapshot time linear), each printed with its ratio.

Kept apart from the orchestrator so that the checks, which are pure arithmetic on the recorded
figures, can be read (and tested) without starting a cluster.

A figure per key is compared across the key levels by two ratios: the *spread* (largest /
smallest) and the *rise* (the largest ratio of a bigger level's figure to a smaller level's).
Memory per key is "flat" when the spread is at most ``FLAT_RATIO``; a spread above it is
reported with its direction, because falling (a fixed cost spread over more keys) and rising
(each key costing more as keys are added) mean different things. Snapshot time is "linear"
when the per-key time does not rise by more than ``FLAT_RATIO``: fixed costs (an fsync, the
watch history) make small snapshots dearer per key, and that is not superlinear.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from typing import Any

FLAT_RATIO = 1.25
MiB = 1 << 20
MARK_SNAPSHOT = "†"  # a node took a log snapshot inside the measured window
MARK_TERM = "‡"  # the term changed inside the window (an election)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return float("nan") if not n else (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)


def _cell(res: dict[str, Any] | None) -> str:
    """``ops/s; p99 ms`` of one window, with its marks."""
    if not res:
        return "-"
    if "error" in res:
        return "error"
    marks = (MARK_SNAPSHOT if res.get("snapshot_in_window") else "") + (
        MARK_TERM if res.get("term_changed") else ""
    )
    p99 = f"{res['p99_ms']:.1f}" if res["ops"] else "-"
    return f"{res['ops_per_s']:,.0f}; {p99}{marks}"


def key_levels(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows that differ from the start by keys only (not the queued-messages row)."""
    return [row for row in result["rows"] if row["keys"] and not row.get("queued")]


def memory_per_key(result: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """(keys, bytes per key) per level, by measure: ``restarted`` (a follower's RSS after a
    restart from its snapshot), ``state`` (the state alone, restored in a fresh process),
    ``live`` (median of the running nodes' RSS); each the growth over the start / keys."""
    start = result.get("start")
    out: dict[str, list[tuple[int, float]]] = {"restarted": [], "state": [], "live": []}
    if not start:
        return out
    for row in key_levels(result):
        keys = row["keys"]
        live = _median([mb - start["rss_mb"][n] for n, mb in row["rss_mb"].items()])
        out["live"].append((keys, live * MiB / keys))
        if "restarted" in row and "restarted" in start:  # not with --no-restart
            restarted = row["restarted"]["rss_mb"] - start["restarted"]["rss_mb"]
            state_kb = row["restarted"]["state"]["state_kb"]
            state_kb -= start["restarted"]["state"]["state_kb"]
            out["restarted"].append((keys, restarted * MiB / keys))
            out["state"].append((keys, state_kb * 1024 / keys))
    return out


def snapshot_per_key(result: dict[str, Any], field: str) -> list[tuple[int, float]]:
    """(keys, µs per key) of the snapshot at each level: the median over the nodes of their
    ``snapshot_taken`` ``field`` (``ms``, ``serialize_ms`` or ``serialize_cpu_ms``)."""
    out = []
    for row in key_levels(result):
        values = [n[field] for n in row["snapshot"]["nodes"].values() if field in n]
        if values:
            out.append((row["keys"], 1000 * _median(values) / row["keys"]))
    return out


def spread_and_rise(levels: list[tuple[int, float]]) -> tuple[float, float]:
    values = [v for _, v in levels]
    if min(values) <= 0:
        return math.inf, math.inf
    rise = max(values[j] / values[i] for j in range(len(values)) for i in range(j))
    return max(values) / min(values), rise


def _listing(levels: list[tuple[int, float]], fmt: str) -> str:
    return ", ".join(f"{k:,}: {format(v, fmt)}" for k, v in levels)


def memory_check(result: dict[str, Any]) -> tuple[bool | None, str]:
    """Flat when the restarted node's memory per key has a spread of at most ``FLAT_RATIO``;
    the state alone and the live nodes' figures are printed next to it."""
    per = memory_per_key(result)
    measure = "restarted" if per["restarted"] else "live"
    if len(per[measure]) < 2:
        return None, "memory per key: n/a (fewer than two key levels measured)"
    spread, rise = spread_and_rise(per[measure])
    ok = spread <= FLAT_RATIO
    direction = "rising" if rise > FLAT_RATIO else "falling"
    verdict = "flat" if ok else f"not flat, {direction}"
    shown = "restarted node" if measure == "restarted" else "running nodes, median"
    text = (
        f"memory per key: {verdict} ({shown}, B/key {_listing(per[measure], ',.0f')};"
        f" largest / smallest {spread:.2f}, flat means <= {FLAT_RATIO}; rise {rise:.2f})."
    )
    if per["state"]:
        state_spread, _ = spread_and_rise(per["state"])
        state_verdict = "flat" if state_spread <= FLAT_RATIO else "not flat"
        text += (
            f" State alone: {state_verdict} ({_listing(per['state'], ',.0f')};"
            f" {state_spread:.2f}). Running nodes, median: {_listing(per['live'], ',.0f')}"
        )
    return ok, text


def snapshot_check(result: dict[str, Any], field: str, what: str) -> tuple[bool | None, str]:
    """Linear when the per-key time of ``field`` rises by at most ``FLAT_RATIO`` from any
    smaller level; the growth exponent log(t2/t1) / log(n2/n1) between levels is printed."""
    levels = snapshot_per_key(result, field)
    if len(levels) < 2:
        return None, f"{what}: n/a (fewer than two key levels measured)"
    _, rise = spread_and_rise(levels)
    exponents = [
        f"{a[0]:,}->{b[0]:,} {math.log(b[1] * b[0] / (a[1] * a[0])) / math.log(b[0] / a[0]):.2f}"
        for a, b in itertools.pairwise(levels)
        if a[1] > 0 and b[1] > 0
    ]
    ok = rise <= FLAT_RATIO
    return ok, (
        f"{what}: {'linear' if ok else 'superlinear'} (µs per key {_listing(levels, ',.2f')};"
        f" rise {rise:.2f}, linear means <= {FLAT_RATIO}; exponent {'; '.join(exponents)})"
    )


def checks(result: dict[str, Any]) -> list[tuple[bool | None, str]]:
    return [
        memory_check(result),
        snapshot_check(result, "serialize_cpu_ms", "snapshot serialisation, CPU time"),
        snapshot_check(result, "ms", "snapshot, total wall time"),
    ]


def _snap_cell(snap: dict[str, Any]) -> str:
    """Median over the nodes: total ms (serialisation ms, its CPU ms); MB."""
    nodes = list(snap["nodes"].values())

    def med(field: str) -> str:
        values = [n[field] for n in nodes if field in n]
        return f"{_median(values):,.0f}" if values else "?"

    size = _median([n["bytes"] for n in nodes]) / 1e6
    return f"{med('ms')} ({med('serialize_ms')}, {med('serialize_cpu_ms')}); {size:,.1f}"


def growth_table(result: dict[str, Any]) -> list[str]:
    start = result.get("start")
    if not start:
        return []
    nodes = sorted(start["rss_mb"])
    head = (
        "| state | cache write ops/s; p99 ms | cache read ops/s; p99 ms"
        " | lock pair /s; p99 ms | queue put+get+ack /s; p99 ms"
        f" | RSS {' / '.join(nodes)} MB | RSS restarted MB"
        " | memory per key B: restarted; state alone"
        " | snapshot ms (serialise, CPU); MB |"
    )
    lines = [head, "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    per = memory_per_key(result)
    per_key = {k: (v, dict(per["state"])[k]) for k, v in per["restarted"]}  # (restarted, state)
    if not per_key:  # --no-restart: the running nodes' median
        per_key = {k: (v, math.nan) for k, v in per["live"]}
    for row in [start, *result["rows"]]:
        res = row.get("results", {})
        rss = " / ".join(f"{row['rss_mb'].get(n, float('nan')):.0f}" for n in nodes)
        mem = per_key.get(row["keys"]) if not row.get("queued") else None
        mem_cell = f"{mem[0]:,.0f}; {mem[1]:,.0f}".replace("nan", "-") if mem else "-"
        restarted = f"{row['restarted']['rss_mb']:.0f}" if "restarted" in row else "-"
        name = row["name"]
        if row is start:
            name = f"start ({result.get('warm_keys', 0):,} keys, full watch history)"
        lines.append(
            f"| {name} | {_cell(res.get('write'))} | {_cell(res.get('read'))}"
            f" | {_cell(res.get('lock'))} | {_cell(res.get('queue'))} | {rss}"
            f" | {restarted} | {mem_cell} | {_snap_cell(row['snapshot'])} |"
        )
    return lines


def value_table(result: dict[str, Any]) -> list[str]:
    if not result["values"]:
        return []
    lines = [
        "| value size | cache write ops/s; p99 ms | write MB/s | cache read ops/s; p99 ms |",
        "|--:|--:|--:|--:|",
    ]
    for v in result["values"]:
        w = v["write"]
        mbs = f"{w['ops_per_s'] * v['size'] / 1e6:,.1f}" if "error" not in w else "-"
        lines.append(f"| {v['size']:,} B | {_cell(w)} | {mbs} | {_cell(v['read'])} |")
    return lines


def failed(result: dict[str, Any]) -> bool:
    """A part could not run (an error recorded anywhere), not a figure judged."""
    if "error" in result:
        return True
    windows = [res for row in result["rows"] for res in row["results"].values()]
    windows += [v[k] for v in result["values"] for k in ("write", "read")]
    return any("error" in res for res in windows)


def _elections(result: dict[str, Any]) -> str:
    return ", ".join(f"{phase} {n}" for phase, n in result.get("elections", [])) or "none"


def render(
    args: argparse.Namespace, info: dict[str, str], result: dict[str, Any], cmdline: str
) -> tuple[str, list[str]]:
    """The Markdown report, and the lines printed on stdout (tables and checks)."""
    table, values = growth_table(result), value_table(result)
    verdicts = [f"- {text}" for _, text in checks(result)]
    if "error" in result:  # a part could not run: the figures above stop where it did
        verdicts.append(f"- ERROR: {result['error']}")
    printed = [*table, "", *values, "", *verdicts]
    details = {
        k: result.get(k)
        for k in ("settings", "snapshot_every", "warmup", "start", "final_stats", "terms")
    }
    details["rows"] = [{k: v for k, v in row.items() if k != "results"} for row in result["rows"]]
    details["windows"] = {row["name"]: row["results"] for row in result["rows"]}
    details["values"] = result["values"]
    report = [
        "# How cost grows with the state (bench_growth.py)",
        "",
        f"- command: `{cmdline}`",
        f"- date: {info['date']}; duration: {info.get('duration', '?')}",
        f"- commit: {info['commit']}",
        f"- nproc: {info['nproc']}; CPU: {info['cpu']}; load average at start:"
        f" {info['loadavg']}, at end: {info.get('loadavg_end', '?')}",
        f"- Python: {info['python']}; data directory filesystem: {info['data_fs']}",
        "- cluster: 3 nodes, coordination state machine, fsync on, default timing,"
        f" SNAPSHOT_EVERY {result.get('snapshot_every')}; terms at the end"
        f" {result.get('terms')}; elections by phase (outside the measured windows, which"
        f" carry their own mark): {_elections(result)}",
        f"- windows: {args.warmup} s warm-up + {args.seconds} s measured; cache writes and reads"
        f" {args.inflight} in flight (16-byte keys, 100-byte values, random keys of the level);"
        " lock pairs 1 at a time; queue cycles 16 in flight",
        "",
        *table,
        "",
        f"{MARK_SNAPSHOT}: a node took a log snapshot inside the window;"
        f" {MARK_TERM}: an election happened inside it. RSS: each running node's VmRSS after"
        " the row's snapshot; *restarted*: a follower's after a restart from that snapshot."
        " Memory per key: growth over the start / keys loaded, of the restarted follower's RSS"
        " and of the state alone restored in a fresh process. Snapshot: median over the nodes of"
        " their own `snapshot_taken` log line: total ms (serialisation to the fsynced file's log"
        " mark), the serialisation's wall and CPU ms (it holds the event loop), the image's MB."
        " See bench/README.md.",
        "",
        *(
            [f"Value size, on {args.value_keys:,} keys per size, in the final state:", "", *values]
            if values
            else []
        ),
        "",
        "## Checks",
        "",
        *verdicts,
        "",
        "## Details",
        "",
        "```json",
        json.dumps(details, indent=1, default=str),
        "```",
        "",
    ]
    return "\n".join(report), printed
