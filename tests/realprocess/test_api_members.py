"""Membership over the REST API and the admin against real node processes: list, add (learner,
caught up, voter), the typed refusals, promote, remove, permissions, the admin's actions in its
history, and the OpenAPI schema."""

from __future__ import annotations

import pytest
import test_api
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client

from raft_node.testing.launcher import LocalCluster, free_port

pytestmark = [pytest.mark.realprocess, pytest.mark.django_db]
api_settings = test_api.api_settings  # the fixture: settings naming the module's cluster
URL = "/api/cluster/members/"


def _voters(api) -> list[str]:
    return sorted(api.get(URL).json()["voters"])


def test_add_promote_remove_and_refusals_over_http(api_settings, coordination_cluster):
    cluster: LocalCluster = coordination_cluster
    ops = test_api._client("operate_cluster")
    assert test_api._client("use_primitives").get(URL).status_code == 403
    originals = _voters(ops)
    host, port = cluster.add_machine("n4")
    cluster.start_node("n4")
    added = ops.post(URL, {"id": "n4", "address": f"{host}:{port}"}, format="json")
    assert added.status_code == 201, added.json()
    assert "n4" in added.json()["voters"]
    again = ops.post(URL, {"id": "n4", "address": f"{host}:{port}"}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "member_exists"
    dead = ops.post(URL, {"id": "n9", "address": f"127.0.0.1:{free_port()}"}, format="json")
    assert dead.status_code == 409 and dead.json()["code"] == "member_unreachable"
    assert ops.post(f"{URL}n4/promote/").json()["code"] == "not_learner"
    assert ops.delete(f"{URL}n9/").status_code == 404
    bad = ops.post(URL, {"id": "n 5", "address": "nowhere"}, format="json")
    assert bad.status_code == 400 and {"id", "address"} <= set(bad.json())
    removed = ops.delete(f"{URL}n4/")
    assert removed.status_code == 200 and _voters(ops) == originals
    learner = ops.post(
        URL, {"id": "n4", "address": f"{host}:{port}", "promote": False}, format="json"
    )
    assert learner.json()["learners"] == ["n4"]
    assert ops.post(f"{URL}n4/promote/").json()["voters"] == sorted([*originals, "n4"])
    ops.delete(f"{URL}n4/")
    cluster.kill("n4")


def test_the_admin_changes_membership_and_records_it(api_settings, coordination_cluster):
    cluster: LocalCluster = coordination_cluster
    staff = User.objects.create_user("ops", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="operate_cluster"))
    browser = Client()
    browser.force_login(staff)
    page = browser.get("/admin/coordination/coordination/")
    assert page.status_code == 200 and b'id="members"' in page.content
    host, port = cluster.add_machine("n5")
    cluster.start_node("n5")
    done = browser.post(
        "/admin/coordination/coordination/",
        {"action": "add", "node": "n5", "address": f"{host}:{port}"},
        follow=True,
    )
    assert b"Added n5" in done.content and b'data-member="n5"' in done.content
    refused = browser.post(
        "/admin/coordination/coordination/", {"action": "promote", "node": "n1"}, follow=True
    )
    assert b"Refused" in refused.content
    browser.post("/admin/coordination/coordination/", {"action": "remove", "node": "n5"})
    entries = LogEntry.objects.filter(object_id="member:n5").order_by("id")
    assert [e.change_message for e in entries] == [
        f"Added n5 ({host}:{port}) as a learner.",
        "Removed n5.",
    ]
    viewer = Client()
    viewer.force_login(User.objects.create_user("viewer", is_staff=True))
    assert (
        viewer.post(
            "/admin/coordination/coordination/", {"action": "remove", "node": "n2"}
        ).status_code
        == 403
    )
    cluster.kill("n5")


def test_the_schema_documents_the_membership_endpoints(api_settings):
    paths = test_api._client().get("/api/schema/?format=json").json()["paths"]
    for path in ("", "replace/", "{node}/", "{node}/promote/"):
        assert f"/api/cluster/members/{path}" in paths
