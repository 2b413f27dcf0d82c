"""The admin's recipe pages in a real browser against a real 3-node cluster: **Once keys** and
**Elections** (the fixtures and helpers are test_admin_browser.py's).

What the pages must show is made for real: ``@once`` tasks sent through the ``raft://``
transport (one left queued, one delivered to a consumer's session), an ``@once`` task sent on a
non-``raft://`` broker (``memory://``: the fallback lock ``once:<key>``), two ``celery beat``
processes on ``ElectedScheduler`` (one active, one standing by), and an ordinary election with
a leader and a waiting candidate. Each page is checked against what the cluster says, then the
cluster is changed (the active beat stopped, the fallback key released from the page) and the
page must follow.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from django.contrib.admin.models import LogEntry

from coordination.celery.once import once
from coordination.client import Coordinator
from coordination.exceptions import RaftError
from raft_node.testing.launcher import LocalCluster
from tests.realprocess import test_admin_browser as ab
from tests.realprocess import test_celery_worker as cw
from tests.realprocess.test_celery_beat import _beat

pytestmark = ab.pytestmark
# The browser test's fixtures, used here by name.
browser, cluster_settings, coord, users = ab.browser, ab.cluster_settings, ab.coord, ab.users
BEAT_ELECTION = "celery-beat.raft-beat"  # the default for celery_beat_app's app ("raft-beat")
ONCE_QUEUE = "adm-once"


@pytest.fixture
def beats(coordination_cluster: LocalCluster, coord: Coordinator, tmp_path: Path) -> Iterator[Any]:
    """Two real ``celery beat`` processes in one election: which pid leads, which stands by."""
    markers = tmp_path / "markers"
    markers.mkdir()
    procs = [_beat(coordination_cluster, markers, tmp_path, n, queue="adm-beatq") for n in (1, 2)]
    election = coord.election(BEAT_ELECTION)
    try:
        ab._wait_for(
            lambda: (
                election.leader() is not None
                and len(coord.inspect_lock("election:" + BEAT_ELECTION)["waiters"]) == 1
            ),
            "one beat elected and the other standing by",
            timeout=60,
        )
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def reports_election(coord: Coordinator) -> Iterator[dict[str, Any]]:
    """Election ``adm-reports``: led by ``report-host-1``, ``report-host-2`` waiting."""
    leader_session = coord.session(30, label="adm-report-1")
    candidate_session = coord.session(30, label="adm-report-2")
    leadership = coord.election("adm-reports", session=leader_session).campaign("report-host-1")
    assert leadership is not None

    def campaign() -> None:
        with contextlib.suppress(RaftError):  # its session closes under it at the end
            coord.election("adm-reports", session=candidate_session).campaign(
                "report-host-2", wait=60
            )

    thread = threading.Thread(target=campaign, daemon=True)
    thread.start()
    try:
        ab._wait_for(
            lambda: coord.inspect_lock("election:adm-reports")["waiters"], "the candidate to wait"
        )
        yield {
            "token": leadership.token,
            "leader_session": leader_session.id,
            "candidate_session": candidate_session.id,
        }
    finally:
        for session in (leader_session, candidate_session):
            session.close()
        thread.join(10)


@pytest.fixture
def once_tasks(coordination_cluster: LocalCluster, coord: Coordinator) -> Iterator[dict[str, Any]]:
    """Two ``@once`` tasks queued on ``raft://`` (the first then delivered to a consumer
    session), and one sent on ``memory://`` (held by the fallback lock)."""
    app = cw._producer(coordination_cluster, "adm-once-app")
    app.conf.task_default_queue = ONCE_QUEUE

    @once(key="adm-report:{customer}")
    @app.task(name="adm.report", shared=False)
    def report(customer: str) -> None:
        raise AssertionError("never runs: no worker")

    other = Celery("adm-once-memory", broker="memory://", set_as_current=False)

    @once(key="adm-export:{customer}", coordinator=coord)
    @other.task(name="adm.export", shared=False)
    def export(customer: str) -> None:
        raise AssertionError("never runs: no worker")

    consumer = coord.session(30, label="adm-once-worker")
    try:
        delivered, queued = report.delay("c1"), report.delay("c2")
        assert report.delay("c2").id == queued.id  # the key is held: a duplicate is not queued
        message = coord.queue(ONCE_QUEUE).get(session=consumer, visibility=None)
        assert message is not None
        fallback = export.delay("c3")
        yield {
            "delivered": delivered.id,
            "queued": queued.id,
            "message": message,
            "consumer": consumer.id,
            "fallback": fallback.id,
            "fallback_session": coord.default_session.id,
        }
    finally:
        consumer.close()
        with contextlib.suppress(RaftError):
            coord.queue(ONCE_QUEUE).purge()


