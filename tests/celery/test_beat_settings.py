"""``ElectedScheduler``'s settings and its cluster, without a cluster: the election's TTL and
name from the Celery config or the environment, a name Celery's app name could not be, and the
coordinator following a ``raft://`` broker (not another broker's host)."""

from __future__ import annotations

import pytest
from celery import Celery

from coordination.celery import beat
from coordination.client.election import lock_name


def test_defaults_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAFTSYNC_BEAT_ELECTION_TTL", raising=False)
    monkeypatch.delenv("RAFTSYNC_BEAT_ELECTION_NAME", raising=False)
    app = Celery("my proj/β")
    assert beat.election_ttl(app) == beat.DEFAULT_TTL
    name = beat.election_name(app)
    assert name == "celery-beat.my_proj__"
    assert lock_name(name) == "election:" + name  # a valid election name
    app.conf.beat_election_ttl = 3
    app.conf.beat_election_name = "reports-beat"
    assert (beat.election_ttl(app), beat.election_name(app)) == (3.0, "reports-beat")


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAFTSYNC_BEAT_ELECTION_TTL", "4.5")
    monkeypatch.setenv("RAFTSYNC_BEAT_ELECTION_NAME", "from-env")
    app = Celery("x")
    assert (beat.election_ttl(app), beat.election_name(app)) == (4.5, "from-env")


def test_coordinator_follows_a_raft_broker() -> None:
    app = Celery("x", broker="raft://10.0.0.1:7001;raft://10.0.0.2:7002")
    app.conf.broker_transport_options = {"secret": "s3cret"}
    coord = beat._coordinator(app, 3.0, "beat-test")
    try:
        assert coord.addresses == ["10.0.0.1:7001", "10.0.0.2:7002"]
        assert (coord.secret, coord.session_ttl, coord.name) == (b"s3cret", 3.0, "beat-test")
    finally:
        coord.close()
