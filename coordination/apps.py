"""App registration for the coordination surface."""

from django.apps import AppConfig


class CoordinationConfig(AppConfig):
    """Registers the coordination app; its state lives in Raft, not in Django's database."""

    name = "coordination"
    # As in our migrations, whatever the project's DEFAULT_AUTO_FIELD (no models.W042 warning).
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Raft coordination"

    def ready(self) -> None:
        # Every Celery task of the process honours the distributed_lock option (see the module).
        from coordination.celery import lock_option  # noqa: F401
        from coordination.celery import worker as celery_worker
        from coordination.checks import register_checks

        celery_worker.connect()
        register_checks()  # `manage.py check` validates COORDINATION, brokers, caches, API
