"""The REST API against real node processes: auth, permissions, validation, error mapping."""

from __future__ import annotations

import threading

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


@pytest.fixture
def api_settings(coordination_cluster: LocalCluster, settings):
    spec = ",".join(f"{n}={h}:{p}" for n, (h, p) in coordination_cluster.addresses.items())
    settings.COORDINATION = {
        **settings.COORDINATION,
        "CLUSTER": spec,
        "CLUSTER_SECRET": coordination_cluster.secret,
    }
    reset_coordinator()
    yield
    reset_coordinator()


def _client(*perms: str) -> APIClient:
    user = User.objects.create_user(f"user{User.objects.count()}")
    for perm in perms:
        user.user_permissions.add(Permission.objects.get(codename=perm))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_auth_and_permissions(api_settings):
    anonymous = APIClient().get("/api/cluster/")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Token"
    reader = _client()
    assert reader.get("/api/cluster/").json()["leader"]
    assert reader.post("/api/sessions/", {"ttl": 5}, format="json").status_code == 403
    user = _client("use_primitives")
    user.post("/api/queues/q-perm/messages/", {"payload": "x"}, format="json")
    assert user.post("/api/queues/q-perm/purge/").status_code == 403
    assert _client("operate_cluster").post("/api/queues/q-perm/purge/").status_code == 200


@pytest.mark.django_db(transaction=True)  # a second thread makes requests too
def test_sessions_and_locks(api_settings):
    api = _client("use_primitives")
    second = _client("use_primitives")
    a = api.post("/api/sessions/", {"ttl": 10}, format="json").json()["session"]
    b = api.post("/api/sessions/", {"ttl": 10}, format="json").json()["session"]
    got = api.post("/api/locks/res/acquire/", {"session": a}, format="json")
    assert got.status_code == 200 and got.json()["acquired"]
    token = got.json()["token"]
    busy = api.post("/api/locks/res/acquire/", {"session": b}, format="json")
    assert busy.status_code == 409
    assert api.get(f"/api/locks/res/check/?token={token}").json() == {"current": True}
    assert api.get("/api/locks/res/").json()["holders"][0]["session"] == a
    assert api.post("/api/locks/res/release/", {"session": b}, format="json").status_code == 409
    assert api.post("/api/locks/res/renew/", {"session": a}, format="json").json() == {
        "token": token
    }
    assert api.post(f"/api/sessions/{a}/keepalive/").status_code == 200
    assert api.post("/api/locks/res/release/", {"session": a}, format="json").status_code == 200
    # Deadlock: a holds x, b holds y, a waits for y (in a thread), b asks for x -> 423.
    api.post("/api/locks/x/acquire/", {"session": a}, format="json")
    api.post("/api/locks/y/acquire/", {"session": b}, format="json")
    waiter = threading.Thread(
        target=lambda: second.post(
            "/api/locks/y/acquire/", {"session": a, "wait": 10}, format="json"
        ),
        daemon=True,
    )
    waiter.start()
    for _ in range(100):
        if api.get("/api/locks/y/").json()["waiters"]:
            break
        threading.Event().wait(0.05)
    cycle = api.post("/api/locks/x/acquire/", {"session": b, "wait": 10}, format="json")
    body = cycle.json()
    assert cycle.status_code == 423 and body["code"] == "deadlock" and "cycle" in body["detail"]
    assert api.delete(f"/api/sessions/{a}/").status_code == 204
    assert api.delete(f"/api/sessions/{b}/").status_code == 204
    waiter.join(10)
    assert api.get(f"/api/sessions/{a}/").status_code == 404


def test_queues(api_settings):
    api = _client("use_primitives")
    assert api.get("/api/queues/nope/").status_code == 404
    session = api.post("/api/sessions/", {"ttl": 10}, format="json").json()["session"]
    put = api.post("/api/queues/jobs-api/messages/", {"payload": "low"}, format="json")
    assert put.status_code == 201
    api.post("/api/queues/jobs-api/messages/", {"payload": "high", "priority": 9}, format="json")
    msg = api.post("/api/queues/jobs-api/get/", {"session": session}, format="json").json()
    assert (msg["payload"], msg["priority"]) == ("high", 9)
    ack = api.post(
        f"/api/queues/jobs-api/messages/{msg['id']}/ack/", {"session": session}, format="json"
    )
    assert ack.status_code == 200
    again = api.post(
        f"/api/queues/jobs-api/messages/{msg['id']}/ack/", {"session": session}, format="json"
    )
    assert again.status_code == 409
    low = api.post("/api/queues/jobs-api/get/", {"session": session}, format="json").json()
    api.post(
        f"/api/queues/jobs-api/messages/{low['id']}/nack/",
        {"session": session, "requeue": False},
        format="json",
    )
    assert [m["payload"] for m in api.get("/api/queues/jobs-api/dead-letters/").json()] == ["low"]
    empty = api.post("/api/queues/jobs-api/get/", {"session": session}, format="json")
    assert empty.status_code == 204
    stats = api.get("/api/queues/jobs-api/").json()
    assert stats["dead_letters"] == 1 and stats["in_flight"] == 0


