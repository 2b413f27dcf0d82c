"""App registration for the coordination surface."""

from django.apps import AppConfig


class CoordinationConfig(AppConfig):
    """Registers the coordination app; its state lives in Raft, not in Django's database."""

    name = "coordination"
    verbose_name = "Raft coordination"

    def ready(self) -> None:
        # Every Celery task of the process honours the distributed_lock option (see the module).
        from coordination.celery import lock_option  # noqa: F401
        from coordination.celery import worker as celery_worker

        celery_worker.connect()
