"""The admin's live cluster pages in a real browser: Playwright drives Debian's chromium against
Django's live server, which reads a real 3-node cluster.

The test puts state into the cluster through the Python client (a held lock with a waiter and a
refused deadlock, a queue with messages at several priorities, one in flight and one dead letter,
cache keys read through an L1), then checks that each page shows exactly that, that the requeue
and purge buttons change the cluster, and who may do what. Screenshots of every page go to
``$RAFTSYNC_ARTIFACTS`` (default ``artifacts/screenshots/``).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client

from coordination.client import Coordinator
from coordination.client.cache import Cache, process_stats
from coordination.exceptions import Deadlock, RaftError
from coordination.primitives import commands as c
from coordination.shared_coordinator import reset_coordinator
from raft_node.testing.launcher import LocalCluster, free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("RAFTSYNC_ARTIFACTS") or ROOT / "artifacts" / "screenshots")
PASSWORD = "a-long-test-password-1"
PAGES = "/admin/coordination/coordination/"

pytestmark = [
    pytest.mark.realprocess,  # its own worker: it does not need the others'
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; "
        ".ci/run installs it)",
    ),
]


def _cluster_settings(settings: Any, spec: str, secret: str, **extra: Any) -> None:
    settings.COORDINATION = {
        **settings.COORDINATION,
        "CLUSTER": spec,
        "CLUSTER_SECRET": secret,
        **extra,
    }
    reset_coordinator()


@pytest.fixture
def cluster_settings(coordination_cluster: LocalCluster, settings):
    spec = ",".join(f"{n}={h}:{p}" for n, (h, p) in coordination_cluster.addresses.items())
    _cluster_settings(settings, spec, coordination_cluster.secret)
    yield
    reset_coordinator()


@pytest.fixture
def coord(coordination_cluster: LocalCluster) -> Iterator[Coordinator]:
    with Coordinator(
        list(coordination_cluster.addresses.values()), coordination_cluster.secret
    ) as coordinator:
        yield coordinator


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch):
    # Playwright's sync API keeps an event loop running in this thread, and Django refuses ORM
    # calls (creating users, logins) from a thread with a running loop unless told otherwise.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def users(browser) -> dict[str, User]:
    """A superuser, a staff user without ``operate_cluster``, and a user who is not staff."""
    return {
        "root": User.objects.create_superuser("root", "root@example.com", PASSWORD),
        "viewer": User.objects.create_user("viewer", password=PASSWORD, is_staff=True),
        "plain": User.objects.create_user("plain", password=PASSWORD),
    }


def _login(browser: Any, base: str, username: str) -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    _navigate(page, "input[type=submit]")
    return page


def _navigate(page: Any, selector: str) -> None:
    """Click and wait until the page it leads to has loaded: counting rows right after a bare
    click may count the old page's, or none while the new one loads."""
    with page.expect_navigation():
        page.click(selector)


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"admin-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{path} looks empty"


def _cell(page: Any, row: str, field: str) -> str:
    return page.locator(f"{row} [data-field={field}]").inner_text().strip()


def _wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def scenario(coord: Coordinator) -> Iterator[dict[str, Any]]:
    """Locks, a deadlock, a queue and cache keys, made through the client."""
    holder = coord.session(30, label="adm-holder")
    waiter = coord.session(30, label="adm-waiter")
    worker = coord.session(30, label="adm-worker")
    threads: list[threading.Thread] = []
    try:
        lock_a = coord.lock("adm-a", session=holder, owner="report-job")
        assert lock_a.acquire()
        assert coord.lock("adm-b", session=waiter, owner="sync-job").acquire()

        def wait_for_a() -> None:
            with contextlib.suppress(RaftError):  # the session closes under it at the end
                coord.lock("adm-a", session=waiter, owner="blocked-job", wait=60).acquire()

        threads.append(threading.Thread(target=wait_for_a, daemon=True))
        threads[0].start()
        _wait_for(lambda: coord.inspect_lock("adm-a")["waiters"], "the waiter to queue")
        with pytest.raises(Deadlock) as refused:  # holder waits for b, held by the waiter
            coord.lock("adm-b", session=holder, owner="report-job-2", wait=5).acquire()

        jobs = coord.queue("adm-jobs")
        jobs.declare(max_deliveries=1)
        jobs.put(b"poison: always fails", priority=9)
        poison = jobs.get(session=worker)
        assert poison is not None
        poison.nack(requeue=False)  # dead-lettered
        jobs.put(b"long task", priority=8)
        in_flight = jobs.get(session=worker, visibility=120)
        assert in_flight is not None and in_flight.payload == b"long task"
        for payload, priority in [(b"resize a", 5), (b"resize b", 5), (b"cleanup", 0)]:
            jobs.put(payload, priority=priority)

        answer_version = coord.propose(c.cache_set("adm:answer", b"42", None))
        coord.propose(c.cache_set("adm:ttl", b"soon", 600_000))
        cache = Cache(coord, session=worker)
        try:
            assert cache.get("adm:answer") == b"42"  # L1 miss: a fill that finds the key
            assert cache.get("adm:answer") == b"42"  # L1 hit
            assert cache.get("adm:missing") is None  # L1 miss: a fill that finds nothing
            yield {
                "holder": holder.id,
                "waiter": waiter.id,
                "token": lock_a.token,
                "deadlock": refused.value.message,
                "answer_version": answer_version,
            }
        finally:
            cache.close()
    finally:
        for session in (holder, waiter, worker):
            session.close()
        for thread in threads:
            thread.join(10)


