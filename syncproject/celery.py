"""Celery application, configured from Django settings (``CELERY_*`` names)."""

from __future__ import annotations

import os

from celery import Celery

from coordination.celery.transport import register

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncproject.settings")
register()  # CELERY_BROKER_URL = "raft://host:port;raft://host:port;..." (the replicated queue)

# Every task may take `distributed_lock={...}` as a task option (coordination.decorators).
app = Celery("syncproject", task_cls="coordination.decorators:LockedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
