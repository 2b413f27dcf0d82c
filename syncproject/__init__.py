"""raftsync Django project.

The Celery app is imported here so it is configured whenever Django starts, which lets
``@shared_task`` bind to it (as in Celery's "First steps with Django").
"""

from syncproject.celery import app as celery_app

__all__ = ("celery_app",)