def test_staff_see_live_cluster_state_and_requeue_and_purge(
    live_server, cluster_settings, users, browser, coordination_cluster, coord, scenario
):
    base = live_server.url
    page = _login(browser, base, "root")

    # The admin index leads to the pages: Raft coordination > Cluster.
    page.goto(f"{base}/admin/")
    page.get_by_role("link", name="Cluster", exact=True).first.click()
    page.wait_for_url(f"**{PAGES}")

    # Nodes: every node's role, term, commit/applied, and the leader's view of the others.
    leader = coordination_cluster.leader()
    assert page.locator("#leader").inner_text() == leader
    assert page.locator("#nodes tbody tr").count() == 3
    for node in coordination_cluster.ids:
        row = f"tr[data-node={node}]"
        status = coordination_cluster.status(node)
        assert _cell(page, row, "role") == ("leader" if node == leader else "follower")
        assert int(_cell(page, row, "term")) == status["term"]
        assert int(_cell(page, row, "applied")) > 0
        assert int(_cell(page, row, "commit")) >= int(_cell(page, row, "applied"))
        assert re.fullmatch(r"\d+", _cell(page, row, "lag")), "the leader reports every lag"
    _shot(page, "nodes")

    # Sessions: labels, and what each holds or waits for.
    _navigate(page, "nav.raftsync-tabs >> text=Sessions")
    holder_row = f"tr[data-session='{scenario['holder']}']"
    waiter_row = f"tr[data-session='{scenario['waiter']}']"
    assert _cell(page, holder_row, "label") == "adm-holder"
    assert f"adm-a (exclusive, token {scenario['token']}" in _cell(page, holder_row, "holds")
    assert "adm-a (exclusive, owner blocked-job)" in _cell(page, waiter_row, "waits")
    _shot(page, "sessions")

    # Locks: holder with its fencing token, the waiter, and the refused deadlock.
    _navigate(page, "nav.raftsync-tabs >> text=Locks")
    lock_row = "tr[data-lock='adm-a']"
    holder = page.locator(f"{lock_row} li.holder")
    assert holder.count() == 1
    assert holder.get_attribute("data-session") == str(scenario["holder"])
    assert holder.get_attribute("data-token") == str(scenario["token"])
    assert "report-job" in holder.inner_text()
    waiter = page.locator(f"{lock_row} li.waiter")
    assert waiter.get_attribute("data-session") == str(scenario["waiter"])
    assert "blocked-job" in waiter.inner_text()
    assert scenario["deadlock"] in page.locator("#deadlocks").inner_text()
    _shot(page, "locks")

    # Queues: depth by priority, in flight, dead letters.
    _navigate(page, "nav.raftsync-tabs >> text=Queues")
    row = "tr[data-queue='adm-jobs']"
    assert _cell(page, row, "depth") == "4"  # three ready, one in flight
    assert _cell(page, row, "priorities") == "p5: 2 p0: 1"
    assert _cell(page, row, "in_flight") == "1"
    assert _cell(page, row, "dead_letters") == "1"
    assert page.locator("tr[data-queue='adm-jobs.dlq']").count() == 0  # counted in its queue
    _shot(page, "queues")

    _navigate(page, f"{row} a")
    assert page.locator("#dead-letters").inner_text().count("poison: always fails") == 1
    assert page.locator("#priorities td[data-priority='5']").inner_text() == "2"
    _shot(page, "queue")

    # Requeue: the dead letter goes back to its queue, at its priority.
    _navigate(page, "input[value='Requeue dead letters']")
    assert "Re-queued 1 dead letter(s) into adm-jobs." in page.locator(".messagelist").inner_text()
    stats = coord.queue("adm-jobs").stats()
    assert (stats["dead_letters"], stats["ready"], stats["depth_by_priority"]["9"]) == (0, 4, 1)
    assert page.locator("#priorities td[data-priority='9']").inner_text() == "1"

    # Dead-letter it again, then purge the dead letters (a confirm dialog first).
    again = coord.queue("adm-jobs").get(session=coord.session(30, label="adm-again"))
    assert again is not None and again.payload == b"poison: always fails"
    again.nack(requeue=False)
    again.session.close()
    page.reload()
    page.once("dialog", lambda dialog: dialog.accept())
    _navigate(page, "input[value='Purge dead letters']")
    assert "Purged 1 dead letter(s) of adm-jobs." in page.locator(".messagelist").inner_text()
    assert coord.queue("adm-jobs").stats()["dead_letters"] == 0

    # Purge the queue: ready messages go, the leased one stays with its consumer.
    page.once("dialog", lambda dialog: dialog.accept())
    _navigate(page, "input[value='Purge queue']")
    assert "Purged 3 ready or delayed message(s)" in page.locator(".messagelist").inner_text()
    stats = coord.queue("adm-jobs").stats()
    assert (stats["ready"], stats["in_flight"]) == (0, 1)
    assert _cell(page, "#queue-stats", "in_flight") == "1"
    _shot(page, "queue-after-purge")

    # Cache: keys with versions, and both hit rates.
    _navigate(page, "nav.raftsync-tabs >> text=Cache")
    assert _cell(page, "tr[data-key='adm:answer']", "version") == str(scenario["answer_version"])
    assert page.locator("tr[data-key='adm:ttl']").inner_text().strip().endswith("min")
    fills = "#fill-hit-rate"
    assert (_cell(page, fills, "requests"), _cell(page, fills, "hits")) == ("2", "1")
    assert _cell(page, fills, "rate") == "50.0 %"
    l1 = process_stats()  # the live server runs in this process
    assert l1["hits"] >= 1 and l1["misses"] >= 2  # at least the scenario's reads
    assert _cell(page, "#l1-hit-rate", "hits") == str(l1["hits"])
    assert _cell(page, "#l1-hit-rate", "requests") == str(l1["hits"] + l1["misses"])
    page.fill("#prefix", "adm:t")
    _navigate(page, "input[value=Filter]")
    assert page.locator("#cache-keys tbody tr").count() == 1
    _shot(page, "cache")


