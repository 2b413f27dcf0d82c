"""Run seeded simulations from the command line; a failure prints its seed and replay command.

python -m raft_node.sim --seed 42                 # replay one seed
python -m raft_node.sim --seeds 0:2000 --nodes 5  # a sweep
python -m raft_node.sim --seeds 0:200 --bug commit-old-term   # watch a known bug get caught
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from raft_node.sim.bugs import BUGS
from raft_node.sim.cluster import Simulation, SimulationFailure


def _seed_range(text: str) -> range:
    lo, _, hi = text.partition(":")
    return range(int(lo), int(hi)) if hi else range(int(lo), int(lo) + 1)


def main(
    argv: list[str] | None = None,
    *,
    prog: str = "python -m raft_node.sim",
    simulation_kwargs: Callable[[], dict[str, Any]] = dict,
) -> int:
    """Run seeds; ``simulation_kwargs`` adds ``Simulation`` arguments per seed (e.g. another
    workload: ``coordination.simulation`` runs the primitives through this same CLI)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, help="run one seed")
    group.add_argument("--seeds", type=_seed_range, default=range(0, 100), help="LO:HI range")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--bug", choices=sorted(BUGS), help="inject a known protocol bug")
    parser.add_argument("--keep-going", action="store_true", help="do not stop at a failure")
    parser.add_argument(
        "--membership", action="store_true", help="spare machines and membership changes"
    )
    args = parser.parse_args(argv)
    seeds = range(args.seed, args.seed + 1) if args.seed is not None else args.seeds
    extra: dict[str, Any] = {"replay": prog, "membership": args.membership}
    if args.bug:
        extra["raft_class"] = BUGS[args.bug]
    failures = 0
    started = time.perf_counter()
    for seed in seeds:
        sim = Simulation(seed, nodes=args.nodes, steps=args.steps, **extra, **simulation_kwargs())
        try:
            result = sim.run()
        except SimulationFailure as exc:
            failures += 1
            print(f"FAIL seed {seed}: {exc}", file=sys.stderr)
            if not args.keep_going:
                break
            continue
        if len(seeds) == 1:
            print(result)
    elapsed = time.perf_counter() - started
    print(
        f"{len(seeds)} seed(s) x {args.steps} steps, {args.nodes} nodes: "
        f"{failures} failure(s) in {elapsed:.1f}s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
