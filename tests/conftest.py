"""Root conftest: marks tests/ as the rootdir for shared fixtures.

It deliberately imports nothing from Django: the Raft engine's tests must not depend on the web
layer, and pytest-django configures settings from pyproject.toml on its own.
"""

import pytest
from search_depth import seeds


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("raftsync simulator")
    group.addoption(
        "--sim-seeds",
        type=int,
        default=seeds(quick=300, deep=3000),
        help=(
            "seeded Raft simulation runs (2/3 on 3 nodes, 1/3 on 5; the primitives' sweep runs a"
            " fifth as many): 300 in the default suite, 3000 under RAFTSYNC_TEST_DEPTH=deep"
        ),
    )
    group.addoption("--sim-steps", type=int, default=4000, help="events per simulation run")


@pytest.fixture
def sim_steps(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("sim_steps")


@pytest.fixture(scope="module")
def inprocess_cluster():
    """A 3-node coordination cluster inside the test process: real ``NodeServer``s and TCP on
    free loopback ports, one background event loop, logs in memory. Starts in well under a
    second, so tests of what runs on a cluster (the clients, the ``raft://`` kombu transport)
    need no node subprocesses; the real-process tests (``coordination_cluster``) keep the
    wiring and the faults."""
    from coordination.primitives.machine import CoordinationMachine
    from raft_node.testing.inprocess import InProcessCluster

    with InProcessCluster(CoordinationMachine) as cluster:
        yield cluster
