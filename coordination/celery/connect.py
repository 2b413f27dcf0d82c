"""From a ``raft://`` URL (broker or result backend) to a ``Coordinator`` on that cluster.

    raft://10.0.0.1:7001;raft://10.0.0.2:7001;raft://10.0.0.3:7001   every member (kombu style)
    raft://10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001                  the same, one URL
    raft://                                                           COORDINATION["CLUSTER"]

A URL without hosts means "this project's cluster", so a Django project writes
``CELERY_BROKER_URL = CELERY_RESULT_BACKEND = "raft://"`` once and every process (web, worker,
``run_cluster``'s children) follows the ``COORDINATION`` settings. The secret comes from the
options (``transport_options["secret"]``, ``result_backend_transport_options["secret"]``),
else from the settings. TLS comes from ``options["ssl"]`` (an ``ssl.SSLContext``, for an app
without raftsync settings) or else from the settings' ``TLS_*`` files, also when the URL names
the hosts and the options the secret (that path once dialled in plain text: a TLS cluster
refused the worker).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from coordination.client.coordinator import Coordinator

SCHEME = "raft"
DEFAULT_PORT = 7001


def hosts_from_urls(urls: Iterable[str | None]) -> list[str]:
    """``host:port`` of every member named by the URLs, in order, without repeats.

    A URL is ``raft://[user:pass@]host[:port][/...]`` and may list several members separated
    by ``,`` or ``;``; a host without a port gets ``DEFAULT_PORT``. ``raft://`` alone (or
    ``raft://localhost`` as kombu renders a hostless URL) names no host.
    """
    hosts: list[str] = []
    for url in urls:
        if not url:
            continue
        for part in url.replace(";", ",").split(","):
            rest = part.strip()
            if "://" in rest:
                rest = rest.split("://", 1)[1]
            rest = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
            if not rest:
                continue
            host = rest if ":" in rest else f"{rest}:{DEFAULT_PORT}"
            if host not in hosts:
                hosts.append(host)
    return hosts


def coordinator_for(
    hosts: list[str], options: Mapping[str, Any] | None = None, **kwargs: Any
) -> Coordinator:
    """A coordinator on ``hosts`` (or, if empty, on the settings' cluster) with the secret from
    ``options["secret"]`` or the settings. ``kwargs`` go to ``Coordinator`` (name, timeout...)."""
    options = options or {}
    addresses = options.get("addresses") or hosts
    secret = options.get("secret")
    if "ssl" in options:
        kwargs.setdefault("ssl", options["ssl"])
    if addresses and secret is not None:
        if "ssl" not in kwargs:
            kwargs["ssl"] = _settings_client_ssl()
        return Coordinator(addresses, secret, **kwargs)
    return Coordinator.from_settings(addresses, secret, **kwargs)


def _settings_client_ssl() -> Any:
    """The client TLS context of the settings' ``TLS_*`` keys (None without them). An app that
    names its hosts and secret needs no other setting: only problems with the TLS keys count
    (a ``RAFTSYNC_CLUSTER`` in the clients' ``host:port,...`` form is no error here)."""
    from coordination import conf
    from coordination.node import node_settings, runtime

    project, _ = node_settings.project_settings()
    resolved, problems = conf.collect(project, os.environ)
    tls = [p for p in problems if p.key.startswith("TLS_")]
    if tls:
        raise conf.SettingsError(tls)
    return runtime.ssl_contexts(resolved)[1]
