"""Celery application, configured from Django settings (``CELERY_*`` names), exactly as Celery's
"First steps with Django" writes it: nothing raftsync-specific is needed here. The ``raft://``
broker and result backend, and the ``distributed_lock`` task option, come with the
``coordination`` app (``INSTALLED_APPS``).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncproject.settings")

app = Celery("syncproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
