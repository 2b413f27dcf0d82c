"""``coordination.conf``: defaults, precedence (flag > env > COORDINATION > default), conversion
of native and string values, errors that name the key and the variable, the secret lookup; and
the demo's own environment parsing (``syncproject.envconfig``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordination import conf
from coordination.conf import (
    SPEC,
    SettingsError,
    api_request_timeout,
    cluster_secret,
    collect,
    resolve,
)
from syncproject.envconfig import env_bool

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_without_anything() -> None:
    resolved = resolve()
    assert dict(resolved) == {key: spec.default for key, spec in SPEC.items()}
    assert resolved.source("NODE_ID") == conf.DEFAULT
    assert not resolved.is_set("CLUSTER")


def test_a_partial_dict_works_and_keeps_every_other_default() -> None:
    """The fresh-project bug: a dict with one key used to fail with KeyError: 'METRICS_PORT'."""
    resolved = resolve({"CLUSTER": "a=10.0.0.1:7001"})
    assert resolved["CLUSTER"] == "a=10.0.0.1:7001"
    assert resolved["METRICS_PORT"] == 0
    assert resolved.source("CLUSTER") == conf.PROJECT


def test_precedence_flag_over_env_over_dict_over_default() -> None:
    project = {"NODE_ID": "from-dict", "ELECTION_TICKS": 20, "DATA_DIR": "/d"}
    environ = {"RAFTSYNC_NODE_ID": "from-env", "RAFTSYNC_ELECTION_TICKS": "30"}
    resolved = resolve(project, environ, {"NODE_ID": "from-flag", "DATA_DIR": None})
    assert resolved["NODE_ID"] == "from-flag" and resolved.source("NODE_ID") == conf.FLAG
    assert (
        resolved["ELECTION_TICKS"] == 30 and resolved.source("ELECTION_TICKS") == conf.ENVIRONMENT
    )
    assert resolved["DATA_DIR"] == "/d"  # a flag left out (None) does not override
    assert resolved["HEARTBEAT_TICKS"] == 2


def test_native_and_string_values_are_converted() -> None:
    resolved = resolve(
        {"TICK_INTERVAL_MS": "20", "SESSION_TTL": 3, "CLUSTER": {"a": "h1:1", "b": "h2:2"}},
        {"RAFTSYNC_SNAPSHOT_KEEP": " 0 ", "RAFTSYNC_REQUEST_TIMEOUT": "2.5"},
    )
    assert resolved["TICK_INTERVAL_MS"] == 20
    assert resolved["SESSION_TTL"] == 3.0 and isinstance(resolved["SESSION_TTL"], float)
    assert resolved["CLUSTER"] == "a=h1:1,b=h2:2"
    assert resolved["SNAPSHOT_KEEP"] == 0
    assert resolved["REQUEST_TIMEOUT"] == 2.5


@pytest.mark.parametrize(
    ("project", "environ", "expected"),
    [
        ({"TICK_INTERVAL_MS": "ten"}, {}, r'COORDINATION\["TICK_INTERVAL_MS"\] = \'ten\''),
        ({"TICK_INTERVAL_MS": True}, {}, r'COORDINATION\["TICK_INTERVAL_MS"\]'),
        ({}, {"RAFTSYNC_TICK_INTERVAL_MS": "fast"}, r"RAFTSYNC_TICK_INTERVAL_MS='fast'"),
        ({}, {"RAFTSYNC_HEARTBEAT_TICKS": "0"}, r"RAFTSYNC_HEARTBEAT_TICKS"),
        ({"SESSION_TTL": "nan"}, {}, r'COORDINATION\["SESSION_TTL"\]'),
        ({}, {"RAFTSYNC_SESSION_TTL": "-1"}, r"RAFTSYNC_SESSION_TTL"),
        ({"METRICS_PORT": 70000}, {}, r'COORDINATION\["METRICS_PORT"\]'),
        ({"CLUSTER": "n1=h"}, {}, r'COORDINATION\["CLUSTER"\]'),
        ({"STATE_MACHINE": "not a path"}, {}, r'COORDINATION\["STATE_MACHINE"\]'),
        ({"REDIS_URL": "http://x"}, {}, r'COORDINATION\["REDIS_URL"\]'),
        ({"HEARTBEAT_TICKS": 15}, {}, r'COORDINATION\["ELECTION_TICKS"\] \(15\) must be greater'),
        ({"TLS_KEY": "k.pem"}, {}, r'COORDINATION\["TLS_KEY"\] is set but'),
    ],
)
def test_a_bad_value_names_the_key_and_the_variable(project, environ, expected) -> None:
    with pytest.raises(SettingsError, match=expected):
        resolve(project, environ)


def test_unknown_keys_are_errors_with_a_suggestion() -> None:
    _, problems = collect({"TICK_INTERVAL": 10, "CLUSTER_SECRET": "x" * 20})
    assert [(p.code, p.key) for p in problems] == [(conf.UNKNOWN, "TICK_INTERVAL")]
    assert "TICK_INTERVAL_MS" in problems[0].hint


def test_every_problem_is_reported_not_just_the_first() -> None:
    _, problems = collect({"NODE_ID": "", "SNAPSHOT_EVERY": 0})
    assert {p.key for p in problems} == {"NODE_ID", "SNAPSHOT_EVERY"}


def test_a_secret_value_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as info:
        resolve({"CLUSTER_SECRET": 12345678901234567})
    assert "12345678901234567" not in str(info.value) and "(hidden)" in str(info.value)


def test_missing_secret_names_the_setting_and_the_variable(tmp_path: Path) -> None:
    resolved = resolve({"DATA_DIR": str(tmp_path)})
    with pytest.raises(SettingsError) as info:
        cluster_secret(resolved)
    text = str(info.value)
    assert 'COORDINATION["CLUSTER_SECRET"]' in text and "RAFTSYNC_CLUSTER_SECRET" in text


def test_dev_secret_file_is_used_only_in_development(tmp_path: Path) -> None:
    resolved = resolve({"DATA_DIR": str(tmp_path)})
    conf.create_dev_secret(conf.dev_secret_path(resolved))
    generated = (tmp_path / "cluster.secret").read_text().encode()
    assert len(generated) >= conf.MIN_SECRET_BYTES
    assert (tmp_path / "cluster.secret").stat().st_mode & 0o777 == 0o600
    assert cluster_secret(resolved, dev=True) == generated
    with pytest.raises(SettingsError, match="no cluster secret"):
        cluster_secret(resolved, dev=False)


def test_secret_file_and_precedence_between_secret_and_file(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("secret-from-a-file-0123\n")
    both = resolve(
        {"CLUSTER_SECRET": "secret-in-the-dict-0123"}, {"RAFTSYNC_CLUSTER_SECRET_FILE": str(path)}
    )
    assert cluster_secret(both) == b"secret-from-a-file-0123"  # env beats the dict
    tie = resolve({"CLUSTER_SECRET": "secret-in-the-dict-0123", "CLUSTER_SECRET_FILE": str(path)})
    assert cluster_secret(tie) == b"secret-in-the-dict-0123"
    missing = resolve({"CLUSTER_SECRET_FILE": str(tmp_path / "nope")})
    with pytest.raises(SettingsError, match=r'COORDINATION\["CLUSTER_SECRET_FILE"\]'):
        cluster_secret(missing)


def test_settings_doc_lists_every_key_with_its_env_var() -> None:
    """docs/settings.md's key table mirrors SPEC (the single source of truth)."""
    doc = (ROOT / "docs" / "settings.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| `RAFTSYNC_([A-Z_]+)` \|", doc, re.M)
    assert [key for key, _ in rows] == list(SPEC)
    assert all(key == env for key, env in rows)


