"""Semaphores over the REST API and on the admin's locks page, against real node processes:
acquire/release/inspect/check with sessions by id, waits answered when a slot frees, 400 with a
message on bad input, typed 409s, and the OpenAPI schema."""

from __future__ import annotations

import threading
import time

import pytest
import test_api
from django.contrib.auth.models import User
from django.test import Client

pytestmark = [pytest.mark.realprocess, pytest.mark.django_db]
api_settings = test_api.api_settings  # the fixture: settings naming the module's cluster


def _session(api) -> int:
    return api.post("/api/sessions/", {"ttl": 10}, format="json").json()["session"]


@pytest.mark.django_db(transaction=True)  # a second thread makes requests too
def test_acquire_release_inspect_and_a_wait_over_http(api_settings):
    api, second = test_api._client("use_primitives"), test_api._client("use_primitives")
    a, b, c = _session(api), _session(api), _session(api)
    url = "/api/semaphores/exports/"
    first = api.post(url + "acquire/", {"session": a, "limit": 2}, format="json")
    assert first.status_code == 200 and first.json()["acquired"] and first.json()["limit"] == 2
    assert api.post(url + "acquire/", {"session": b, "limit": 2}, format="json").status_code == 200
    busy = api.post(url + "acquire/", {"session": c, "limit": 2}, format="json")
    assert busy.status_code == 409 and busy.json()["acquired"] is False
    token = first.json()["token"]
    assert api.get(f"{url}check/?token={token}").json() == {"current": True}
    waited: list = []
    waiter = threading.Thread(
        target=lambda: waited.append(
            second.post(url + "acquire/", {"session": c, "limit": 2, "wait": 20}, format="json")
        )
    )
    waiter.start()
    deadline = time.monotonic() + 10
    while not api.get(url).json()["waiters"] and time.monotonic() < deadline:
        time.sleep(0.05)
    info = api.get(url).json()
    assert info["limit"] == 2 and [h["session"] for h in info["holders"]] == [a, b]
    assert [w["session"] for w in info["waiters"]] == [c]
    assert api.post(url + "release/", {"session": a}, format="json").json()["released"]
    waiter.join(20)
    assert waited[0].status_code == 200 and waited[0].json()["token"] > token
    assert api.get(f"{url}check/?token={token}").json() == {"current": False}
    assert api.post(url + "release/", {"session": a}, format="json").status_code == 409


def test_bad_input_is_a_400_with_a_message_and_conflicts_are_typed(api_settings):
    api = test_api._client("use_primitives")
    a = _session(api)
    url = "/api/semaphores/bad/acquire/"
    for limit in (0, -1, 10_001, "x"):
        response = api.post(url, {"session": a, "limit": limit}, format="json")
        assert response.status_code == 400 and "limit" in response.json(), response.json()
    assert api.post(url, {"session": a}, format="json").status_code == 400  # limit required
    long_name = "n" * 201
    response = api.post(
        f"/api/semaphores/{long_name}/acquire/", {"session": a, "limit": 1}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "limit_exceeded" and "200 bytes" in body["detail"]
    assert api.post(url, {"session": a, "limit": 2}, format="json").status_code == 200
    mismatch = api.post(url, {"session": _session(api), "limit": 3}, format="json")
    assert mismatch.status_code == 409 and mismatch.json()["code"] == "semaphore_limit"
    assert api.post(url, {"session": 999_999, "limit": 2}, format="json").status_code == 404
    assert api.get("/api/semaphores/bad/check/?token=x").status_code == 400


def test_the_schema_documents_the_semaphore_endpoints(api_settings):
    schema = test_api._client().get("/api/schema/?format=json").json()
    paths = schema["paths"]
    for suffix in ("", "acquire/", "release/", "check/"):
        assert f"/api/semaphores/{{name}}/{suffix}" in paths
    body = paths["/api/semaphores/{name}/acquire/"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"session", "limit", "wait"} <= set(schema["components"]["schemas"][ref]["properties"])


def test_the_admin_locks_page_shows_semaphores_with_holders_and_waiters(api_settings):
    api = test_api._client("use_primitives")
    a = _session(api)
    granted = api.post(
        "/api/semaphores/adm/acquire/", {"session": a, "limit": 1, "owner": "w1"}, format="json"
    ).json()
    staff = Client()
    staff.force_login(User.objects.create_user("staff-sem", is_staff=True))
    page = staff.get("/admin/coordination/coordination/locks/?prefix=adm")
    html = page.content.decode()
    assert page.status_code == 200 and 'data-semaphore="adm"' in html
    assert f'data-token="{granted["token"]}"' in html and "1 / 1" in html
    api.post("/api/semaphores/adm/release/", {"session": a, "owner": "w1"}, format="json")
    assert (
        'data-semaphore="adm"'
        not in staff.get("/admin/coordination/coordination/locks/?prefix=adm").content.decode()
    )
