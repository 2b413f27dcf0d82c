"""A module-scoped 3-node cluster hosting the coordination primitives (real processes).

A test module may name another state machine in ``STATE_MACHINE`` (a dotted path the node
processes can import, e.g. ``tests.realprocess.probe_machine.ProbeMachine``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raft_node.testing.launcher import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "coordination.primitives.machine.CoordinationMachine"


@pytest.fixture(scope="module")
def coordination_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    machine = getattr(request.module, "STATE_MACHINE", MACHINE)
    c = LocalCluster(
        tmp_path_factory.mktemp("coordination"),
        ROOT / "manage.py",
        settings={"STATE_MACHINE": machine},
    )
    c.start()
    # Generous: at the start of a parallel run on a loaded machine, two workers each start three
    # node processes at once; a healthy cluster answers in a second or two anyway.
    c.wait_for_leader(timeout=60)
    yield c
    c.stop()
