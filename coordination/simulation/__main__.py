"""``python -m coordination.simulation --seed N``: the simulator running the primitives.

Same options as ``python -m raft_node.sim`` (``--seed``, ``--seeds LO:HI``, ``--nodes``,
``--steps``, ``--keep-going``); the workload is ``CoordinationWorkload``.
"""

from __future__ import annotations

import sys

from coordination.simulation.workload import CoordinationWorkload
from raft_node.sim.__main__ import main as run_seeds


def main(argv: list[str] | None = None) -> int:
    return run_seeds(
        argv,
        prog="python -m coordination.simulation",
        simulation_kwargs=lambda: {"workload": CoordinationWorkload(), "liveness_ms": 15_000},
    )


if __name__ == "__main__":
    sys.exit(main())
