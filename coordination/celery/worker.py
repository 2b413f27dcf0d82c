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

Revoke with terminate: Celery kills the pool child running the task (SIGTERM by default, whose
default action ends the child at once: no hook of ours runs there), so the child's session
would keep its locks and semaphore slots until its TTL. The main process gets ``task_revoked``
with ``terminated=True``; it then closes, on the dead child's behalf, the sessions of its own
children that are gone (each child labels its sessions ``celery@host-<main pid>-<child pid>``),
which releases what they held within milliseconds. A child still alive (a terminate signal it
survives) keeps its session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from celery import signals

from coordination.celery import decorators

log = logging.getLogger("coordination.worker")


REAP_WITHIN = 3.0  # seconds the main process watches for the terminated child to be gone
REAP_POLL = 0.02


def open_worker_session(**_: Any) -> None:
    """Open this process's session (the one ``@distributed_lock`` uses), in the background:
    a cluster that is slow to answer must not hold up the worker's start."""
    name = f"celery@{socket.gethostname()}-{os.getpid()}"
    _start_open(name)


def open_child_session(**_: Any) -> None:
    """A prefork child's ``open_worker_session``, labelled with its parent too (module doc)."""
    name = f"{child_label_prefix(os.getppid())}{os.getpid()}"
    _start_open(name)


def child_label_prefix(main_pid: int) -> str:
    return f"celery@{socket.gethostname()}-{main_pid}-"


def _start_open(name: str) -> None:
    decorators.set_process_name(name)  # whoever makes the coordinator first uses the name
    threading.Thread(
        target=_open, args=(name,), daemon=True, name="raftsync-worker-session"
    ).start()


def _open(name: str) -> None:
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


def release_terminated(terminated: bool = False, **_: Any) -> None:
    """``task_revoked``: after a terminate, close the sessions of this worker's dead children
    (module doc), off the consumer's thread."""
    if terminated:
        threading.Thread(target=reap_dead_children, daemon=True, name="raftsync-reap").start()


def reap_dead_children(within: float = REAP_WITHIN) -> list[int]:
    """Close the sessions of this process's children that are gone, watching up to ``within``
    seconds for one to go (the terminated child dies a few milliseconds after the signal);
    returns the sessions closed."""
    from coordination.client import operations as ops
    from coordination.exceptions import SessionExpired, UnknownSession

    prefix = child_label_prefix(os.getpid())
    deadline = time.monotonic() + within
    closed: list[int] = []
    try:
        coord = decorators.process_coordinator()
        while not closed and time.monotonic() < deadline:
            for session in coord.sessions():
                label = session["label"]
                if not label.startswith(prefix) or _alive(label[len(prefix) :]):
                    continue
                with contextlib.suppress(SessionExpired, UnknownSession):
                    coord.run(ops.session_close(session["session"]))
                closed.append(session["session"])
            if not closed:
                time.sleep(REAP_POLL)
    except Exception as exc:  # the sessions still expire at their TTL
        log.warning("event=reap_failed error=%s", exc)
    if closed:
        log.info("event=terminated_child_released sessions=%s", closed)
    return closed


def _alive(pid_text: str) -> bool:
    """Whether the process is running (a zombie, killed but not yet reaped, is not)."""
    try:
        pid = int(pid_text)
    except ValueError:
        return True  # not one of ours
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel (a zombie counts as alive here)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def connect() -> None:
    """Connect the hooks (idempotent: Celery signals deduplicate by receiver)."""
    signals.worker_process_init.connect(open_child_session, weak=False)
    signals.task_revoked.connect(release_terminated, weak=False)
    signals.worker_ready.connect(open_worker_session, weak=False)
    signals.worker_process_shutdown.connect(close_worker_session, weak=False)
    signals.worker_shutdown.connect(close_worker_session, weak=False)
