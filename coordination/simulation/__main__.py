"""``python -m coordination.simulation --seed N``: the simulator running the primitives."""

from __future__ import annotations

import argparse
import sys
import time

from coordination.simulation.workload import CoordinationWorkload
from raft_node.sim.cluster import Simulation, SimulationFailure

REPLAY = "python -m coordination.simulation"


def run(seed: int, nodes: int = 3, steps: int = 3000) -> object:
    sim = Simulation(
        seed,
        nodes=nodes,
        steps=steps,
        workload=CoordinationWorkload(),
        replay=REPLAY,
        liveness_ms=15_000,
    )
    return sim.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REPLAY)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--seeds", default="0:50", help="LO:HI")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--keep-going", action="store_true")
    args = parser.parse_args(argv)
    if args.seed is not None:
        seeds = range(args.seed, args.seed + 1)
    else:
        lo, _, hi = args.seeds.partition(":")
        seeds = range(int(lo), int(hi))
    failures = 0
    started = time.perf_counter()
    for seed in seeds:
        try:
            result = run(seed, args.nodes, args.steps)
        except SimulationFailure as exc:
            failures += 1
            print(f"FAIL seed {seed}: {exc}", file=sys.stderr)
            if not args.keep_going:
                break
            continue
        if len(seeds) == 1:
            print(result)
    print(
        f"{len(seeds)} seed(s) x {args.steps} steps: {failures} failure(s) "
        f"in {time.perf_counter() - started:.1f}s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