def test_elections_page_shows_leaders_candidates_and_the_active_beat(
    live_server, cluster_settings, users, browser, coord, beats, reports_election
):
    page = ab._login(browser, live_server.url, "root")
    page.goto(f"{live_server.url}/admin/coordination/")
    ab._navigate(page, "#raftsync-pages >> text=Elections")
    assert page.url.endswith(f"{ab.PAGES}elections/")

    # The beat election: first, marked, its leader one of the two beats, the other waiting.
    beat_row = f"tr[data-election='{BEAT_ELECTION}']"
    leader = coord.election(BEAT_ELECTION).leader()
    assert leader is not None
    pids = {proc.pid for proc in beats}
    active_pid = int(leader.value.rsplit(":", 1)[1])
    assert active_pid in pids
    assert page.locator("#elections tbody tr").first.get_attribute("data-election") == (
        BEAT_ELECTION
    )
    assert "raftsync-beat" in (page.locator(beat_row).get_attribute("class") or "")
    assert "celery beat" in page.locator(f"{beat_row} td").first.inner_text()
    assert ab._cell(page, beat_row, "leader") == f"{leader.value} (active beat)"
    assert ab._cell(page, beat_row, "token") == str(leader.token)
    assert ab._cell(page, beat_row, "session").startswith(f"session {leader.session}, beat-")
    standby = page.locator(f"{beat_row} li.candidate")
    assert standby.count() == 1
    (standby_pid,) = pids - {active_pid}
    assert f":{standby_pid}," in standby.inner_text()

    # An ordinary election: not marked, its leader, token, session label and candidate.
    row = "tr[data-election='adm-reports']"
    assert "raftsync-beat" not in (page.locator(row).get_attribute("class") or "")
    assert ab._cell(page, row, "leader") == "report-host-1"
    assert ab._cell(page, row, "token") == str(reports_election["token"])
    assert ab._cell(page, row, "session") == (
        f"session {reports_election['leader_session']}, adm-report-1"
    )
    candidate = page.locator(f"{row} li.candidate")
    assert candidate.get_attribute("data-session") == str(reports_election["candidate_session"])
    assert candidate.inner_text().startswith("report-host-2, session ")
    ab._shot(page, "elections")

    # The active beat stops (it resigns on the way out): the page shows the standby leading.
    (active,) = [proc for proc in beats if proc.pid == active_pid]
    active.send_signal(signal.SIGTERM)
    ab._wait_for(
        lambda: (
            (now := coord.election(BEAT_ELECTION).leader()) is not None
            and now.value.endswith(f":{standby_pid}")
        ),
        "the standby beat to take over",
        timeout=30,
    )
    page.reload()
    new_leader = coord.election(BEAT_ELECTION).leader()
    assert new_leader is not None and new_leader.token > leader.token
    assert ab._cell(page, beat_row, "leader") == f"{new_leader.value} (active beat)"
    assert ab._cell(page, beat_row, "token") == str(new_leader.token)
    assert page.locator(f"{beat_row} li.candidate").count() == 0
    page.fill("#prefix", "adm-")
    ab._navigate(page, "input[value=Filter]")
    assert page.locator("#elections tbody tr").count() == 1


def test_once_keys_page_shows_held_keys_and_releases_a_stuck_fallback_lock(
    live_server, cluster_settings, users, browser, coord, once_tasks
):
    page = ab._login(browser, live_server.url, "root")
    page.goto(f"{live_server.url}/admin/coordination/")
    ab._navigate(page, "#raftsync-pages >> text=Once keys")
    assert page.url.endswith(f"{ab.PAGES}once/")

    # raft://: the delivered task's key, with the consumer's session, and the queued one's.
    delivered = "#once-held tr[data-key='adm-report:c1']"
    assert page.locator(delivered).get_attribute("data-queue") == ONCE_QUEUE
    assert ab._cell(page, delivered, "message") == str(once_tasks["message"].id)
    assert ab._cell(page, delivered, "task") == once_tasks["delivered"]
    assert ab._cell(page, delivered, "state") == "delivered"
    assert ab._cell(page, delivered, "deliveries") == "1"
    assert ab._cell(page, delivered, "session") == (
        f"session {once_tasks['consumer']}, adm-once-worker, held while the session lives"
    )
    queued = "#once-held tr[data-key='adm-report:c2']"
    assert ab._cell(page, queued, "task") == once_tasks["queued"]
    assert ab._cell(page, queued, "state") == "queued"
    assert ab._cell(page, queued, "deliveries") == "0"
    assert ab._cell(page, queued, "session") == "—"

    # The fallback lock of the memory:// send: its task id, producer session and token.
    fallback = "#once-fallback tr[data-key='adm-export:c3']"
    holder = coord.inspect_lock("once:adm-export:c3")["holders"][0]
    assert ab._cell(page, fallback, "task") == once_tasks["fallback"] == holder["owner"]
    assert ab._cell(page, fallback, "session").startswith(f"session {holder['session']}")
    assert ab._cell(page, fallback, "token") == str(holder["token"])
    ab._shot(page, "once")

    # The prefix narrows both tables.
    page.fill("#prefix", "adm-report:c2")
    ab._navigate(page, "input[value=Filter]")
    assert page.locator("#once-held tbody tr[data-key]").count() == 1
    assert page.locator("#once-fallback tbody tr[data-key]").count() == 0

    # Staff without operate_cluster see the keys but no button.
    viewer = ab._login(browser, live_server.url, "viewer")
    viewer.goto(f"{live_server.url}{ab.PAGES}once/")
    assert viewer.locator(fallback).count() == 1
    assert viewer.locator("#no-operate").is_visible()
    assert viewer.locator("input[value=Release]").count() == 0

    # Release the fallback key (a confirm first): freed in the cluster, recorded in history.
    page.goto(f"{live_server.url}{ab.PAGES}once/")
    page.once("dialog", lambda dialog: dialog.accept())
    ab._navigate(page, f"{fallback} input[value=Release]")
    assert "Released once key adm-export:c3" in page.locator(".messagelist").inner_text()
    assert coord.inspect_lock("once:adm-export:c3")["holders"] == []
    assert page.locator(fallback).count() == 0
    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.object_id) == ("root", "once:adm-export:c3")
    assert once_tasks["fallback"] in entry.change_message
    page.goto(f"{live_server.url}/admin/")
    assert "once:adm-export:c3" in page.locator("#recent-actions-module").inner_text()

    # Acked, the delivered message frees its key: the page follows the cluster.
    once_tasks["message"].ack()
    page.goto(f"{live_server.url}{ab.PAGES}once/")
    assert page.locator(delivered).count() == 0
    assert page.locator(queued).count() == 1
