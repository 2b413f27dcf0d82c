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
