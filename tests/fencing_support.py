"""A model with a ``FencingTokenField`` and throwaway database connections for the fencing tests
(``tests/django/test_fencing.py`` in-process, ``tests/realprocess/fencing_actor.py`` in the
processes of the pause-past-TTL trials). Import it after Django's settings are configured."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

from django.db import connections, models
from django.db.utils import load_backend

from coordination.fencing import FencedQuerySet, FencingTokenField

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


class FencedRow(models.Model):
    """One guarded resource per row (its ``owner`` says who wrote it last)."""

    owner = models.CharField(max_length=40, default="")
    fence_token = FencingTokenField()
    objects = FencedQuerySet.as_manager()

    class Meta:
        app_label = "fencing_tests"  # not an installed app: no migrations, created by hand


def sqlite_settings(path: str) -> dict[str, Any]:
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": path}


def postgres_settings(name: str) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": PG_ADMIN["user"],
        "HOST": PG_ADMIN["host"],
        "PORT": str(PG_ADMIN["port"]),
    }


def postgres_available() -> str:
    """ "" if a PostgreSQL server and psycopg are there, else why not (a skip reason)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        psycopg.connect(**PG_ADMIN, connect_timeout=2).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL on 127.0.0.1:5432: {exc}"
    return ""


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"raftsync_fence_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(**PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connect(alias: str, settings: dict[str, Any]) -> None:
    """Register a connection ``alias`` outside ``DATABASES`` (settings completed with Django's
    defaults), so ``FencedRow.objects.using(alias)`` works."""
    full = connections.configure_settings({"default": {}, alias: dict(settings)})[alias]
    connections[alias] = load_backend(full["ENGINE"]).DatabaseWrapper(full, alias)


def disconnect(alias: str) -> None:
    connections[alias].close()
    del connections[alias]


def create_table(alias: str) -> None:
    with connections[alias].schema_editor() as editor:
        editor.create_model(FencedRow)
