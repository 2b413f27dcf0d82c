"""Worker hooks: each Celery worker process opens its coordination session when it starts and
closes it when it shuts down.

``@distributed_lock`` takes locks in the running process's session. Opening that session at
start makes a worker visible in the cluster (``manage.py`` admin pages and ``/api/sessions/``)
before its first task, and fails loudly in the log if the cluster is unreachable. Closing it at
a clean shutdown releases anything still held at once, instead of after the session TTL (which
remains the bound for a worker killed with -9).

The hooks use the Django ``COORDINATION`` settings; they are connected when the ``coordination``
app is loaded (``apps.CoordinationConfig.ready``), i.e. in any worker of a Django project with
the app installed. Prefork children get ``worker_process_init``/``worker_process_shutdown``; the
main process (the only one with ``--pool solo`` or ``threads``) gets ``worker_ready`` and
``worker_shutdown``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import signals

from coordination.celery import decorators

log = logging.getLogger("coordination.worker")


def open_worker_session(**_: Any) -> None:
    """Open this process's session (the one ``@distributed_lock`` uses), in the background:
    a cluster that is slow to answer must not hold up the worker's start."""
    threading.Thread(target=_open, daemon=True, name="raftsync-worker-session").start()


def _open() -> None:
    name = f"celery@{socket.gethostname()}-{os.getpid()}"
    try:
        coord = decorators.process_coordinator(name=name)
        session = coord.thread_session()
    except Exception as exc:  # the worker still runs; locks retry when tasks need them
        log.warning("event=worker_session_failed process=%s error=%s", name, exc)
        return
    log.info("event=worker_session_opened process=%s session=%s", name, session.id)


def close_worker_session(**_: Any) -> None:
    """Close the process's sessions: every lock they still hold is released now."""
    if decorators.close_process_coordinator():
        log.info("event=worker_session_closed pid=%s", os.getpid())


def connect() -> None:
    """Connect the hooks (idempotent: Celery signals deduplicate by receiver)."""
    signals.worker_process_init.connect(open_worker_session, weak=False)
    signals.worker_ready.connect(open_worker_session, weak=False)
    signals.worker_process_shutdown.connect(close_worker_session, weak=False)
    signals.worker_shutdown.connect(close_worker_session, weak=False)
