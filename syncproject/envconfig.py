"""Environment parsing for settings, kept free of Django so it can be unit tested.

Every ``COORDINATION`` key has a default and can be overridden by an environment variable
``RAFTSYNC_<KEY>``. Values are converted to the default's type here, at start-up, so a typo in a
deployment fails loudly with the variable's name instead of surfacing later inside the Raft node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "RAFTSYNC_"

#: Used only when DEBUG is on; production must supply real secrets.
DEV_CLUSTER_SECRET = "dev-only-insecure-cluster-secret"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class Setting:
    """One documented ``COORDINATION`` key: its default, converter and meaning."""

    default: Any
    convert: Callable[[str], Any]
    help: str


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be zero or a positive integer")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:  # also rejects NaN
        raise ValueError("must be a positive number")
    return value


#: The single source of truth for the keys; README's configuration table mirrors it.
COORDINATION_SPEC: dict[str, Setting] = {
    "NODE_ID": Setting("n1", str, "This node's id; must appear in CLUSTER."),
    "CLUSTER": Setting(
        "n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003",
        str,
        "Comma-separated id=host:port of every voting member (Raft peer addresses).",
    ),
    "DATA_DIR": Setting("var", str, "Base directory for the log and snapshots (per node id)."),
    "CLUSTER_SECRET": Setting("", str, "Shared secret authenticating peers and clients."),
    "TICK_INTERVAL_MS": Setting(10, _positive_int, "Wall-clock length of one Raft tick."),
    "ELECTION_TICKS": Setting(15, _positive_int, "Base election timeout, in ticks."),
    "HEARTBEAT_TICKS": Setting(2, _positive_int, "Leader heartbeat interval, in ticks."),
    "SNAPSHOT_EVERY": Setting(100000, _positive_int, "Applied entries between snapshots."),
    "SNAPSHOT_KEEP": Setting(
        5000,
        _non_negative_int,
        "Log entries kept after a snapshot, so slightly lagging followers catch up by appends.",
    ),
    "MAX_FRAME_BYTES": Setting(4 * 1024 * 1024, _positive_int, "Largest accepted wire frame."),
    "MAX_PEER_FRAME_BYTES": Setting(
        512 * 1024 * 1024,
        _positive_int,
        "Largest frame from an authenticated peer (a snapshot travels as one message).",
    ),
    "REDIS_URL": Setting("", str, "Redis mirror for the cache; empty = embedded cache only."),
    "TLS_CERT": Setting("", str, "PEM certificate for peer/client TLS; empty = no TLS."),
    "TLS_KEY": Setting("", str, "PEM private key matching TLS_CERT."),
    "TLS_CA": Setting("", str, "PEM CA bundle used to verify peers."),
    "SESSION_TTL": Setting(10.0, _positive_float, "Default client session TTL, in seconds."),
    "METRICS_PORT": Setting(
        0, _non_negative_int, "Port of this node's Prometheus /metrics endpoint; 0 = off."
    ),
    "STATE_MACHINE": Setting(
        "coordination.primitives.machine.CoordinationMachine",
        str,
        "Dotted path of the state machine class the node hosts.",
    ),
    "REQUEST_TIMEOUT": Setting(
        5.0, _positive_float, "Server-side deadline for one client request, in seconds."
    ),
}


def env_bool(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    """Parse a boolean variable, rejecting anything that is not clearly yes or no."""
    raw = environ.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


def coordination_settings(
    environ: Mapping[str, str], *, debug: bool | None = None
) -> dict[str, Any]:
    """Build the ``COORDINATION`` dict from defaults overridden by ``RAFTSYNC_<KEY>`` variables.

    ``debug`` defaults to ``RAFTSYNC_DEBUG``. Only in debug mode does an unset CLUSTER_SECRET
    fall back to a development value; otherwise it stays empty and the node refuses to start.
    """
    if debug is None:
        debug = env_bool(environ, f"{ENV_PREFIX}DEBUG")
    result: dict[str, Any] = {}
    for key, spec in COORDINATION_SPEC.items():
        name = ENV_PREFIX + key
        raw = environ.get(name)
        if raw is None:
            result[key] = spec.default
            continue
        try:
            result[key] = spec.convert(raw.strip())
        except ValueError as exc:
            raise ValueError(f"{name}={raw!r} is invalid: {exc}") from exc
    if not result["CLUSTER_SECRET"] and debug:
        result["CLUSTER_SECRET"] = DEV_CLUSTER_SECRET
    return result


def raft_broker_url(cluster: str) -> str:
    """``raft://`` broker URL for every member of a ``CLUSTER`` value (``id=host:port,...``):
    Celery then needs no broker setting of its own and no external service."""
    members = [part.split("=", 1)[-1].strip() for part in cluster.split(",") if part.strip()]
    return ";".join(f"raft://{member}" for member in members)
