"""compose.yaml is structurally valid and every command it runs exists with those flags."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from django.core.management import load_command_class

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _manage_args(command: list[str] | str) -> list[str] | None:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] == ["python", "manage.py"]:
        return argv[2:]
    return None


def _check_manage(argv: list[str]) -> None:
    name, *args = argv
    cmd = load_command_class("coordination", name)  # raises if the command does not exist
    cmd.create_parser("manage.py", name).parse_args(args)  # raises SystemExit on bad flags


def test_three_nodes_with_volumes_and_healthchecks():
    services = _compose()["services"]
    nodes = [name for name in services if name.startswith("node")]
    assert len(nodes) == 3
    volumes = set(_compose()["volumes"])
    for name in nodes:
        svc = services[name]
        assert svc["volumes"][0].split(":")[0] in volumes
        assert "RAFTSYNC_CLUSTER_SECRET" in svc["environment"]
        assert _manage_args(svc["healthcheck"]["test"][1:]) is not None


def test_every_manage_command_and_flag_exists():
    checked = 0
    for svc in _compose()["services"].values():
        for command in (svc.get("command"), svc.get("healthcheck", {}).get("test", [None])[1:]):
            if not command:
                continue
            argv = _manage_args(command)
            if argv is not None:
                _check_manage(argv)
                checked += 1
    assert checked >= 6


def test_cluster_setting_names_every_node_service():
    services = _compose()["services"]
    cluster = services["node1"]["environment"]["RAFTSYNC_CLUSTER"]
    hosts = {member.split("=")[1].split(":")[0] for member in cluster.split(",")}
    assert hosts <= set(services)


def test_web_and_worker_services_run_this_project():
    import importlib
    import shutil

    services = _compose()["services"]
    web = " ".join(services["web"]["command"])
    assert "manage.py migrate" in web
    module, _, attr = web.split("gunicorn ", 1)[1].split()[0].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))  # the WSGI application
    assert shutil.which("gunicorn", path=str(ROOT / ".venv" / "bin")) or importlib.import_module(
        "gunicorn"
    )
    worker = services["worker"]
    assert worker["command"][:4] == ["python", "-m", "celery", "-A"]
    app = importlib.import_module(f"{worker['command'][4]}.celery").app
    assert app.main == "syncproject"
    broker = worker["environment"]["RAFTSYNC_CELERY_BROKER_URL"]
    assert broker.startswith("raft://") and broker.count("raft://") == 3


def test_web_and_worker_have_their_own_healthchecks():
    services = _compose()["services"]
    web = " ".join(services["web"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/admin/login/" in web
    worker = services["worker"]["healthcheck"]["test"]
    assert worker[0] == "CMD-SHELL"
    argv = shlex.split(worker[1].replace("$$", "$"))
    assert argv[:5] == ["celery", "-A", "syncproject", "inspect", "ping"]
    assert "--destination" in argv and argv[argv.index("--destination") + 1] == "celery@$HOSTNAME"
