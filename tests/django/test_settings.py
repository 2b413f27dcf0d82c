"""``coordination_settings``: env overrides, type conversion and clear errors."""

from __future__ import annotations

import pytest

from syncproject.envconfig import (
    COORDINATION_SPEC,
    DEV_CLUSTER_SECRET,
    coordination_settings,
    env_bool,
    raft_broker_url,
)


def test_defaults_without_environment() -> None:
    conf = coordination_settings({}, debug=False)
    assert conf == {key: spec.default for key, spec in COORDINATION_SPEC.items()}
    assert conf["NODE_ID"] == "n1"
    assert conf["MAX_FRAME_BYTES"] == 4 * 1024 * 1024
    assert conf["SESSION_TTL"] == 10.0


def test_overrides_are_converted_to_the_default_type() -> None:
    conf = coordination_settings(
        {
            "RAFTSYNC_NODE_ID": "n2",
            "RAFTSYNC_ELECTION_TICKS": " 30 ",
            "RAFTSYNC_SESSION_TTL": "2.5",
            "RAFTSYNC_REDIS_URL": "redis://127.0.0.1:6379/0",
        },
        debug=False,
    )
    assert conf["NODE_ID"] == "n2"
    assert conf["ELECTION_TICKS"] == 30
    assert isinstance(conf["ELECTION_TICKS"], int)
    assert conf["SESSION_TTL"] == 2.5
    assert conf["REDIS_URL"] == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RAFTSYNC_TICK_INTERVAL_MS", "fast"),
        ("RAFTSYNC_HEARTBEAT_TICKS", "0"),
        ("RAFTSYNC_SESSION_TTL", "-1"),
        ("RAFTSYNC_SESSION_TTL", "nan"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        coordination_settings({name: value}, debug=False)


def test_cluster_secret_dev_default_only_in_debug() -> None:
    assert coordination_settings({}, debug=True)["CLUSTER_SECRET"] == DEV_CLUSTER_SECRET
    assert coordination_settings({}, debug=False)["CLUSTER_SECRET"] == ""
    assert coordination_settings({"RAFTSYNC_DEBUG": "1"})["CLUSTER_SECRET"] == DEV_CLUSTER_SECRET
    explicit = {"RAFTSYNC_CLUSTER_SECRET": "s3cret"}
    assert coordination_settings(explicit, debug=True)["CLUSTER_SECRET"] == "s3cret"


def test_env_bool() -> None:
    assert env_bool({"X": "yes"}, "X") is True
    assert env_bool({"X": "0"}, "X") is False
    assert env_bool({}, "X", default=True) is True
    with pytest.raises(ValueError, match="X"):
        env_bool({"X": "maybe"}, "X")


def test_celery_broker_defaults_to_every_cluster_member() -> None:
    assert raft_broker_url("n1=10.0.0.1:7001, n2=10.0.0.2:7001,n3=h3:7003") == (
        "raft://10.0.0.1:7001;raft://10.0.0.2:7001;raft://h3:7003"
    )
