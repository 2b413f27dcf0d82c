"""Table, ratios, acceptance notes and the latency CDF of ``bench_vs_etcd.py``.

Figures shown per system are pooled over the rounds (latency percentiles over all samples of all
rounds, ops/s the mean of the rounds, CPU per operation the CPU total over the operation total).
A ratio is raftsync / etcd taken *within* each round, from two measurements made seconds apart,
then the median over the rounds: on a shared machine whose load drifts, that cancels more of
the drift than dividing the pooled figures would.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
from pathlib import Path
from typing import Any

from benchlib import percentile

PCTS = (50, 95, 99)


def _ok(res: dict[str, Any] | None) -> bool:
    return bool(res) and "error" not in res and res.get("ops", 0) > 0


def _runs(result: dict[str, Any], row: str, system: str) -> list[dict[str, Any]]:
    return [rnd[row][system] for rnd in result["rounds"] if _ok(rnd.get(row, {}).get(system))]


def _pooled_pct(runs: list[dict[str, Any]], p: int) -> float | None:
    lat = sorted(x for r in runs for x in r["lat_us"])
    return percentile(lat, p) / 1000 if lat else None


def _cpu_per_op(runs: list[dict[str, Any]], part: str) -> float | None:
    ops = sum(r["ops"] for r in runs)
    return 1e6 * sum(r[f"{part}_cpu_s"] for r in runs) / ops if ops else None


def _round_ratio(result: dict[str, Any], ours: str, theirs: str, field: str) -> float | None:
    """Median over rounds of raftsync's ``field`` (in row ``ours``) / etcd's (row ``theirs``)."""
    ratios = []
    for rnd in result["rounds"]:
        a, b = rnd.get(ours, {}).get("raftsync"), rnd.get(theirs, {}).get("etcd")
        if _ok(a) and _ok(b) and a.get(field) and b.get(field):
            ratios.append(a[field] / b[field])
    return statistics.median(ratios) if ratios else None


def _f(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def _total(client: float | None, server: float | None) -> float | None:
    return client + server if client is not None and server is not None else None


def _cpu_cell(client: float | None, server: float | None) -> str:
    return f"{_f(client, 0)} + {_f(server, 0)} = {_f(_total(client, server), 0)}"


def _join(values: list[str]) -> str:
    return " / ".join(values)


def _latency_row(result, metric: str, ours: str, theirs: str) -> dict[str, Any]:
    a, b = _runs(result, ours, "raftsync"), _runs(result, theirs, "etcd")
    ratios = [_round_ratio(result, ours, theirs, f"p{p}_ms") for p in PCTS]
    return {
        "metric": metric,
        "raftsync": _join([_f(_pooled_pct(a, p)) for p in PCTS]),
        "etcd": _join([_f(_pooled_pct(b, p)) for p in PCTS]),
        "ratio": _join([_f(r) for r in ratios]),
        "values": dict(zip(PCTS, ratios, strict=True)),
    }


def _failover(samples: list[float | None]) -> dict[str, Any]:
    ok = sorted(1000 * t for t in samples if t is not None)
    return {
        "median": statistics.median(ok) if ok else None,
        "p99": percentile(ok, 99) if ok else None,
        "max": ok[-1] if ok else None,
        "n": len(ok),
        "missed": len(samples) - len(ok),
    }


def _failover_row(
    samples: dict[str, list[float | None]], row_id: str, label: str
) -> dict[str, Any]:
    fo = {s: _failover(samples[s]) for s in ("raftsync", "etcd")}
    med_ratio = (
        fo["raftsync"]["median"] / fo["etcd"]["median"]
        if fo["raftsync"]["median"] and fo["etcd"]["median"]
        else None
    )
    return {
        "id": row_id,
        "metric": f"failover, {label}, to the next acked write, median / max ms"
        f" ({fo['raftsync']['n']} / {fo['etcd']['n']} trials)",
        "raftsync": f"{_f(fo['raftsync']['median'], 0)} / {_f(fo['raftsync']['max'], 0)}",
        "etcd": f"{_f(fo['etcd']['median'], 0)} / {_f(fo['etcd']['max'], 0)}",
        "ratio": _f(med_ratio),
        "values": {"median": med_ratio, "p99": fo["raftsync"]["p99"]},
        "missed": {s: fo[s]["missed"] for s in fo},
    }


def build_rows(result: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    w1 = (_runs(result, "write_1", "raftsync"), _runs(result, "write_1", "etcd"))
    rows.append(
        {
            "metric": "1 client, writes/s",
            "raftsync": _f(statistics.mean(r["ops_per_s"] for r in w1[0]), 0) if w1[0] else "-",
            "etcd": _f(statistics.mean(r["ops_per_s"] for r in w1[1]), 0) if w1[1] else "-",
            "ratio": _f(_round_ratio(result, "write_1", "write_1", "ops_per_s")),
        }
    )
    rows.append(
        _latency_row(result, "1 client, p50 / p95 / p99 ms", "write_1", "write_1") | {"id": "w1"}
    )
    w64 = (_runs(result, "write_64", "raftsync"), _runs(result, "write_64", "etcd"))
    ops_ratio = _round_ratio(result, "write_64", "write_64", "ops_per_s")
    p99_ratio = _round_ratio(result, "write_64", "write_64", "p99_ms")
    mean_ops = [statistics.mean(r["ops_per_s"] for r in w) if w else None for w in w64]
    rows.append(
        {
            "id": "w64",
            "metric": f"{args.inflight} in flight, writes/s; p99 ms",
            "raftsync": f"{_f(mean_ops[0], 0)}; {_f(_pooled_pct(w64[0], 99))}",
            "etcd": f"{_f(mean_ops[1], 0)}; {_f(_pooled_pct(w64[1], 99))}",
            "ratio": f"{_f(ops_ratio)}; {_f(p99_ratio)}",
            "values": {"ops": ops_ratio, "p99": p99_ratio},
        }
    )
    rows.append(
        _latency_row(result, "lock pair p50 / p95 / p99 ms (etcd: lease + txn)", "lock", "lock")
        | {"id": "lock"}
    )
    rows.append(
        _latency_row(result, "lock pair p50 / p95 / p99 ms (etcd: v3lock API)", "lock", "v3lock")
    )
    for key, label in (
        ("failover", "kill -9 (the process dies: its sockets close)"),
        ("failover_pause", "SIGSTOP (a hung leader, sockets open: election timers only)"),
    ):
        if any(result.get(key, {}).values()):
            rows.append(_failover_row(result[key], key, label))
    cap = result.get("capacity") or {}
    if cap:
        e, o = cap.get("etcd", {}), cap.get("raftsync", {})
        e_rate = e.get("writes_per_s")
        o_rate = o.get("ops_per_s") if _ok(o) else None
        rows.append(
            {
                "id": "capacity",
                "metric": "server-side capacity, writes/s (etcd: `etcdctl check perf"
                f" --load={args.perf_load}`, Go; raftsync: its Python client,"
                f" {args.capacity_inflight} in flight)",
                "raftsync": _f(o_rate, 0),
                "etcd": _f(e_rate, 0) if e_rate else str(e.get("error", "-"))[:160],
                "ratio": _f(o_rate / e_rate if o_rate and e_rate else None),
                "values": {"ratio": o_rate / e_rate if o_rate and e_rate else None},
            }
        )
    for row_id, label, etcd_row in (
        ("write_1", "1 client write", "write_1"),
        ("write_64", f"{args.inflight}-in-flight write", "write_64"),
        ("lock", "lock pair (etcd: lease + txn)", "lock"),
        ("lock", "lock pair (etcd: v3lock)", "v3lock"),
    ):
        a, b = _runs(result, row_id, "raftsync"), _runs(result, etcd_row, "etcd")
        ours = [_cpu_per_op(a, k) for k in ("client", "server")]
        theirs = [_cpu_per_op(b, k) for k in ("client", "server")]
        total = (_total(*ours), _total(*theirs))
        rows.append(
            {
                "id": f"cpu_{etcd_row}",
                "metric": f"CPU per {label}, client + servers = total, µs",
                "raftsync": _cpu_cell(*ours),
                "etcd": _cpu_cell(*theirs),
                "ratio": _f(total[0] / total[1] if total[0] and total[1] else None),
                "values": {"total": total[0]},
            }
        )
    if cap and _ok(cap.get("raftsync")) and "error" not in cap.get("etcd", {"error": 1}):
        o, e = (cap[s] for s in ("raftsync", "etcd"))
        o_cpu = [o[f"{k}_cpu_us_per_op"] for k in ("client", "server")]
        e_cpu = [e[f"{k}_cpu_us_per_op"] for k in ("client", "server")]
        rows.append(
            {
                "metric": "CPU per write in the capacity row, client + servers = total, µs"
                " (etcd's client: etcdctl, Go)",
                "raftsync": _cpu_cell(*o_cpu),
                "etcd": _cpu_cell(*e_cpu),
                "ratio": _f(_total(*o_cpu) / _total(*e_cpu) if _total(*e_cpu) else None),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| metric | raftsync | etcd | ratio raftsync/etcd |", "|---|--:|--:|--:|"]
    out += [f"| {r['metric']} | {r['raftsync']} | {r['etcd']} | {r['ratio']} |" for r in rows]
    return out


def acceptance(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 14's acceptance bounds, judged on this run's ratios (a note, never an exit code)."""
    v = {r["id"]: r.get("values", {}) for r in rows if "id" in r}

    def judge(label: str, x: float | None, bound: float, at_most: bool) -> str:
        if x is None:
            return f"- {label}: not measured"
        met = x <= bound if at_most else x >= bound
        digits = 2  # more where the rounded figure would print as the bound ("0.70 (not met)")
        while digits < 5 and x != bound and round(x, digits) == bound:
            digits += 1
        return f"- {label}: {x:.{digits}f} ({'met' if met else 'not met'})"

    return [
        "Issue 14 acceptance bounds, this run:",
        judge("1 client p50 <= 0.7x etcd", v.get("w1", {}).get(50), 0.7, True),
        judge("1 client p99 <= 0.7x etcd", v.get("w1", {}).get(99), 0.7, True),
        judge(
            "64 in flight ops/s >= 2x etcd (Python clients)", v.get("w64", {}).get("ops"), 2, False
        ),
        judge("capacity >= 1x etcd's Go load tool", v.get("capacity", {}).get("ratio"), 1, False),
        judge("lock pair p50 <= 0.7x etcd lease + txn", v.get("lock", {}).get(50), 0.7, True),
        judge("lock pair p95 <= 0.7x etcd lease + txn", v.get("lock", {}).get(95), 0.7, True),
        judge("failover median <= 1.0x etcd", v.get("failover", {}).get("median"), 1.0, True),
        judge("failover p99 <= 500 ms", v.get("failover", {}).get("p99"), 500, True),
        judge(
            "(not a bound) SIGSTOP failover median vs etcd, timers only",
            v.get("failover_pause", {}).get("median"),
            1.0,
            True,
        ),
        judge(
            "(not a bound) SIGSTOP failover p99 <= 500 ms",
            v.get("failover_pause", {}).get("p99"),
            500,
            True,
        ),
        judge(
            "total CPU per write (64 in flight) <= 110 µs",
            v.get("cpu_write_64", {}).get("total"),
            110,
            True,
        ),
    ]


