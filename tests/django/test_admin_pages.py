"""The admin's live cluster pages without a cluster or a browser: who gets in, what refuses
before the cluster is asked, how an unreachable cluster looks, and the display helpers. The
pages with a real cluster, in a real browser, are in tests/realprocess/test_admin_browser.py."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from coordination import inspection
from coordination.shared_coordinator import reset_coordinator
from coordination.templatetags.raftsync_admin import ms, percent
from raft_node.testing.launcher import free_port

BASE = "/admin/coordination/coordination/"
PAGES = [
    "",
    "sessions/",
    "locks/",
    "queues/",
    "queues/a/b/",
    "cache/",
    "ratelimits/",
    "once/",
    "elections/",
]
RELEASE = {"lock": "once:k", "session": "7", "owner": "task-1"}


@pytest.fixture
def dead_cluster(settings):
    """Settings naming three ports nobody listens on."""
    settings.COORDINATION = {
        **settings.COORDINATION,
        "CLUSTER": ",".join(f"n{i}=127.0.0.1:{free_port()}" for i in (1, 2, 3)),
        "CLUSTER_SECRET": "nobody-listens",
        "REQUEST_TIMEOUT": 0.5,
    }
    reset_coordinator()
    yield
    reset_coordinator()


def _client(**flags: bool) -> Client:
    client = Client()
    client.force_login(User.objects.create_user(f"u{User.objects.count()}", **flags))
    return client


@pytest.mark.django_db
def test_only_staff_get_in():
    for client in (Client(), _client()):  # anonymous, then logged in but not staff
        for page in PAGES:
            response = client.get(BASE + page)
            assert response.status_code == 302, page
            assert response["Location"].startswith("/admin/login/?next="), page
        assert client.post(BASE + "queues/q/", {"action": "purge"}).status_code == 302
        assert client.post(BASE + "once/", RELEASE).status_code == 302


@pytest.mark.django_db
def test_operator_actions_are_refused_before_the_cluster_is_asked(dead_cluster):
    staff = _client(is_staff=True)
    for action in ("purge", "purge_dead", "requeue_dead"):
        assert staff.post(BASE + "queues/q/", {"action": action}).status_code == 403
    assert staff.post(BASE + "once/", RELEASE).status_code == 403


@pytest.mark.django_db
def test_only_once_locks_can_be_released_and_nothing_is_recorded_for_a_refusal(dead_cluster):
    """The release button names a ``once:`` lock, its session and task id: anything else is
    refused before the cluster is asked (the admin is no back door to release any lock)."""
    from django.contrib.admin.models import LogEntry

    root = _client(is_staff=True, is_superuser=True)
    for form in ({**RELEASE, "lock": "election:beat"}, {**RELEASE, "session": "x"}):
        done = root.post(BASE + "once/", form, follow=True)
        assert b"Only a held once: lock can be released here." in done.content
    done = root.post(BASE + "once/", RELEASE, follow=True)  # a dead cluster: says so
    assert b"Not done, the cluster is unavailable" in done.content
    assert LogEntry.objects.count() == 0


@pytest.mark.django_db
def test_the_index_leads_to_the_pages():
    staff = _client(is_staff=True)
    index = staff.get("/admin/").content.decode()
    assert f'href="{BASE}"' in index and ">Cluster<" in index
    app = staff.get("/admin/coordination/").content.decode()
    for page in ("", "sessions/", "locks/", "queues/", "cache/", "ratelimits/", "once/"):
        assert f'href="{BASE}{page}"' in app
    assert f'href="{BASE}elections/"' in app


@pytest.mark.django_db
def test_an_unreachable_cluster_is_a_503_page_that_says_so(dead_cluster):
    staff = _client(is_staff=True, is_superuser=True)
    for page in PAGES[1:]:
        response = staff.get(BASE + page)
        assert response.status_code == 503, page
        assert b"The cluster did not answer" in response.content, page
    nodes = staff.get(BASE)
    assert nodes.status_code == 200  # every node is listed, each with its error
    assert nodes.content.count(b"unreachable: ") == 3
    # An action against it reports the failure instead of pretending it ran.
    done = staff.post(BASE + "queues/q/", {"action": "purge"}, follow=True)
    assert b"Not done, the cluster is unavailable" in done.content


@pytest.mark.django_db
def test_missing_cluster_settings_are_a_503_page_too(settings):
    settings.COORDINATION = {**settings.COORDINATION, "CLUSTER_SECRET": "", "DATA_DIR": "/nowhere"}
    reset_coordinator()
    try:
        staff = _client(is_staff=True)
        for page in ("", "locks/"):
            response = staff.get(BASE + page)
            assert response.status_code == 503
            assert b"no cluster secret" in response.content
    finally:
        reset_coordinator()


def test_display_helpers():
    assert [ms(v) for v in (None, 0, 999, 1500, 119_999, 600_000, 7_200_000)] == [
        "—",
        "0 ms",
        "999 ms",
        "1.5 s",
        "120.0 s",
        "10 min",
        "2.0 h",
    ]
    # A field a node has not reported yet renders as '' in a template: unknown, not a 500.
    assert (ms(""), ms("soon")) == ("—", "—")
    assert (percent(None), percent(0.5), percent(1 / 3)) == ("—", "50.0 %", "33.3 %")
    assert inspection.preview(b"short") == "short"
    assert inspection.preview(b"\xff ok") == "\ufffd ok"
    long = inspection.preview(b"x" * 1000)
    assert long == "x" * inspection.PREVIEW_CHARS + "…"
    rows = [{"expires_ms": 9_000, "expires_in_ms": 4_000}]
    assert inspection.log_now(rows) == 5_000 and inspection.log_now([]) is None


@pytest.mark.django_db
def test_the_nodes_page_warns_of_a_node_without_fsync(monkeypatch: pytest.MonkeyPatch):
    """A node started with UNSAFE_NO_FSYNC says so in its status; the page says it in red."""
    row = {"id": "n1", "address": "127.0.0.1:7001", "role": "leader", "term": 2, "commit": 5}
    row |= {"applied": 5, "last_index": 5, "snapshot_index": 0, "last_contact_ms": None}
    nodes = [{**row, "fsync": True}, {**row, "id": "n2", "role": "follower", "fsync": False}]
    monkeypatch.setattr(inspection, "cluster", lambda: {"leader": "n1", "nodes": nodes})
    monkeypatch.setattr(inspection, "membership", lambda coordinator: None)
    page = _client(is_staff=True).get(BASE).content.decode()
    assert 'data-unsafe-no-fsync="n2"' in page
    assert 'data-unsafe-no-fsync="n1"' not in page
    assert "fsync is off on n2 (UNSAFE_NO_FSYNC)" in page
