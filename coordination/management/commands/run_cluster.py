"""``manage.py run_cluster``: a local development cluster in one terminal, in any project.

Starts ``--nodes`` ``run_raft_node`` processes on consecutive ports (data under ``DATA_DIR``), the
Django web server (``--web``, default 127.0.0.1:8000, migrated first) and a Celery worker of the
project's app (``--celery-app``, default: the settings module's package, ``mysite.settings`` ->
``mysite``). Children run with the same ``manage.py`` this command was started with (or
``python -m django``) and the same ``DJANGO_SETTINGS_MODULE``.

All of them use the cluster started here: it is handed down as ``RAFTSYNC_CLUSTER`` and
``RAFTSYNC_CLUSTER_SECRET``, which win over the project's ``COORDINATION`` (docs/settings.md), and
a bare ``raft://`` broker means that cluster. The system checks run afterwards, in this process,
with the same environment: a broker that names other nodes (``coordination.E007``) stops it
before anything starts talking to the wrong cluster.

The secret is the configured one; without one, and only with DEBUG on, a development secret is
generated once in ``DATA_DIR/cluster.secret`` (every local command finds it there). A process
that dies is restarted with backoff; Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from coordination import conf
from coordination.node import node_settings
from coordination.node.devcluster import Child, StopFlag, stop_all, supervise


class Command(BaseCommand):
    help = "Run a local N-node raftsync cluster, web server and worker; Ctrl-C stops all."
    # Checked in handle(), once the cluster this command starts is in the environment.
    requires_system_checks: list[str] = []  # noqa: RUF012 - Django's own attribute

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--nodes", type=int, default=3)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--base-port", type=int, default=7001)
        parser.add_argument("--data-dir", default=None, help="default: DATA_DIR")
        parser.add_argument(
            "--metrics-base-port",
            type=int,
            default=0,
            help="node i serves /metrics on this port + i - 1 (0 = off)",
        )
        parser.add_argument("--no-restart", action="store_true")
        parser.add_argument(
            "--web", default="127.0.0.1:8000", help="address of the web server; 'off' to run none"
        )
        parser.add_argument("--no-worker", action="store_true", help="run no Celery worker")
        parser.add_argument(
            "--celery-app",
            default=None,
            help="the project's Celery app for `celery -A` (default: the settings package)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            base = node_settings.load()
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        data_dir = Path(opts["data_dir"] or base["DATA_DIR"]).resolve()
        ids = [f"n{i}" for i in range(1, opts["nodes"] + 1)]
        cluster = ",".join(f"{n}={opts['host']}:{opts['base_port'] + i}" for i, n in enumerate(ids))
        secret = _secret(base, data_dir)
        # This process and every child now agree on the cluster (env wins over COORDINATION).
        os.environ.update(
            {
                conf.env_name("CLUSTER"): cluster,
                conf.env_name("CLUSTER_SECRET"): secret,
                conf.env_name("CLUSTER_SECRET_FILE"): "",
                conf.env_name("DATA_DIR"): str(data_dir),
            }
        )
        self.check(display_num_errors=False)
        manage, env = _project_command(), _child_env()
        children = []
        for i, node in enumerate(ids):
            argv = [*manage, "run_raft_node", "--id", node, "--data-dir", str(data_dir / node)]
            if opts["metrics_base_port"]:
                argv += ["--metrics-port", str(opts["metrics_base_port"] + i)]
            children.append(Child(node, argv, env))
        children += self._services(opts, manage, env)
        self.stdout.write(f"starting {len(ids)} nodes: {cluster}")
        self.stdout.write(f"data in {data_dir}; Ctrl-C stops all")
        stop = StopFlag()
        for c in children:
            c.start()
        try:
            supervise(
                children,
                cluster,
                secret,
                stop,
                restart=not opts["no_restart"],
                say=self.stdout.write,
                complain=self.stderr.write,
            )
        finally:
            stop_all(children)

    def _services(
        self, opts: dict[str, Any], manage: list[str], env: dict[str, str]
    ) -> list[Child]:
        """The web server and the Celery worker, both on this cluster."""
        services = []
        app = None if opts["no_worker"] else _celery_app(opts["celery_app"])
        if opts["web"] != "off":
            subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True)
            services.append(Child("web", [*manage, "runserver", opts["web"], "--noreload"], env))
            self.stdout.write(f"web: http://{opts['web']}/admin/")
        if app is not None:
            argv = [sys.executable, "-m", "celery", "-A", app, "worker"]
            argv += ["--pool", "threads", "--concurrency", "2", "--loglevel", "INFO"]
            services.append(Child("worker", argv, env))
            broker = getattr(settings, "CELERY_BROKER_URL", None)
            self.stdout.write(f"celery worker: -A {app}, broker {broker or '(the app default)'}")
        return services


def _secret(base: conf.Resolved, data_dir: Path) -> str:
    """The configured secret; else, with DEBUG, the development one (generated once)."""
    try:
        return conf.cluster_secret(base, dev=False).decode()
    except conf.SettingsError as exc:
        if exc.problems[0].code != conf.NO_SECRET:
            raise CommandError(str(exc)) from exc
        if not node_settings.dev_mode():
            raise CommandError(
                f"{conf.NO_SECRET_MESSAGE}; run_cluster generates a development secret only "
                "with DEBUG on"
            ) from exc
    path = data_dir / conf.DEV_SECRET_FILE
    conf.create_dev_secret(path)
    return path.read_text().strip()


def _project_command() -> list[str]:
    """How to run a management command of this project: the same manage.py, or python -m
    django (django-admin, call_command) with DJANGO_SETTINGS_MODULE in the environment."""
    script = sys.argv[0] if sys.argv else ""
    if script.endswith(".py") and Path(script).name != "__main__.py" and Path(script).is_file():
        return [sys.executable, str(Path(script).resolve())]
    return [sys.executable, "-m", "django"]


def _settings_module() -> str:
    return getattr(settings, "SETTINGS_MODULE", None) or os.environ["DJANGO_SETTINGS_MODULE"]


def _child_env() -> dict[str, str]:
    """This environment, plus the settings module and the project's root on the import path
    (a worker started by `python -m celery` has only its working directory there)."""
    module = _settings_module()
    top = importlib.util.find_spec(module.split(".")[0])
    paths = [os.environ.get("PYTHONPATH", "")]
    if top is not None and top.origin:
        origin = Path(top.origin)
        root = origin.parent.parent if origin.name == "__init__.py" else origin.parent
        paths.insert(0, str(root))
    pythonpath = os.pathsep.join(p for p in paths if p)
    return {**os.environ, "DJANGO_SETTINGS_MODULE": module, "PYTHONPATH": pythonpath}


def _celery_app(given: str | None) -> str:
    module = _settings_module()
    app = given or module.rpartition(".")[0]
    if not app:
        raise CommandError(
            f"cannot derive the Celery app from DJANGO_SETTINGS_MODULE={module!r}: "
            "pass --celery-app, or --no-worker"
        )
    if importlib.util.find_spec(app.split(":")[0]) is None:
        raise CommandError(f"no Celery app module {app!r}: pass --celery-app or --no-worker")
    return app
