"""One 3-node cluster per test module (each mode's file starts its own, once), the vendored
Poll model's table, and nothing else: the tests are Django's (see raftcache_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import raftcache_harness
from django.db import connection

from raft_node.testing.launcher import LocalCluster
from tests.realprocess.conftest import coordination_cluster  # noqa: F401  (the shared fixture)


@pytest.fixture(scope="module", autouse=True)
def raft_cluster(coordination_cluster: LocalCluster) -> Iterator[LocalCluster]:  # noqa: F811
    raftcache_harness.CLUSTER = coordination_cluster
    yield coordination_cluster
    raftcache_harness.CLUSTER = None


@pytest.fixture(scope="module", autouse=True)
def poll_table(django_db_setup: None, django_db_blocker: object) -> Iterator[None]:
    """The table of Django's test model ``Poll`` (BaseCacheTests cache model instances): the
    vendored app is installed only for that class, after the test database was made."""
    from vendored_django_cache.models import Poll

    with django_db_blocker.unblock(), connection.schema_editor() as editor:  # type: ignore[attr-defined]
        editor.create_model(Poll)
    yield
    with django_db_blocker.unblock(), connection.schema_editor() as editor:  # type: ignore[attr-defined]
        editor.delete_model(Poll)
