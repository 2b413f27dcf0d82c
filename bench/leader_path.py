"""The leader's CPU per client write, in one process: no sockets, no fsync, no other node.

    .venv/bin/python bench/leader_path.py [--rounds 100] [--batch 64] [--reps 7] [--profile]

A single-voter ``NodeHost`` (memory storage, the coordination state machine) behind the node's
``RequestHandler``: each round hands ``--batch`` PROPOSE frames (``cache.set`` of a 100-byte
value, as ``bench_vs_etcd.py`` writes) to ``handle_frame``, then runs ``process()`` (append,
save, commit, apply, answer) and ``tick()``. It prints microseconds per write over ``--reps``
repetitions of ``--rounds`` rounds (min and median), and with ``--profile`` the cProfile table
of one more repetition.

Why: the leader's per-write Python (parse, validate, propose, apply, answer) is what a
micro-optimisation of the request path changes, and a whole cluster measures it through the
noise of three processes, the disk and the scheduler (``bench/cpu_ab.py`` needs 8 rounds to see
5%). Here the same code runs alone and repeats to within a few percent, so a change of 1 µs
shows. It leaves out what only a cluster has: the peers' messages, the sockets and the fsync.
(On this machine, 2026-12-05: 31 µs per write, against 60-70 µs of leader CPU per write in a
3-node cluster at 64 in flight.) Nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordination.primitives import commands as c
from coordination.primitives.machine import CoordinationMachine
from raft_node.core.raft import Config
from raft_node.host.config import NodeConfig
from raft_node.host.metrics import NodeMetrics
from raft_node.host.node_host import NodeHost
from raft_node.host.requests import RequestHandler
from raft_node.storage.memory import MemoryStorage
from raft_node.transport import client_protocol as p
from raft_node.transport.codec import decode_payload, encode_payload


class _NoPeers:
    def send(self, messages: object) -> None:
        pass


class LeaderPath:
    """One single-voter node, leading, and the client frames fed to it."""

    def __init__(self) -> None:
        self.host = NodeHost(
            Config(id="n1", voters=["n1"], rng=random.Random(1)),
            CoordinationMachine(),
            MemoryStorage(),
            _NoPeers(),
            metrics=NodeMetrics("n1"),
        )
        config = NodeConfig(
            node_id="n1",
            cluster={"n1": ("127.0.0.1", 1)},
            data_dir=Path(tempfile.gettempdir()) / "leader-path",
            secret=os.urandom(32),
        )
        self.handler = RequestHandler(self.host, config)
        self.host.raw.campaign()
        self.host.process()
        if not self.host.is_leader:
            raise RuntimeError("a single voter did not become leader")
        self.values = [os.urandom(100) for _ in range(256)]
        self.seq = 0
        self.answers: list[bytes] = []

    def frames(self, n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            self.seq += 1
            s = self.seq
            body = c.cache_set(f"key-{s % 10_000:012d}", self.values[s % 256], None)
            out.append(encode_payload([p.PROPOSE, s, "bench-client", s, body]))
        return out

    def run(self, rounds: int, batch: int) -> float:
        """Microseconds per write over ``rounds`` rounds of ``batch`` writes; every one must be
        answered with success."""
        prepared = [self.frames(batch) for _ in range(rounds)]
        handle, respond, host = self.handler.handle_frame, self.answers.append, self.host
        started = time.perf_counter()
        for frames in prepared:
            for frame in frames:
                handle(frame, respond)
            host.process()
            host.tick()
        elapsed = time.perf_counter() - started
        answers, self.answers[:] = list(self.answers), []
        failed = [a for a in map(decode_payload, answers) if a[1] != p.OK]
        if len(answers) != rounds * batch or failed:
            raise RuntimeError(f"{len(answers)} answers for {rounds * batch}; failed: {failed[:1]}")
        return elapsed / (rounds * batch) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    path = LeaderPath()
    path.run(max(1, args.rounds // 2), args.batch)  # warm-up: caches, the L1, the allocator
    results = [path.run(args.rounds, args.batch) for _ in range(args.reps)]
    print(
        f"leader path, {args.batch} writes per round: µs per write min {min(results):.2f}"
        f" median {statistics.median(results):.2f} ({args.reps} x {args.rounds} rounds)"
    )
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        path.run(args.rounds, args.batch)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
