"""``raft_status`` answers in under half a second with nodes down (issue 15, item 6): one node
killed -9 (it refuses connections), then another paused with SIGSTOP (its kernel accepts the
connection, nobody ever answers: only a per-node deadline ends that wait). Every entry point is
timed: ``manage.py raft_status`` and ``raftsync status`` in this process (the command's own
time, without the interpreter's start), the admin's and ``/api/cluster/``'s
``inspection.node_statuses``, and the console script as a subprocess (printed only: that figure
is mostly Python starting). The bound asserted is 1 s, a margin for a loaded CI machine; the
figures are printed (``pytest -s``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from coordination import cli, inspection
from raft_node.testing.launcher import LocalCluster

pytestmark = pytest.mark.realprocess

BOUND_S = 1.0  # asserted; the goal is 0.5 s (STATUS_TIMEOUT is 0.4 s per node, all at once)
SCRIPT = Path(sys.executable).parent / "raftsync"


def _timed(what: str, call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - started
    print(f"\n{what}: {elapsed * 1000:.0f} ms")
    assert elapsed < BOUND_S, f"{what} took {elapsed:.3f} s"
    return result


def _manage_status(spec: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = 0
    try:
        call_command("raft_status", "--cluster", spec, "--json", stdout=out)
    except SystemExit as exc:  # exit 1: not exactly one leader
        code = int(exc.code or 0)
    return code, json.loads(out.getvalue())


def _script_status(spec: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["status", "--cluster", spec, "--json"])
    return code, json.loads(out.getvalue())


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in report["nodes"]}


def test_status_with_a_killed_and_a_paused_node_answers_at_once(
    coordination_cluster: LocalCluster,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = coordination_cluster
    spec = ",".join(f"{n}={h}:{p}" for n, (h, p) in cluster.addresses.items())
    monkeypatch.setenv("RAFTSYNC_CLUSTER_SECRET", cluster.secret)
    settings.COORDINATION = {
        **settings.COORDINATION,
        "CLUSTER": spec,
        "CLUSTER_SECRET": cluster.secret,
    }
    cluster.wait_converged()  # every node up (a leader needs only two of three)
    leader = cluster.wait_for_leader()
    dead, paused = [n for n in cluster.ids if n != leader]

    cluster.kill(dead)
    code, report = _timed("raft_status, one node killed", lambda: _manage_status(spec))
    rows = _rows(report)
    assert code == 0 and report["leader"] == leader
    assert rows[dead]["unreachable"] and "error" in rows[dead]
    assert rows[paused].get("role") == "follower", rows[paused]

    cluster.pause(paused)
    try:
        code, report = _timed("raft_status, killed + paused", lambda: _manage_status(spec))
        rows = _rows(report)
        assert rows[dead]["unreachable"] and rows[paused]["unreachable"]
        assert "no answer within" in rows[paused]["error"]
        assert "role" in rows[leader]  # the live node still answers for itself

        code, report = _timed("raftsync status", lambda: _script_status(spec))
        assert _rows(report)[paused]["unreachable"] and _rows(report)[dead]["unreachable"]

        nodes = _timed("inspection.node_statuses", inspection.node_statuses)
        by_id = {row["id"]: row for row in nodes}
        assert by_id[dead]["unreachable"] and by_id[paused]["unreachable"]
        assert "role" in by_id[leader]

        env = {**os.environ, "RAFTSYNC_CLUSTER_SECRET": cluster.secret}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        started = time.perf_counter()
        done = subprocess.run(
            [str(SCRIPT), "status", "--cluster", spec],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        whole = time.perf_counter() - started
        print(f"\nraftsync status as a process (Python start included): {whole * 1000:.0f} ms")
        assert "unreachable" in done.stdout, done.stderr
    finally:
        with contextlib.suppress(Exception):
            cluster.resume(paused)
