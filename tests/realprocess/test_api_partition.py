"""The REST API on the minority side of a real partition (peer links through a fault proxy):
503 with ``Retry-After`` for writes and linearizable reads, while the majority side serves;
after healing the same API call succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from coordination.shared_coordinator import reset_coordinator
from raft_node.testing.launcher import LocalCluster

pytestmark = [
    pytest.mark.realprocess,
    pytest.mark.django_db,
]
ROOT = Path(__file__).resolve().parents[2]
MACHINE = "coordination.primitives.machine.CoordinationMachine"


@pytest.fixture
def partitioned(tmp_path: Path):
    cluster = LocalCluster(
        tmp_path, ROOT / "manage.py", proxied=True, settings={"STATE_MACHINE": MACHINE}
    )
    cluster.start()
    try:
        yield cluster
    finally:
        reset_coordinator()
        cluster.stop()


def _point_api_at(settings, cluster: LocalCluster, nodes: list[str]) -> None:
    """The web process talks to ``nodes`` only (as a web server next to one node would)."""
    spec = ",".join(f"{n}={h}:{p}" for n, (h, p) in cluster.addresses.items() if n in nodes)
    settings.COORDINATION = {
        **settings.COORDINATION,
        "CLUSTER": spec,
        "CLUSTER_SECRET": cluster.secret,
        "REQUEST_TIMEOUT": 1.0,
    }
    reset_coordinator()


def _api() -> APIClient:
    user = User.objects.create_user(f"user{User.objects.count()}")
    user.user_permissions.add(Permission.objects.get(codename="use_primitives"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_minority_side_answers_503_and_recovers_after_heal(partitioned, settings):
    api = _api()
    old = partitioned.wait_for_leader()
    majority = [n for n in partitioned.ids if n != old]
    partitioned.proxy.partition([old], majority)
    partitioned.wait_for_leader(among=majority)

    _point_api_at(settings, partitioned, [old])
    for call in (
        lambda: api.post("/api/sessions/", {"ttl": 5}, format="json"),
        lambda: api.post("/api/queues/jobs/messages/", {"payload": "x"}, format="json"),
        lambda: api.put("/api/cache/k/", {"value": "v"}, format="json"),
        lambda: api.get("/api/cache/k/"),  # a linearizable read needs a quorum too
    ):
        got = call()
        assert got.status_code == 503, got.content
        assert got["Retry-After"] == "1" and got.json()["code"] == "unavailable"

    _point_api_at(settings, partitioned, majority)
    assert api.put("/api/cache/k/", {"value": "v"}, format="json").status_code == 200

    partitioned.proxy.heal()
    partitioned.wait_converged()
    _point_api_at(settings, partitioned, [old])
    assert api.post("/api/sessions/", {"ttl": 5}, format="json").status_code == 201
    assert api.get("/api/cache/k/").json()["value"] == "v"
