"""The ``distributed_lock`` task option, on any Celery app and any task base:

    @shared_task(distributed_lock={"key": "report:{customer_id}", "ttl": 30})
    def build_report(customer_id): ...

Celery passes unknown task options through as class attributes and otherwise ignores them, so
without help a task with this option would run with no lock and no error. A coordination plugin
must never fail open, so importing this module (importing ``coordination`` does it: the Django
app, the ``celery`` command through raftsync's ``celery raftsync`` plugin, any raftsync import)
teaches Celery's base ``Task`` two things:

- ``on_bound``, Celery's hook when a task class is registered with an app, wraps the class's
  ``run`` with ``@distributed_lock(**option)``. Every way Celery runs a task ends in ``run``: a
  worker's tracer calls it directly (even past ``__call__``, which the worker replaces with its
  own stack-protected version), ``apply()`` and direct calls through ``__call__``. A key template
  naming something the function does not take raises ``LockKeyError`` right there, when the
  tasks module is imported.
- ``__call__`` (a net for task classes registered before this module was imported) wraps the
  instance's ``run`` on its first call. Celery's tracer treats a base ``__call__`` from another
  module as custom (``mro_lookup``'s ``monkey_patched`` rule, the way instrumentation libraries
  hook tasks), so ``apply()`` calls through it.

Tasks without the option pay one attribute lookup per registration and call. A task with it
takes its lock, or raises (``LockNotAcquired``, ``ClusterUnavailable``...); it never runs
unlocked. ``LockedTask`` remains as an explicit base for code that wants to say so.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from celery import Task

from coordination.celery.decorators import check_key_template, distributed_lock

_wrap_guard = threading.Lock()
_MARK = "_raftsync_lock_option"
_CLASS_WRAPPED = "_raftsync_run_locked"  # in a task class's __dict__ once its run is wrapped


def lock_run(task: Any) -> None:
    """Wrap ``task.run`` with its ``distributed_lock`` option, once (tasks are one instance per
    app). A task without the option is left as it is."""
    options = getattr(task, "distributed_lock", None)
    if not options or task.__dict__.get("_lock_wrapped"):
        return
    if any(klass.__dict__.get(_CLASS_WRAPPED) for klass in type(task).__mro__):
        task._lock_wrapped = True  # wrapped at registration: the next call stops at the top
        return
    with _wrap_guard:
        if not task.__dict__.get("_lock_wrapped"):
            task.run = distributed_lock(**_checked(options, task.name))(task.run)
            task._lock_wrapped = True


def lock_class_run(task_cls: type) -> None:
    """Check the class's own ``distributed_lock`` option and wrap its ``run`` with it (once).
    Raises ``LockKeyError``/``TypeError`` for an unusable option."""
    options = task_cls.__dict__.get("distributed_lock")
    if not options or task_cls.__dict__.get(_CLASS_WRAPPED):
        return
    where = task_cls.__dict__.get("name") or task_cls.__name__
    options = _checked(options, where)
    raw_run = inspect.getattr_static(task_cls, "run")
    with _wrap_guard:
        if task_cls.__dict__.get(_CLASS_WRAPPED):
            return
        if isinstance(raw_run, staticmethod):  # @app.task(...) without bind=True
            wrapped: Any = staticmethod(distributed_lock(**options)(raw_run.__func__))
        else:  # bind=True, or a Task subclass with its own run(self, ...)
            key = options.get("key")
            if not callable(key):  # name the template's fields against run's own arguments
                signature = inspect.signature(raw_run)
                params = list(signature.parameters.values())[1:]
                check_key_template(key, signature.replace(parameters=params), where)
            wrapped = distributed_lock(**options)(raw_run)
        task_cls.run = wrapped  # type: ignore[attr-defined]
        setattr(task_cls, _CLASS_WRAPPED, True)


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
        lock_class_run(cls)
        plain_on_bound(cls, app)

    __call__.__wrapped__ = plain_call  # type: ignore[attr-defined]
    setattr(__call__, _MARK, True)
    Task.__call__ = __call__  # type: ignore[method-assign]
    Task.on_bound = classmethod(on_bound)  # type: ignore[assignment,method-assign]


_teach_celery()