def _minor_label(x: float, _pos: int) -> str:
    """Label the 2x, 3x and 5x minor ticks of a log axis only (all of them would overlap)."""
    return f"{x:g}" if f"{x:e}"[0] in "235" else ""


def plot_cdf(result: dict[str, Any], path: Path) -> bool:
    """One PNG: the latency CDF of each workload, both systems on the same axes (log x), and
    the failover trials. False (and no file) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return False
    panels = [
        ("1 client, sequential writes", [("raftsync", "write_1"), ("etcd", "write_1")]),
        ("writes, many in flight", [("raftsync", "write_64"), ("etcd", "write_64")]),
        (
            "lock acquire + release",
            [("raftsync", "lock"), ("etcd", "lock"), ("etcd", "v3lock")],
        ),
    ]
    colours = {"raftsync": "tab:blue", "etcd": "tab:orange"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for system, row in series:
            lat = sorted(x / 1000 for r in _runs(result, row, system) for x in r["lat_us"])
            if not lat:
                continue
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            label = system if row != "v3lock" else "etcd v3lock"
            if system == "etcd" and row == "lock":
                label = "etcd lease + txn"
            style = "--" if row == "v3lock" else "-"
            ax.plot(lat, ys, style, color=colours[system], label=f"{label} (n={len(lat):,})")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_title(title)
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("fraction of operations")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    ax = axes.flat[3]
    for key, style, how in (("failover", "-", "kill -9"), ("failover_pause", "--", "SIGSTOP")):
        for system in ("raftsync", "etcd"):
            ok = sorted(1000 * t for t in result.get(key, {}).get(system, []) if t is not None)
            if ok:
                xs = [ok[0], *ok]  # the step starts at 0 at the fastest trial
                ys = [0.0, *((i + 1) / len(ok) for i in range(len(ok)))]
                label = f"{system}, {how} (n={len(ok)})"
                ax.step(xs, ys, style, where="post", color=colours[system], marker="o", label=label)
    ax.set_title("failover: leader killed (-9) or hung (SIGSTOP) to the next acked write")
    ax.set_xlabel("gap, ms")
    ax.set_ylabel("fraction of trials")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def per_round(result: dict[str, Any]) -> list[str]:
    """Each round's ratios, so the spread behind a median is visible in the report."""
    picks = [
        ("1 client writes/s", "write_1", "write_1", "ops_per_s"),
        ("1 client p50", "write_1", "write_1", "p50_ms"),
        ("1 client p99", "write_1", "write_1", "p99_ms"),
        ("in-flight writes/s", "write_64", "write_64", "ops_per_s"),
        ("in-flight p99", "write_64", "write_64", "p99_ms"),
        ("lock p50 (lease + txn)", "lock", "lock", "p50_ms"),
        ("lock p95 (lease + txn)", "lock", "lock", "p95_ms"),
        ("lock p50 (v3lock)", "lock", "v3lock", "p50_ms"),
    ]
    lines = [
        "| ratio raftsync/etcd | "
        + " | ".join(f"round {i + 1}" for i in range(len(result["rounds"])))
        + " |",
        "|---|" + "--:|" * len(result["rounds"]),
    ]
    for label, ours, theirs, field in picks:
        cells = []
        for rnd in result["rounds"]:
            a, b = rnd.get(ours, {}).get("raftsync"), rnd.get(theirs, {}).get("etcd")
            ok = _ok(a) and _ok(b) and a.get(field) and b.get(field)
            cells.append(_f(a[field] / b[field]) if ok else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def strip_samples(result: dict[str, Any]) -> dict[str, Any]:
    """The result without per-operation samples (the JSON next to the table stays small)."""

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k != "lat_us"}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(result)


