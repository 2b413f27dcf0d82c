"""``run_cluster`` in a project that is not ``syncproject``: a minimal Django project generated
here, with its own settings module and Celery app, and a ``COORDINATION`` naming some other
cluster. The nodes, the worker and the project's local commands must all use the cluster
``run_cluster`` started (it used to run ``celery -A syncproject`` and ``BASE_DIR/manage.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from celery import Celery

from coordination.client import Coordinator
from raft_node.testing.launcher import free_port

pytestmark = [pytest.mark.realprocess]

PROJECT = "acme_site"

SETTINGS = """
    from pathlib import Path

    BASE_DIR = Path(__file__).resolve().parent.parent
    SECRET_KEY = "acme-tests-only"
    DEBUG = True
    INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "coordination"]
    DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db"}}}}
    USE_TZ = True
    # Some other cluster: nothing listens there. run_cluster must override it for its children.
    COORDINATION = {{"CLUSTER": "{other}", "DATA_DIR": str(BASE_DIR / "var")}}
    CELERY_BROKER_URL = "raft://"
    CELERY_TASK_ACKS_LATE = True
    CELERY_WORKER_PREFETCH_MULTIPLIER = 1
"""

CELERY = """
    import os

    from celery import Celery

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "acme_site.settings")
    app = Celery("acme_site")
    app.config_from_object("django.conf:settings", namespace="CELERY")


    @app.task(name="acme.add")
    def add(x, y):
        return x + y
"""

MANAGE = """
    import os
    import sys

    if __name__ == "__main__":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "acme_site.settings")
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
"""


def _project(root: Path) -> Path:
    other = ",".join(f"o{i}=127.0.0.1:{free_port()}" for i in (1, 2, 3))
    package = root / "proj" / PROJECT
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .celery import app as celery_app\n")
    (package / "settings.py").write_text(textwrap.dedent(SETTINGS.format(other=other)))
    (package / "celery.py").write_text(textwrap.dedent(CELERY))
    (root / "proj" / "manage.py").write_text(textwrap.dedent(MANAGE))
    return root / "proj"


def _free_run(count: int) -> int:
    for _ in range(50):
        base = free_port()
        if base + count < 65000 and all(_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def test_run_cluster_in_another_project_points_nodes_and_worker_at_its_cluster(tmp_path: Path):
    proj = _project(tmp_path)
    base = _free_run(3)
    addrs = [f"127.0.0.1:{base + i}" for i in range(3)]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAFTSYNC_") and k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")
    }
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        # Started from another directory: the worker must still import acme_site.
        argv = ["run_cluster", "--base-port", str(base), "--web", "off"]
        proc = subprocess.Popen(
            [sys.executable, str(proj / "manage.py"), *argv],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        secret_file = proj / "var" / "cluster.secret"  # DEBUG: a development secret
        secret = _wait_for(lambda: secret_file.read_text().strip(), 15, "the dev secret")
        with Coordinator(addrs, secret, timeout=10) as coord:
            workers = _wait_for(
                lambda: [s for s in coord.sessions() if s["label"].startswith("celery@")],
                25,
                f"the worker's session on the started cluster; log: {log.read_text()[-3000:]}",
            )
        assert len(workers) == 1
        # A task sent through the started cluster runs on the project's worker.
        sender = Celery("sender", broker=";".join(f"raft://{a}" for a in addrs))
        sender.conf.broker_transport_options = {"secret": secret}
        task_id = sender.send_task("acme.add", args=(2, 3)).id
        _wait_for(lambda: f"{task_id}] succeeded" in log.read_text(), 20, "the task to run")
        # A local command of the project finds the dev secret and the cluster (env given).
        status = subprocess.run(
            [sys.executable, str(proj / "manage.py"), "raft_status", "--json"],
            cwd=proj,
            env={**env, "RAFTSYNC_CLUSTER": ",".join(f"n{i + 1}={a}" for i, a in enumerate(addrs))},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["leader"] in ("n1", "n2", "n3")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "-A acme_site" in text and "Traceback" not in text
    assert "System check identified some issues" not in text  # a fresh project checks clean
