"""The Django project boots: system checks pass and Celery reads its config from settings."""

from __future__ import annotations

from django.conf import settings
from django.core.management import call_command


def test_system_check_passes() -> None:
    call_command("check", fail_level="WARNING")


def test_celery_app_uses_django_settings() -> None:
    from syncproject import celery_app

    assert celery_app.main == "syncproject"
    assert celery_app.conf.broker_url == settings.CELERY_BROKER_URL


def test_project_tasks_accept_the_distributed_lock_option() -> None:
    """The app is made as Celery's Django guide writes it (no task_cls): its tasks still call
    through the lock option's ``__call__`` once the coordination app is loaded."""
    from celery.app.trace import task_has_custom

    from syncproject.celery import app

    app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    task = app.tasks["coordination.ping"]
    assert task_has_custom(task, "__call__")  # the tracer calls task(...), not task.run(...)
