"""From resolved settings (``coordination.conf``) to the objects a process needs: TLS contexts,
member addresses, a node's ``NodeConfig`` and state machine, a status client. Django-free, so the
Django adapter (``node_settings``) and the console script (``cli``) build them the same way.

Every failure here is a ``SettingsError`` naming the ``COORDINATION`` key at fault, because the
operator fixes a setting, not a stack trace.
"""

from __future__ import annotations

import ssl
from importlib import import_module
from pathlib import Path
from typing import Any

from coordination.conf import (
    INVALID,
    Problem,
    Resolved,
    SettingsError,
    cluster_secret,
    setting_name,
    weak_secret,
)
from raft_node.client import RaftClient, parse_addresses
from raft_node.core.fsm import StateMachine
from raft_node.host.config import Address, NodeConfig, parse_cluster


def _error(key: str, message: str, hint: str = "") -> SettingsError:
    return SettingsError([Problem(INVALID, key, message, hint)])


def ssl_contexts(conf: Resolved) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server, client) TLS contexts from TLS_CERT/TLS_KEY/TLS_CA; (None, None) without TLS.

    With a CA configured, both sides require and verify certificates signed by it (mutual TLS);
    peers are dialled by IP or name as written in CLUSTER, so certificates must name them.
    """
    cert, key, ca = conf["TLS_CERT"], conf["TLS_KEY"], conf["TLS_CA"]
    if not cert:
        return None, None
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert, key or None)
        client = ssl.create_default_context(cafile=ca or None)
        client.load_cert_chain(cert, key or None)
        if ca:
            server.verify_mode = ssl.CERT_REQUIRED
            server.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as exc:
        raise _error(
            "TLS_CERT",
            f"cannot load TLS files ({setting_name('TLS_CERT')}={cert!r}, TLS_KEY={key!r}, "
            f"TLS_CA={ca!r}): {exc}",
        ) from None
    return server, client


def client_access(
    conf: Resolved, *, dev: bool, how: str = ""
) -> tuple[bytes, ssl.SSLContext | None, dict[str, Address]]:
    """What a command-line client of the cluster needs: the secret, the client TLS context and
    the members' addresses (``raft_status``, ``raft_members``)."""
    secret = cluster_secret(conf, dev=dev, how=how)
    return secret, ssl_contexts(conf)[1], cluster_addresses(conf)


def cluster_membership(conf: Resolved, secret: bytes, address: str) -> dict[str, Any]:
    """The configuration in force, as the leader reports it (``MEMBERS list``), asked through
    the node at ``address`` (it redirects to the leader)."""
    _, client_ssl = ssl_contexts(conf)
    client = RaftClient(address, secret, timeout=10.0, ssl=client_ssl, name="join")
    try:
        return client.members("list")
    finally:
        client.close()


def cluster_addresses(conf: Resolved) -> dict[str, Address]:
    return parse_cluster(conf["CLUSTER"])  # validated by the resolver


def node_config(
    conf: Resolved, secret: bytes, *, data_dir: str | None = None, listen: str | None = None
) -> NodeConfig:
    """This node's ``NodeConfig``: ``data_dir`` defaults to ``DATA_DIR/<NODE_ID>``, ``listen``
    (``host:port``) to the node's own ``CLUSTER`` address."""
    members = cluster_addresses(conf)
    node = conf["NODE_ID"]
    if node not in members:
        raise _error(
            "NODE_ID",
            f"{setting_name('NODE_ID')} = {node!r} is not a member of {setting_name('CLUSTER')} "
            f"({', '.join(members)})",
            "Give each node its own id from CLUSTER (e.g. RAFTSYNC_NODE_ID or --id).",
        )
    weak = weak_secret(secret)
    if weak:
        raise _error("CLUSTER_SECRET", weak, "Generate one with `openssl rand -hex 32`.")
    listen_at = None
    if listen:
        try:
            listen_at = parse_addresses(listen)[0]
        except ValueError as exc:
            raise ValueError(f"--listen {listen!r}: {exc}") from None
    server_ssl, client_ssl = ssl_contexts(conf)
    return NodeConfig(
        node_id=node,
        cluster=members,
        data_dir=Path(data_dir) if data_dir else Path(conf["DATA_DIR"]) / node,
        secret=secret,
        tick_ms=conf["TICK_INTERVAL_MS"],
        election_ticks=conf["ELECTION_TICKS"],
        heartbeat_ticks=conf["HEARTBEAT_TICKS"],
        snapshot_every=conf["SNAPSHOT_EVERY"],
        snapshot_keep=conf["SNAPSHOT_KEEP"],
        max_frame_bytes=conf["MAX_FRAME_BYTES"],
        max_peer_frame_bytes=conf["MAX_PEER_FRAME_BYTES"],
        request_timeout=conf["REQUEST_TIMEOUT"],
        metrics_port=conf["METRICS_PORT"] or None,
        fsync=not conf["UNSAFE_NO_FSYNC"],
        ssl_server=server_ssl,
        ssl_client=client_ssl,
        # The same paths, re-read on SIGHUP (rotation): only the files' contents may change.
        tls_reload=(lambda: ssl_contexts(conf)) if server_ssl is not None else None,
        listen=listen_at,
    )


def state_machine_class(path: str) -> type:
    """The class named by ``STATE_MACHINE``, checked to look like a ``StateMachine``."""
    module_name, _, name = path.rpartition(".")
    try:
        cls: Any = getattr(import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise _error(
            "STATE_MACHINE", f"{setting_name('STATE_MACHINE')} = {path!r} cannot be loaded: {exc}"
        ) from None
    missing = [m for m in ("apply", "snapshot", "restore") if not callable(getattr(cls, m, None))]
    if not isinstance(cls, type) or missing:
        raise _error(
            "STATE_MACHINE",
            f"{setting_name('STATE_MACHINE')} = {path!r} is not a state machine class "
            f"(needs apply, snapshot and restore)",
        )
    return cls


def state_machine(conf: Resolved) -> StateMachine:
    return state_machine_class(conf["STATE_MACHINE"])()
