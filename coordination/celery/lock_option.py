"""The ``distributed_lock`` task option, on any Celery app and any task base:

    @shared_task(distributed_lock={"key": "report:{customer_id}", "ttl": 30})
    def build_report(customer_id): ...

Celery passes unknown task options through as class attributes and otherwise ignores them, so
without help a task with this option would run with no lock and no error. A coordination plugin
must never fail open, so importing this module (the ``coordination`` Django app does it in
``ready()``, and the ``celery`` command does it through raftsync's ``celery raftsync`` plugin)
teaches Celery's base ``Task`` two things:

- ``__call__`` takes the lock: on a task's first call its ``run`` is wrapped with
  ``@distributed_lock(**option)``. Celery's tracer treats a base ``__call__`` that comes from
  another module as custom (``celery.utils.objects.mro_lookup``'s ``monkey_patched`` rule, the
  way instrumentation libraries hook tasks), so workers and ``apply()`` call through it.
- ``on_bound`` (Celery's hook when a task class is registered with an app) checks the option:
  a key template naming something the function does not take raises ``LockKeyError`` there,
  at import of the tasks module, not when a worker first runs the task.

Tasks without the option pay one attribute lookup per call. A task with it takes its lock, or
raises (``LockNotAcquired``, ``ClusterUnavailable``...); it never runs unlocked. ``LockedTask``
remains as an explicit base for code that wants to say so.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from celery import Task

from coordination.decorators import check_key_template, distributed_lock

_wrap_guard = threading.Lock()
_MARK = "_raftsync_lock_option"


def lock_run(task: Any) -> None:
    """Wrap ``task.run`` with its ``distributed_lock`` option, once (tasks are one instance per
    app). A task without the option is left as it is."""
    options = getattr(task, "distributed_lock", None)
    if not options or task.__dict__.get("_lock_wrapped"):
        return
    with _wrap_guard:
        if not task.__dict__.get("_lock_wrapped"):
            task.run = distributed_lock(**_checked(options, task.name))(task.run)
            task._lock_wrapped = True


def check_option(task_cls: type) -> None:
    """Raise ``LockKeyError`` (or ``TypeError``) if the class's ``distributed_lock`` is unusable."""
    options = task_cls.__dict__.get("distributed_lock")
    raw_run = task_cls.__dict__.get("run")
    if not options or raw_run is None:
        return
    options = _checked(options, task_cls.__name__)
    key = options.get("key")
    if callable(key):
        return
    if isinstance(raw_run, staticmethod):  # @app.task(...) without bind=True
        signature = inspect.signature(raw_run.__func__)
    else:  # bind=True, or a Task subclass with its own run(self, ...)
        signature = inspect.signature(raw_run)
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    check_key_template(key, signature, getattr(task_cls, "name", None) or task_cls.__name__)


def _checked(options: Any, where: str) -> dict[str, Any]:
    if not isinstance(options, dict) or "key" not in options:
        raise TypeError(
            f"distributed_lock option of {where} must be a dict of @distributed_lock's "
            f"arguments with at least 'key', not {options!r}"
        )
    return options


class LockedTask(Task):
    """An explicit task base for the option (every task base honours it once this module is
    imported; naming this base makes the dependency visible)::

        @app.task(base=LockedTask, distributed_lock={"key": "report:{customer_id}"})
        def build_report(customer_id): ...
    """

    distributed_lock: dict[str, Any] | None = None


def _teach_celery() -> None:
    """Install the two hooks on Celery's base ``Task`` (idempotent)."""
    if getattr(Task.__call__, _MARK, False):
        return
    plain_call = Task.__call__
    plain_on_bound = Task.on_bound.__func__  # type: ignore[attr-defined]

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock_run(self)
        return plain_call(self, *args, **kwargs)

    def on_bound(cls: type, app: Any) -> None:
        check_option(cls)
        plain_on_bound(cls, app)

    __call__.__wrapped__ = plain_call  # type: ignore[attr-defined]
    setattr(__call__, _MARK, True)
    Task.__call__ = __call__  # type: ignore[method-assign]
    Task.on_bound = classmethod(on_bound)  # type: ignore[assignment,method-assign]


_teach_celery()
