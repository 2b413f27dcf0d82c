"""CPU per write, A/B: this tree against another checkout (a base commit), side by side.

    git worktree add /tmp/base <commit>
    .venv/bin/python bench/cpu_ab.py --base /tmp/base [--rounds 4] [--seconds 5] [--inflight 64]

An optimisation of the CPU per operation is a few percent per change, far below this shared
machine's drift from one minute to the next, so one tree measured alone says little. This runs
both trees' clusters in alternating rounds (A B, B A, ...) on the same workload as
``bench_vs_etcd.py``'s write rows (cache.set of 100 B values through the coordination state
machine, 3 nodes, fsync on; the driver is ``etcd_load.py``), and reports per tree the median
ops/s, p50/p99 and the client + server CPU per write read from /proc, and the ratios B/A per
round with their median. Each tree runs its own node code (its ``manage.py``) and its own client
code (``PYTHONPATH``); the measuring driver is
``etcd_load.py`` of each tree (the same file unless a change touches it).

Nothing asserts on timings; the output is a table on stdout (and ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Controlled

from raft_node.testing.launcher import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
MACHINE = "coordination.primitives.machine.CoordinationMachine"
FIELDS = ("ops_per_s", "p50_ms", "p99_ms", "client_cpu_us_per_op", "server_cpu_us_per_op")


def measure_tree(tree: Path, base: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Start ``tree``'s 3-node cluster, run each in-flight level once, stop it."""
    cluster = LocalCluster(
        base / "nodes", tree / "manage.py", settings={"STATE_MACHINE": MACHINE, "REDIS_URL": ""}
    )
    (base / "nodes").mkdir(parents=True)
    driver = None
    try:
        cluster.start()
        cluster.wait_for_leader(timeout=60)
        addresses = [f"{h}:{p}" for h, p in cluster.addresses.values()]
        env = {**os.environ, "RAFTSYNC_BENCH_SECRET": cluster.secret, "PYTHONPATH": str(tree)}
        argv = [sys.executable, str(tree / "bench" / "etcd_load.py"), "--system", "raftsync"]
        argv += ["--params", json.dumps({"addresses": addresses})]
        driver = Controlled(argv, str(base / "driver.log"), env=env)
        driver.receive(timeout=60)
        out = {}
        for conc in args.inflight:
            cmd = {"cmd": "run", "workload": "write", "concurrency": conc}
            cmd.update(warmup=args.warmup, seconds=args.seconds)
            cmd["pids"] = [p.pid for p in cluster.procs.values()]
            out[str(conc)] = driver.request(cmd, 60 + 3 * (args.warmup + args.seconds))
        return out
    finally:
        if driver is not None:
            driver.close(grace=5)
        cluster.stop()


def total_cpu(res: dict[str, Any]) -> float | None:
    parts = [res.get("client_cpu_us_per_op"), res.get("server_cpu_us_per_op")]
    return None if None in parts else sum(parts)  # type: ignore[arg-type]


def summarize(rounds: list[dict[str, Any]], trees: dict[str, Path], levels: list[int]) -> str:
    lines = [
        "| in flight | tree | ops/s | p50 ms | p99 ms | client µs | server µs | total µs/write |",
        "|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    ratios: dict[str, list[float]] = {}
    for conc in map(str, levels):
        for name in trees:
            runs = [r[name][conc] for r in rounds if "error" not in r[name][conc]]
            if not runs:
                lines.append(f"| {conc} | {name} | error | | | | | |")
                continue
            med = {f: statistics.median(r[f] for r in runs) for f in FIELDS}
            tot = statistics.median(t for r in runs if (t := total_cpu(r)) is not None)
            lines.append(
                f"| {conc} | {name} | {med['ops_per_s']:.0f} | {med['p50_ms']:.2f}"
                f" | {med['p99_ms']:.2f} | {med['client_cpu_us_per_op']:.0f}"
                f" | {med['server_cpu_us_per_op']:.0f} | {tot:.0f} |"
            )
        for r in rounds:
            a, b = r["base"][conc], r["this"][conc]
            if "error" in a or "error" in b:
                continue
            ta, tb = total_cpu(a), total_cpu(b)
            if ta and tb:
                ratios.setdefault(f"cpu/write @{conc}", []).append(tb / ta)
            ratios.setdefault(f"ops/s @{conc}", []).append(b["ops_per_s"] / a["ops_per_s"])
    lines.append("")
    for label, values in ratios.items():
        shown = ", ".join(f"{v:.3f}" for v in values)
        lines.append(f"- this/base {label}: median {statistics.median(values):.3f} ({shown})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (with .venv)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--inflight", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64])
    ap.add_argument("--json", type=Path, help="also write the raw rounds here")
    args = ap.parse_args(argv)
    trees = {"base": args.base.resolve(), "this": ROOT}
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cpu-ab-") as tmp:
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            rnd: dict[str, Any] = {}
            for name in order:
                rnd[name] = measure_tree(trees[name], Path(tmp) / f"r{r}-{name}", args)
                shown = {c: round(total_cpu(x) or 0) for c, x in rnd[name].items()}
                print(f"round {r + 1} {name}: total µs/write {shown}", flush=True)
            rounds.append(rnd)
    print(summarize(rounds, trees, args.inflight))
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
