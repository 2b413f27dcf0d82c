"""Load driver of the primitives benchmark: runs one area (locks, queue, cache or semaphore)
against one system (raftsync or redis-py) and prints one JSON line with the results. Started by
``bench_primitives.py`` as its own process per (system, area), so the client's threads and
connections end with it, and a hung run is killed by the orchestrator's timeout.

    prim_load.py --system raftsync|redis --area locks|queue|cache --params '{...}'

The raftsync cluster secret comes from the environment variable ``RAFTSYNC_BENCH_SECRET``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _clean(obj: Any) -> Any:
    """JSON without NaN (a phase with no samples): NaN becomes null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", choices=["raftsync", "redis"], required=True)
    ap.add_argument("--area", choices=["locks", "queue", "cache", "semaphore"], required=True)
    ap.add_argument("--params", required=True, help="JSON object from bench_primitives.py")
    args = ap.parse_args(argv)
    params = json.loads(args.params)
    if args.system == "raftsync":
        import prim_raftsync as impl

        params["secret"] = os.environ["RAFTSYNC_BENCH_SECRET"]
    else:
        import prim_redis as impl
    if args.area == "semaphore":  # both systems' scenarios live in one module
        import prim_semaphore

        run = prim_semaphore.raftsync if args.system == "raftsync" else prim_semaphore.redis_py
    else:
        run = impl.AREAS[args.area]
    result = run(params)
    params.pop("secret", None)
    print(json.dumps(_clean(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
