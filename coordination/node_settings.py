"""Turns Django's ``COORDINATION`` settings (plus command-line overrides) into a ``NodeConfig``
and client connection parameters. The management commands stay thin by calling these."""

from __future__ import annotations

import secrets
import ssl
from importlib import import_module
from pathlib import Path
from typing import Any

from django.conf import settings

from raft_node.client import RaftClient, parse_addresses
from raft_node.fsm import StateMachine
from raft_node.server import Address, NodeConfig, parse_cluster


def coordination() -> dict[str, Any]:
    return dict(settings.COORDINATION)


def cluster_secret(conf: dict[str, Any] | None = None, *, create: bool = False) -> bytes:
    """CLUSTER_SECRET, else the development secret kept in ``DATA_DIR/cluster.secret`` (made by
    ``run_cluster`` on first use, so every local command finds the same one)."""
    conf = conf or coordination()
    if conf["CLUSTER_SECRET"]:
        return conf["CLUSTER_SECRET"].encode()
    path = Path(conf["DATA_DIR"]) / "cluster.secret"
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    if path.exists():
        return path.read_text().strip().encode()
    raise ValueError(
        "no cluster secret: set RAFTSYNC_CLUSTER_SECRET (or run `manage.py run_cluster` once, "
        f"which creates {path})"
    )


def ssl_contexts(conf: dict[str, Any]) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server, client) TLS contexts from TLS_CERT/TLS_KEY/TLS_CA; (None, None) without TLS.

    With a CA configured, both sides require and verify certificates signed by it (mutual TLS);
    peers are dialled by IP or name as written in CLUSTER, so certificates must name them.
    """
    cert, key, ca = conf["TLS_CERT"], conf["TLS_KEY"], conf["TLS_CA"]
    if not cert:
        return None, None
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key or None)
    client = ssl.create_default_context(cafile=ca or None)
    client.load_cert_chain(cert, key or None)
    if ca:
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_verify_locations(ca)
    return server, client


def node_config(
    *,
    node_id: str | None = None,
    cluster: str | None = None,
    data_dir: str | None = None,
    metrics_port: int | None = None,
    listen: str | None = None,
) -> NodeConfig:
    conf = coordination()
    node = node_id or conf["NODE_ID"]
    members = parse_cluster(cluster or conf["CLUSTER"])
    base = Path(data_dir) if data_dir else Path(conf["DATA_DIR"]) / node
    port = conf["METRICS_PORT"] if metrics_port is None else metrics_port
    server_ssl, client_ssl = ssl_contexts(conf)
    return NodeConfig(
        node_id=node,
        cluster=members,
        data_dir=base,
        secret=cluster_secret(conf),
        tick_ms=conf["TICK_INTERVAL_MS"],
        election_ticks=conf["ELECTION_TICKS"],
        heartbeat_ticks=conf["HEARTBEAT_TICKS"],
        snapshot_every=conf["SNAPSHOT_EVERY"],
        snapshot_keep=conf["SNAPSHOT_KEEP"],
        max_frame_bytes=conf["MAX_FRAME_BYTES"],
        max_peer_frame_bytes=conf["MAX_PEER_FRAME_BYTES"],
        request_timeout=conf["REQUEST_TIMEOUT"],
        metrics_port=port or None,
        ssl_server=server_ssl,
        ssl_client=client_ssl,
        listen=parse_addresses(listen)[0] if listen else None,
    )


def state_machine() -> StateMachine:
    module, _, name = coordination()["STATE_MACHINE"].rpartition(".")
    return getattr(import_module(module), name)()


def cluster_addresses(cluster: str | None = None) -> dict[str, Address]:
    return parse_cluster(cluster or coordination()["CLUSTER"])


def client(timeout: float = 5.0, cluster: str | None = None) -> RaftClient:
    """A blocking client for this project's cluster (Django views, Celery tasks, commands)."""
    conf = coordination()
    _, client_ssl = ssl_contexts(conf)
    addresses = list(cluster_addresses(cluster).values())
    return RaftClient(
        addresses,
        cluster_secret(conf),
        timeout=timeout,
        ssl=client_ssl,
        max_frame_bytes=conf["MAX_FRAME_BYTES"],
    )