def test_unsafe_no_fsync_is_off_unless_clearly_asked_for() -> None:
    assert resolve()["UNSAFE_NO_FSYNC"] is False
    for word, expected in (("1", True), (" TRUE ", True), ("on", True), ("no", False), ("", False)):
        assert resolve({}, {"RAFTSYNC_UNSAFE_NO_FSYNC": word})["UNSAFE_NO_FSYNC"] is expected
    assert resolve({"UNSAFE_NO_FSYNC": True})["UNSAFE_NO_FSYNC"] is True
    for bad in ("maybe", 1, None):
        with pytest.raises(SettingsError, match=r"UNSAFE_NO_FSYNC.*expected true or false"):
            resolve({"UNSAFE_NO_FSYNC": bad})


def test_unsafe_no_fsync_reaches_the_node_config() -> None:
    from coordination.node.runtime import node_config

    secret = b"s" * 32
    assert node_config(resolve(), secret).fsync is True
    assert node_config(resolve({"UNSAFE_NO_FSYNC": "yes"}), secret).fsync is False


def test_env_bool() -> None:
    assert env_bool({"X": "yes"}, "X") is True
    assert env_bool({"X": "0"}, "X") is False
    assert env_bool({}, "X", default=True) is True
    with pytest.raises(ValueError, match="X"):
        env_bool({"X": "maybe"}, "X")


def test_the_api_request_timeout_defaults_to_the_request_timeout() -> None:
    assert api_request_timeout(resolve({"REQUEST_TIMEOUT": 7})) == 7
    assert api_request_timeout(resolve({"REQUEST_TIMEOUT": 7, "API_REQUEST_TIMEOUT": 2})) == 2
    assert api_request_timeout(resolve({}, {"RAFTSYNC_API_REQUEST_TIMEOUT": "0.5"})) == 0.5
    with pytest.raises(SettingsError, match="API_REQUEST_TIMEOUT"):
        resolve({"API_REQUEST_TIMEOUT": -1})