def test_cache_and_validation(api_settings):
    api = _client("use_primitives")
    assert api.get("/api/cache/k-api/").status_code == 404
    assert api.put("/api/cache/k-api/", {"value": "41"}, format="json").json()["version"] > 0
    assert api.post("/api/cache/k-api/incr/", {"delta": 1}, format="json").json() == {"value": 42}
    assert api.get("/api/cache/k-api/").json()["value"] == "42"
    assert api.delete("/api/cache/k-api/").status_code == 204
    bad = api.post(
        "/api/queues/jobs-api/messages/", {"payload": "x", "priority": 10}, format="json"
    )
    assert bad.status_code == 400 and "priority" in bad.json()
    limit = api.put(f"/api/cache/{'k' * 300}/", {"value": "v"}, format="json")
    assert limit.status_code == 400 and limit.json()["code"] == "limit_exceeded"


def test_unavailable_cluster_is_503_with_retry_after(settings):
    from raft_node.testing.launcher import free_port

    settings.COORDINATION = {
        **settings.COORDINATION,
        "CLUSTER": f"n1=127.0.0.1:{free_port()}",
        "CLUSTER_SECRET": "x",
        "REQUEST_TIMEOUT": 0.5,
    }
    reset_coordinator()
    try:
        got = _client("use_primitives").post("/api/sessions/", {"ttl": 5}, format="json")
    finally:
        reset_coordinator()
    assert got.status_code == 503 and got["Retry-After"] == "1"


def test_schema_lists_every_endpoint(api_settings):
    schema = _client().get("/api/schema/?format=json").json()
    for route in (
        "/api/locks/{name}/acquire/",
        "/api/queues/{name}/get/",
        "/api/cache/{key}/",
        "/api/sessions/",
        "/api/cluster/",
    ):
        assert route in schema["paths"], route


def test_operator_endpoints_requeue_dead_letters_and_transfer_leadership(
    api_settings, coordination_cluster
):
    api = _client("use_primitives")
    operator = _client("operate_cluster")
    session = api.post("/api/sessions/", {"ttl": 10}, format="json").json()["session"]
    api.post("/api/queues/ops-api/messages/", {"payload": "poison"}, format="json")
    msg = api.post("/api/queues/ops-api/get/", {"session": session}, format="json").json()
    api.post(
        f"/api/queues/ops-api/messages/{msg['id']}/nack/",
        {"session": session, "requeue": False},
        format="json",
    )
    assert api.post("/api/queues/ops-api/requeue-dead/").status_code == 403
    assert operator.post("/api/queues/ops-api/requeue-dead/").json() == {"requeued": 1}
    assert [m["payload"] for m in api.get("/api/queues/ops-api/messages/").json()] == ["poison"]
    assert api.get("/api/queues/ops-api/messages/?limit=0").status_code == 400

    leader = coordination_cluster.wait_for_leader()
    target = next(n for n in coordination_cluster.ids if n != leader)
    assert api.post("/api/cluster/transfer/", {"to": target}, format="json").status_code == 403
    bad = operator.post("/api/cluster/transfer/", {"to": ""}, format="json")
    assert bad.status_code == 400 and "to" in bad.json()
    moved = operator.post("/api/cluster/transfer/", {"to": target}, format="json")
    assert moved.status_code == 200 and moved.json() == {"leader": target}
    assert coordination_cluster.wait_for_leader() == target
    unknown = operator.post("/api/cluster/transfer/", {"to": "n9"}, format="json")
    assert unknown.status_code == 400, unknown.content


def test_held_keys_and_session_held_leases_over_http(api_settings):
    """``hold_key`` (what ``@once`` uses): a duplicate while the first message is queued or
    leased answers the first id and tag; the ack frees the key. ``visibility: null`` leases for
    as long as the session lives (no deadline)."""
    api = _client("use_primitives")
    session = api.post("/api/sessions/", {"ttl": 10}, format="json").json()["session"]
    url = "/api/queues/held-api/messages/"
    body = {"payload": "report", "hold_key": "report:7", "tag": "task-1"}
    first = api.post(url, body, format="json").json()
    assert first["duplicate"] is False
    again = api.post(url, {**body, "tag": "task-2"}, format="json").json()
    assert again == {"id": first["id"], "duplicate": True, "tag": "task-1"}
    got = api.post(
        "/api/queues/held-api/get/", {"session": session, "visibility": None}, format="json"
    ).json()
    assert got["id"] == first["id"] and got["lease_expires_ms"] is None
    leased = api.post(url, {**body, "tag": "task-3"}, format="json").json()
    assert leased["duplicate"] is True  # still held while the message is in flight
    api.post(f"{url}{first['id']}/ack/", {"session": session}, format="json")
    freed = api.post(url, {**body, "tag": "task-4"}, format="json").json()
    assert freed["duplicate"] is False and freed["id"] != first["id"]
    too_long = api.post(url, {"payload": "x", "hold_key": "k" * 201}, format="json")
    assert too_long.status_code == 400 and "hold_key" in too_long.json()
