"""Elections over the REST API against real node processes: campaign, leader, check, resign,
with sessions by id; 409 for a campaign not won, 400 for a bad name; the OpenAPI schema."""

from __future__ import annotations

import pytest
import test_api

pytestmark = [pytest.mark.realprocess, pytest.mark.django_db]
api_settings = test_api.api_settings  # the fixture: settings naming the module's cluster


def _session(api) -> int:
    return api.post("/api/sessions/", {"ttl": 10}, format="json").json()["session"]


def test_campaign_leader_check_and_resign_over_http(api_settings):
    api = test_api._client("use_primitives")
    a, b = _session(api), _session(api)
    url = "/api/elections/reports/"
    assert api.get(url).json() == {"name": "reports", "leader": None}
    won = api.post(url + "campaign/", {"session": a, "value": "host-a"}, format="json")
    assert won.status_code == 200 and won.json()["elected"] and won.json()["value"] == "host-a"
    first = won.json()["token"]
    lost = api.post(url + "campaign/", {"session": b, "value": "host-b"}, format="json")
    assert lost.status_code == 409 and lost.json()["elected"] is False
    leader = api.get(url).json()["leader"]
    assert (leader["value"], leader["token"], leader["session"]) == ("host-a", first, a)
    assert api.get(f"{url}check/?token={first}").json()["current"] is True
    resigned = api.post(url + "resign/", {"session": a, "value": "host-a"}, format="json")
    assert resigned.status_code == 200
    again = api.post(url + "campaign/", {"session": b, "value": "host-b"}, format="json")
    assert again.status_code == 200 and again.json()["token"] > first  # fenced: tokens grow
    assert api.get(f"{url}check/?token={first}").json()["current"] is False
    assert api.get(url).json()["leader"]["value"] == "host-b"


def test_bad_input_is_a_400_with_a_message(api_settings):
    api = test_api._client("use_primitives")
    a = _session(api)
    response = api.post(f"/api/elections/{'n' * 200}/campaign/", {"session": a}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "limit_exceeded"
    response = api.post("/api/elections/x/campaign/", {"session": a, "wait": -1}, format="json")
    assert response.status_code == 400 and "wait" in response.json()
    assert api.get("/api/elections/x/check/?token=x").status_code == 400


def test_the_schema_documents_the_election_endpoints(api_settings):
    paths = test_api._client().get("/api/schema/?format=json").json()["paths"]
    for suffix in ("", "campaign/", "resign/", "check/"):
        assert f"/api/elections/{{name}}/{suffix}" in paths
