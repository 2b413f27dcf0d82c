"""Celery tasks of the coordination app (autodiscovered)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="coordination.ping")
def ping() -> str:
    """A no-op round trip through the broker: used by health checks and the quick start."""
    return "pong"