def test_operator_actions_need_the_permission_and_pages_need_staff(
    live_server, cluster_settings, users, browser, coord
):
    base = live_server.url
    jobs = coord.queue("adm-perm")
    jobs.put(b"keep me", priority=3)
    url = f"{base}{PAGES}queues/adm-perm/"

    # Staff without operate_cluster: sees the queue, gets no buttons, and a forged POST is 403.
    page = _login(browser, base, "viewer")
    page.goto(url)
    assert page.locator("#no-operate").is_visible()
    assert page.locator("#actions input[type=submit]").count() == 0
    token = next(k["value"] for k in page.context.cookies() if k["name"] == "csrftoken")
    for action in ("purge", "requeue_dead", "purge_dead"):
        refused = page.request.post(
            url, form={"action": action}, headers={"X-CSRFToken": token, "Referer": url}
        )
        assert refused.status == 403, action
    assert jobs.stats()["ready"] == 1
    _shot(page, "queue-without-permission")

    # Given the permission, the same user gets the buttons and they work.
    users["viewer"].user_permissions.add(Permission.objects.get(codename="operate_cluster"))
    page.reload()
    page.once("dialog", lambda dialog: dialog.accept())
    _navigate(page, "input[value='Purge queue']")
    assert "Purged 1 ready" in page.locator(".messagelist").inner_text()
    assert jobs.stats()["ready"] == 0
    recorded = LogEntry.objects.filter(object_id="queue:adm-perm").get()  # the admin's history
    assert recorded.user == users["viewer"] and "Purged 1 ready" in recorded.change_message

    # Not staff: the admin's login form refuses them, and a logged-in session is sent to login.
    page = _login(browser, base, "plain")
    assert "staff account" in page.locator(".errornote").inner_text()
    client = Client()
    client.force_login(users["plain"])
    context = browser.new_context()
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}]
    )
    page = context.new_page()
    for path in ("", "sessions/", "locks/", "queues/", "queues/adm-perm/", "cache/"):
        page.goto(f"{base}{PAGES}{path}")
        assert "/admin/login/" in page.url and "next=" in page.url, path
        assert page.locator("#id_username").is_visible()
    token = next(k["value"] for k in context.cookies() if k["name"] == "csrftoken")
    posted = page.request.post(
        url, form={"action": "purge"}, headers={"X-CSRFToken": token}, max_redirects=0
    )
    assert posted.status == 302 and "/admin/login/" in posted.headers["location"]
    jobs.put(b"still here")
    assert jobs.stats()["ready"] == 1


def test_an_unreachable_cluster_is_a_clear_error_not_a_500(live_server, settings, users, browser):
    dead = ",".join(f"n{i}=127.0.0.1:{free_port()}" for i in (1, 2, 3))
    _cluster_settings(settings, dead, "no-cluster-here", REQUEST_TIMEOUT=1.0)
    try:
        page = _login(browser, live_server.url, "root")
        for path in ("sessions/", "locks/", "queues/", "queues/anything/", "cache/"):
            response = page.goto(f"{live_server.url}{PAGES}{path}")
            assert response is not None and response.status == 503, path
            assert "The cluster did not answer" in page.locator("#cluster-error").inner_text()
        _shot(page, "unreachable")
        response = page.goto(f"{live_server.url}{PAGES}")
        assert response is not None and response.status == 200  # each node's error, per row
        assert page.locator("[data-field=error]").count() == 3
        assert "none" in page.locator("#leader").inner_text()
    finally:
        reset_coordinator()
