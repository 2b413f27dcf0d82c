"""The Django side of the settings: ``settings.COORDINATION`` (optional, possibly partial) and
``settings.DEBUG`` fed to the one resolver in ``coordination.conf``, with the ``RAFTSYNC_*``
environment on top. Every Django-hosted user (clients, the Celery transport and worker hooks,
the cache backend, the admin pages, the management commands) goes through ``load()``.

Outside a configured Django project (a plain Celery app using ``raft://``) the same functions
work from the environment and the defaults alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from coordination import conf
from coordination.conf import Resolved
from coordination.node import runtime
from raft_node.client import RaftClient
from raft_node.host.config import Address


def project_settings() -> tuple[Any, bool]:
    """(``settings.COORDINATION`` or ``{}``, ``settings.DEBUG``); ({}, False) without Django."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:  # configures Django from DJANGO_SETTINGS_MODULE on first access, as Django would
        return getattr(settings, "COORDINATION", {}), bool(settings.DEBUG)
    except ImproperlyConfigured:  # no Django project in this process
        return {}, False


def load(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Resolved:
    """The effective settings (flags > env > ``COORDINATION`` > defaults); ``SettingsError``
    (a ``ValueError``, one line naming every bad key) if they cannot be used."""
    project, _ = project_settings()
    return conf.resolve(project, os.environ if environ is None else environ, overrides)


def coordination() -> Resolved:
    return load()


def dev_mode() -> bool:
    """Django's DEBUG: the generated development secret (DATA_DIR/cluster.secret) is allowed."""
    return project_settings()[1]


def cluster_secret(resolved: Resolved | None = None) -> bytes:
    """The cluster secret (see ``conf.cluster_secret``); in DEBUG the development secret file
    that ``run_cluster`` generates, so every local command finds the same one."""
    return conf.cluster_secret(resolved or load(), dev=dev_mode())


def ssl_contexts(resolved: Resolved | None = None) -> tuple[Any, Any]:
    return runtime.ssl_contexts(resolved or load())


def cluster_addresses(cluster: str | None = None) -> dict[str, Address]:
    return runtime.cluster_addresses(load({"CLUSTER": cluster}))


def client(timeout: float = 5.0, cluster: str | None = None) -> RaftClient:
    """A blocking client for this project's cluster (Django views, Celery tasks, commands)."""
    resolved = load({"CLUSTER": cluster})
    _, client_ssl = runtime.ssl_contexts(resolved)
    return RaftClient(
        list(runtime.cluster_addresses(resolved).values()),
        cluster_secret(resolved),
        timeout=timeout,
        ssl=client_ssl,
        max_frame_bytes=resolved["MAX_FRAME_BYTES"],
    )