def _missed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["id"]: r.get("missed") for r in rows if r.get("id", "").startswith("failover")}


def render(args, info, result, rows, argv: list[str], plotted: bool) -> str:
    s = result.get("settings", {})
    lines = [
        "# raftsync vs etcd, side by side",
        "",
        f"- command: `{shlex.join(argv)}`",
        f"- date: {info['date']}; commit: {info['commit']}; duration: {info.get('duration')}",
        f"- nproc: {info['nproc']}; CPU: {info['cpu']}; load average at start:"
        f" {info['loadavg']}, at end: {info.get('loadavg_end', '?')}",
        f"- Python: {info['python']}; data directory filesystem: {info['data_fs']}",
        f"- {result.get('etcd_version', 'etcd version unknown')};"
        " client: aetcd 1.0.0 (gRPC, asyncio)",
        f"- rounds: {args.rounds} (order flipped each round), {args.warmup}s warm-up +"
        f" {args.seconds}s measured per workload; failover: {args.trials} kill -9 and"
        f" {getattr(args, 'pause_trials', 0)} SIGSTOP trials per system, probe every"
        f" {args.probe_interval_ms} ms",
        "",
        *table(rows),
        "",
        "Ratios: raftsync / etcd within each round, median over rounds (failover and capacity:"
        " of the pooled figures). Latencies in ms, nearest-rank percentiles over all rounds'"
        " samples. CPU from /proc/<pid>/stat (utime + stime) inside the measured window only:"
        " client = the load driver process, servers = the three server processes.",
        "",
        *acceptance(rows),
        "",
        "Per round (the order of the two systems flips every round):",
        "",
        *per_round(result),
        "",
        f"CDF: {'vs_etcd_cdf.png' if plotted else 'not drawn (matplotlib missing)'}",
        "",
        "## What ran",
        "",
        f"- raftsync: 3 `manage.py run_raft_node` processes, settings {s.get('raftsync')};"
        " writes are `AsyncCoordinator.run(ops.cache_set(key, 100-byte value))`; lock pairs"
        " `async with coord.lock(name)` on the coordinator's session.",
        f"- etcd: 3 members, `etcd {' '.join(s.get('etcd', []))}` (e1 shown); writes are"
        " `aetcd.Client.put` to the leader's endpoint; lock pairs are a txn creating the key"
        " under a lease granted before the window, then a txn deleting it (lease + txn), or"
        " `v3lockpb.Lock/Lock` + `Unlock` with that lease (v3lock).",
        f"- failover errors: {result.get('failover_errors') or 'none'}; missed trials:"
        f" {_missed(rows)}",
        "- kill -9: the leader's process dies and the OS closes its sockets; raftsync's"
        " followers see the close and elect after a short random wait"
        " (`Raft.suspect_leader`), etcd's wait for the election timeout. SIGSTOP: the leader"
        " hangs with its sockets open (as a dead machine or a partition looks), so both wait"
        " for their election timers.",
        f"- capacity: {strip_samples(result.get('capacity') or {'skipped': True})}",
        "",
    ]
    return "\n".join(lines)
