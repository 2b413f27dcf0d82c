"""One test per ``coordination`` system check: ``manage.py check`` with the setting deliberately
wrong fails with the check's id and hint (docs/settings.md has the table)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003"


@pytest.fixture(autouse=True)
def _no_raftsync_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks read RAFTSYNC_* too: start each test from a clean environment."""
    for name in list(os.environ):
        if name.startswith("RAFTSYNC_"):
            monkeypatch.delenv(name)


def _coordination(settings, **values) -> None:
    settings.COORDINATION = {"CLUSTER": CLUSTER, "CLUSTER_SECRET": "s" * 32, **values}


def _fails(check_id: str, *expected: str, level: str = "ERROR") -> str:
    """Run `manage.py check` (in process): it must fail with ``check_id`` and the texts."""
    with pytest.raises(SystemCheckError) as info:
        call_command("check", fail_level=level)
    text = str(info.value)
    assert f"(coordination.{check_id})" in text, text
    for part in expected:
        assert part in text, text
    return text


def test_the_test_settings_pass(settings) -> None:
    call_command("check", fail_level="WARNING")


def test_e001_cluster_unparsable(settings) -> None:
    _coordination(settings, CLUSTER="n1=127.0.0.1")
    _fails("E001", 'COORDINATION["CLUSTER"]', "HINT: CLUSTER:")


def test_e001_cluster_missing_without_debug(settings) -> None:
    settings.COORDINATION = {"CLUSTER_SECRET": "s" * 32}
    _fails("E001", "is not set", "HINT: Set CLUSTER")
    settings.DEBUG = True  # development: the default local cluster is fine
    call_command("check")


def test_e002_no_secret_without_debug(settings, tmp_path: Path) -> None:
    _coordination(settings, CLUSTER_SECRET="", DATA_DIR=str(tmp_path))
    _fails("E002", "RAFTSYNC_CLUSTER_SECRET", 'COORDINATION["CLUSTER_SECRET"]', "openssl rand")
    settings.DEBUG = True  # development: run_cluster generates DATA_DIR/cluster.secret
    call_command("check")


def test_e002_unreadable_secret_file(settings, tmp_path: Path) -> None:
    _coordination(settings, CLUSTER_SECRET="", CLUSTER_SECRET_FILE=str(tmp_path / "missing"))
    _fails("E002", 'COORDINATION["CLUSTER_SECRET_FILE"]', "HINT:")


def test_e003_short_secret(settings) -> None:
    _coordination(settings, CLUSTER_SECRET="short")
    _fails("E003", "5 bytes", "HINT: Generate one")


def test_e004_bad_value_from_the_dict(settings) -> None:
    _coordination(settings, TICK_INTERVAL_MS="ten")
    _fails("E004", "COORDINATION[\"TICK_INTERVAL_MS\"] = 'ten'", "HINT: TICK_INTERVAL_MS:")


def test_e004_bad_value_from_the_environment(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _coordination(settings)
    monkeypatch.setenv("RAFTSYNC_SESSION_TTL", "forever")
    _fails("E004", "RAFTSYNC_SESSION_TTL='forever'", "HINT: SESSION_TTL:")


def test_e004_heartbeat_not_below_election(settings) -> None:
    _coordination(settings, ELECTION_TICKS=2, HEARTBEAT_TICKS=2)
    _fails("E004", "must be greater than", "HINT:")


def test_e005_unknown_key(settings) -> None:
    _coordination(settings, TICK_INTERVAL=10)
    _fails("E005", 'COORDINATION["TICK_INTERVAL"]', "HINT: Did you mean TICK_INTERVAL_MS?")


def test_e006_not_a_dict(settings) -> None:
    settings.COORDINATION = CLUSTER
    _fails("E006", "must be a dict", "HINT:")


def test_e007_broker_outside_the_cluster(settings) -> None:
    _coordination(settings)
    settings.CELERY_BROKER_URL = "raft://127.0.0.1:7001;raft://10.9.9.9:7001"
    _fails("E007", "10.9.9.9:7001", 'HINT: Use a bare "raft://"')
    settings.CELERY_BROKER_URL = "raft://127.0.0.1:7001;raft://127.0.0.1:7002"
    settings.CELERY_RESULT_BACKEND = "raft://elsewhere:7001"
    _fails("E007", "CELERY_RESULT_BACKEND", "elsewhere:7001")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"L1_SIZE": -1}, "L1_SIZE must be an integer >= 0 (0: no L1), got -1"),
        ({"IGNORE_EXCEPTIONS": "yes"}, "IGNORE_EXCEPTIONS must be True or False, got 'yes'"),
        ({"SOCKET_TIMEOUT": 0}, "SOCKET_TIMEOUT must be None or a number of seconds"),
    ],
)
def test_e008_raft_cache_options(settings, options: dict, expected: str) -> None:
    _coordination(settings)
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "coordination": {"BACKEND": "coordination.cache_backend.RaftCache", "OPTIONS": options},
    }
    _fails("E008", expected, "HINT: RaftCache OPTIONS are")


