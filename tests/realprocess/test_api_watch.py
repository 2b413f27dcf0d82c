"""The change history over the REST API against real node processes: the starting version,
changes after it in order, the long poll, 400 for bad input and the OpenAPI schema."""

from __future__ import annotations

import threading
import time

import pytest
import test_api

from coordination.client import Coordinator
from coordination.primitives import commands

pytestmark = [pytest.mark.realprocess, pytest.mark.django_db]
api_settings = test_api.api_settings  # the fixture: settings naming the module's cluster


def test_changes_after_a_version_then_a_long_poll(api_settings, coordination_cluster):
    api = test_api._client("use_primitives")
    start = api.get("/api/watch/?prefix=hw:")
    assert start.status_code == 200 and start.json()["events"] == []
    version = start.json()["version"]
    for i in range(3):
        assert api.put(f"/api/cache/hw:{i}/", {"value": f"v{i}"}, format="json").status_code < 300
    api.put("/api/cache/elsewhere/", {"value": "x"}, format="json")
    got = api.get(f"/api/watch/?prefix=hw:&since_version={version}").json()
    assert [(e["type"], e["key"], e["value"]) for e in got["events"]] == [
        ("put", f"hw:{i}", f"v{i}") for i in range(3)
    ]
    versions = [e["version"] for e in got["events"]]
    assert versions == sorted(versions) and got["version"] >= versions[-1]
    assert api.get(f"/api/watch/?prefix=hw:&since_version={got['version']}").json()["events"] == []

    cluster = coordination_cluster
    coord = Coordinator(list(cluster.addresses.values()), cluster.secret)

    def write_later() -> None:  # from a client of its own (the test client's DB is not shared)
        time.sleep(0.5)
        coord.propose(commands.cache_delete("hw:1"))

    threading.Thread(target=write_later, daemon=True).start()
    started = time.monotonic()
    polled = api.get(f"/api/watch/?prefix=hw:&since_version={got['version']}&wait=10").json()
    assert time.monotonic() - started < 8
    assert [(e["type"], e["key"]) for e in polled["events"]] == [("delete", "hw:1")]
    assert polled["version"] == polled["events"][-1]["version"]


def test_bad_input_is_a_400_with_a_message(api_settings):
    api = test_api._client("use_primitives")
    for query in ("since_version=-1", "wait=31", "limit=0", "prefix=" + "p" * 201):
        response = api.get(f"/api/watch/?{query}")
        assert response.status_code == 400, query


def test_the_schema_documents_the_watch_endpoint(api_settings):
    paths = test_api._client().get("/api/schema/?format=json").json()["paths"]
    assert "/api/watch/" in paths
    names = {p["name"] for p in paths["/api/watch/"]["get"]["parameters"]}
    assert {"prefix", "since_version", "wait", "limit"} <= names
