"""Every field the REST API validates: a bad value is a 400 naming the field, before the cluster
is asked (no cluster runs here; reaching it would be a 503, not a 400)."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from coordination.shared_coordinator import reset_coordinator

pytestmark = pytest.mark.django_db

LONG_OWNER = "o" * 129  # OWNER_MAX_BYTES + 1

CASES = [
    ("post", "/api/sessions/", {"ttl": 0}, "ttl"),
    ("post", "/api/sessions/", {"ttl": 3601}, "ttl"),
    ("post", "/api/sessions/", {"ttl": "soon"}, "ttl"),
    ("post", "/api/sessions/", {"label": LONG_OWNER}, "label"),
    ("post", "/api/locks/a/acquire/", {}, "session"),
    ("post", "/api/locks/a/acquire/", {"session": 0}, "session"),
    ("post", "/api/locks/a/acquire/", {"session": 1, "mode": "upgrade"}, "mode"),
    ("post", "/api/locks/a/acquire/", {"session": 1, "wait": 301}, "wait"),
    ("post", "/api/locks/a/acquire/", {"session": 1, "wait": -1}, "wait"),
    ("post", "/api/locks/a/acquire/", {"session": 1, "owner": LONG_OWNER}, "owner"),
    ("post", "/api/locks/a/release/", {}, "session"),
    ("post", "/api/locks/a/renew/", {"session": "one"}, "session"),
    ("get", "/api/locks/a/check/", None, "token"),
    ("get", "/api/locks/a/check/?token=x", None, "token"),
    ("post", "/api/queues/q/messages/", {}, "payload"),
    ("post", "/api/queues/q/messages/", {"payload": "x", "priority": 10}, "priority"),
    ("post", "/api/queues/q/messages/", {"payload": "x", "priority": -1}, "priority"),
    ("post", "/api/queues/q/messages/", {"payload": "x", "delay": -1}, "delay"),
    ("post", "/api/queues/q/messages/", {"payload": "x", "delay": 8 * 86400}, "delay"),
    ("post", "/api/queues/q/messages/", {"payload": "x", "dedup_id": "d" * 201}, "dedup_id"),
    ("get", "/api/queues/q/messages/?limit=0", None, "limit"),
    ("get", "/api/queues/q/messages/?limit=101", None, "limit"),
    ("post", "/api/queues/q/get/", {}, "session"),
    ("post", "/api/queues/q/get/", {"session": 1, "wait": 301}, "wait"),
    ("post", "/api/queues/q/get/", {"session": 1, "visibility": 0.5}, "visibility"),
    ("post", "/api/queues/q/messages/1/ack/", {}, "session"),
    ("post", "/api/queues/q/messages/1/nack/", {"session": 1, "requeue": "maybe"}, "requeue"),
    ("post", "/api/queues/q/messages/1/nack/", {"session": 1, "delay": -1}, "delay"),
    ("put", "/api/cache/k/", {}, "value"),
    ("put", "/api/cache/k/", {"value": "v", "ttl": 0}, "ttl"),
    ("put", "/api/cache/k/", {"value": "v", "ttl": 31 * 86400}, "ttl"),
    ("post", "/api/cache/k/incr/", {"delta": "x"}, "delta"),
    ("post", "/api/cluster/transfer/", {}, "to"),
    ("post", "/api/cluster/transfer/", {"to": "n" * 65}, "to"),
]


@pytest.fixture
def api(settings) -> APIClient:
    from raft_node.testing.launcher import free_port

    settings.COORDINATION = {  # nothing listens there: a request that got through would 503
        **settings.COORDINATION,
        "CLUSTER": f"n1=127.0.0.1:{free_port()}",
        "CLUSTER_SECRET": "x",
        "REQUEST_TIMEOUT": 0.2,
    }
    user = User.objects.create_user("validator")
    perms = Permission.objects.filter(codename__in=["use_primitives", "operate_cluster"])
    user.user_permissions.add(*perms)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.mark.parametrize(("method", "url", "body", "field"), CASES)
def test_bad_field_is_a_400_naming_it(api, method, url, body, field):
    call = getattr(api, method)
    got = call(url, body, format="json") if body is not None else call(url)
    assert got.status_code == 400, (got.status_code, got.content)
    assert field in got.json(), got.json()


def test_session_authentication_with_csrf_and_anonymous_refused(api):
    browser = APIClient(enforce_csrf_checks=True)
    assert browser.get("/api/locks/a/check/").status_code == 401  # anonymous
    browser.force_login(User.objects.get(username="validator"))  # a Django session (admin login)
    assert browser.get("/api/locks/a/check/").status_code == 400  # authenticated, then validated
    refused = browser.post("/api/sessions/", {"ttl": 0}, format="json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]


def test_api_request_timeout_bounds_a_call_to_an_unreachable_cluster(api, settings):
    """``API_REQUEST_TIMEOUT``, not the clients' ``REQUEST_TIMEOUT``, is how long a view waits
    for the cluster before answering 503."""
    settings.COORDINATION = {
        **settings.COORDINATION,
        "REQUEST_TIMEOUT": 60,
        "API_REQUEST_TIMEOUT": 0.3,
    }
    reset_coordinator()
    try:
        started = time.monotonic()
        got = api.post("/api/sessions/", {"ttl": 5}, format="json")
        elapsed = time.monotonic() - started
    finally:
        reset_coordinator()
    assert got.status_code == 503 and got["Retry-After"] == "1", got.content
    assert got.json()["code"] == "unavailable" and elapsed < 10