def test_e008_accepts_an_l1_size_of_zero(settings) -> None:
    """0 means no L1 (every read from the cluster); only a negative size is an error."""
    _coordination(settings)
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "coordination": {
            "BACKEND": "coordination.cache_backend.RaftCache",
            "OPTIONS": {"L1_SIZE": 0},
        },
    }
    call_command("check", fail_level="WARNING")


def test_the_projects_schema_class_is_its_own_business(settings) -> None:
    """The API's views declare drf-spectacular's AutoSchema, so a project on DRF's own schema
    class passes (coordination.E010, which demanded the setting, is retired)."""
    _coordination(settings)
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_SCHEMA_CLASS": "rest_framework.schemas.openapi.AutoSchema",
    }
    call_command("check")


def test_e011_metrics_without_prometheus(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from raft_node.host import metrics

    _coordination(settings, METRICS_PORT=9101)
    monkeypatch.setattr(metrics, "CollectorRegistry", None)
    _fails("E011", "prometheus-client", "HINT: pip install raftsync[metrics]")


def test_e012_state_machine_not_importable(settings) -> None:
    _coordination(settings, STATE_MACHINE="no_such_module.Machine")
    _fails("E012", 'COORDINATION["STATE_MACHINE"]', "HINT:")


def test_e013_tls_file_missing(settings, tmp_path: Path) -> None:
    _coordination(settings, TLS_CERT=str(tmp_path / "node.pem"))
    _fails("E013", "no such file", "HINT: Give the path of a PEM file")


def test_e014_redis_url_without_redis(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _coordination(settings, REDIS_URL="redis://127.0.0.1:6379/0")
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    _fails("E014", "redis package", "HINT: pip install raftsync[redis]")


def test_w001_even_cluster(settings) -> None:
    _coordination(settings, CLUSTER="n1=127.0.0.1:7001,n2=127.0.0.1:7002")
    _fails("W001", "2 members", "HINT: Use 3 or 5 nodes.", level="WARNING")


def test_w003_no_fsync(settings) -> None:
    _coordination(settings, UNSAFE_NO_FSYNC=True)
    _fails("W003", "UNSAFE_NO_FSYNC", "HINT: Only for test suites", level="WARNING")
    call_command("check")  # a warning: a test suite (DEBUG off) may still run with it


# -- in a real `manage.py check` process: a non-zero exit, with the id and the hint --------------


def _manage_check(tmp_path: Path, extra_settings: str, env: dict[str, str] | None = None):
    (tmp_path / "check_settings.py").write_text(
        "from syncproject.test_settings import *  # noqa\n" + textwrap.dedent(extra_settings)
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAFTSYNC_")}
    environ.update(
        DJANGO_SETTINGS_MODULE="check_settings",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
        **(env or {}),
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_e009_api_routed_without_drf_spectacular_app(tmp_path: Path) -> None:
    done = _manage_check(
        tmp_path,
        """
        INSTALLED_APPS = [a for a in INSTALLED_APPS if a != "drf_spectacular"]
        """,
    )
    assert done.returncode != 0
    assert "(coordination.E009)" in done.stderr and "drf_spectacular" in done.stderr
    assert "HINT: Add 'drf_spectacular' to INSTALLED_APPS" in done.stderr


def test_a_bad_environment_variable_fails_manage_check(tmp_path: Path) -> None:
    done = _manage_check(tmp_path, "", {"RAFTSYNC_TICK_INTERVAL_MS": "ten"})
    assert done.returncode != 0
    assert "(coordination.E004) RAFTSYNC_TICK_INTERVAL_MS='ten'" in done.stderr
    assert "HINT: TICK_INTERVAL_MS:" in done.stderr
    assert "Traceback" not in done.stderr
