"""Rate limits over the REST API and on the admin page, against real node processes: take (200,
then 429 with Retry-After), inspect, list, bad input as 400 with its code, permissions, the
OpenAPI schema, and the admin's bucket table."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from coordination.primitives import limits
from coordination.shared_coordinator import reset_coordinator
from raft_node.testing.launcher import LocalCluster

pytestmark = [pytest.mark.realprocess, pytest.mark.django_db]


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


@pytest.fixture
def key() -> str:
    return f"api-rl:{uuid.uuid4().hex[:8]}"


def test_take_grants_then_answers_429_with_retry_after(api_settings, key):
    api = _client("use_primitives")
    url = f"/api/ratelimits/{key}/take/"
    first = api.post(url, {"rate": "1/m", "burst": 2}, format="json")
    assert first.status_code == 200
    assert first.json() == {"granted": True, "retry_after": 0.0, "tokens": 1.0, "burst": 2}
    assert api.post(url, {"rate": "1/m", "burst": 2}, format="json").status_code == 200
    refused = api.post(url, {"rate": "1/m", "burst": 2}, format="json")
    assert refused.status_code == 429
    body = refused.json()
    assert body["granted"] is False and 59 < body["retry_after"] <= 60
    assert refused["Retry-After"] == "60"
    view = api.get(f"/api/ratelimits/{key}/").json()
    assert view["exists"] and view["key"] == key and view["count"] == 1 and view["burst"] == 2
    assert view["period_ms"] == 60_000 and view["tokens"] < 1
    assert api.get(f"/api/ratelimits/{key}x/").json() == {"key": f"{key}x", "exists": False}
    listed = api.get(f"/api/ratelimits/?prefix={key}").json()
    assert [b["key"] for b in listed["buckets"]] == [key]
    assert listed["buckets"][0]["tokens"] < 1 and listed["buckets"][0]["burst"] == 2
    assert listed["stats"]["max_buckets"] == limits.RATELIMIT_BUCKETS_MAX


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"rate": "0/s"}, "invalid_rate"),
        ({"rate": "-5/s"}, "invalid_rate"),
        ({"rate": "5/fortnight"}, "invalid_rate"),
        ({"rate": "5/s", "burst": 2, "n": 3}, "limit_exceeded"),
    ],
)
def test_bad_takes_are_400_with_their_code(api_settings, key, body, code):
    answer = _client("use_primitives").post(f"/api/ratelimits/{key}/take/", body, format="json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["code"] == code


def test_field_errors_and_a_long_key_are_400(api_settings):
    api = _client("use_primitives")
    answer = api.post("/api/ratelimits/k/take/", {"rate": "5/s", "burst": 0}, format="json")
    assert answer.status_code == 400 and "burst" in answer.json()
    assert api.post("/api/ratelimits/k/take/", {}, format="json").status_code == 400
    long_key = "k" * (limits.NAME_MAX_BYTES + 1)
    answer = api.post(f"/api/ratelimits/{long_key}/take/", {"rate": "5/s"}, format="json")
    assert answer.status_code == 400 and answer.json()["code"] == "limit_exceeded"


def test_taking_needs_the_use_primitives_permission(api_settings, key):
    reader = _client()
    assert reader.post(f"/api/ratelimits/{key}/take/", {"rate": "5/s"}).status_code == 403
    assert reader.get(f"/api/ratelimits/{key}/").status_code == 200
    assert APIClient().get("/api/ratelimits/").status_code == 401


def test_the_schema_lists_the_rate_limit_endpoints(api_settings):
    schema = _client().get("/api/schema/?format=json").json()
    paths = schema["paths"]
    for route in ("/api/ratelimits/", "/api/ratelimits/{key}/", "/api/ratelimits/{key}/take/"):
        assert route in paths, route
    body = paths["/api/ratelimits/{key}/take/"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/RateTake")
    assert set(schema["components"]["schemas"]["RateTake"]["properties"]) == {"rate", "burst", "n"}


def test_the_admin_page_lists_buckets_with_rate_and_tokens_now(api_settings, key):
    api = _client("use_primitives")
    api.post(f"/api/ratelimits/{key}/take/", {"rate": "100/h", "burst": 10, "n": 4}, format="json")
    staff = Client()
    staff.force_login(User.objects.create_user("staff", is_staff=True))
    page = staff.get(f"/admin/coordination/coordination/ratelimits/?prefix={key}")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'data-key="{key}"' in html
    row = html[html.index(f'data-key="{key}"') :]
    assert '<td data-field="rate">100/h</td>' in row
    assert 'data-field="burst">10<' in row and 'data-field="tokens">6.00<' in row
