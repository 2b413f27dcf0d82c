"""raftsync's settings: every ``COORDINATION`` key, its default, converter and meaning, and the one
resolver every process uses (node, clients, Celery transport, cache backend, commands, console
script). It imports nothing from Django, so ``raftsync node`` on a machine without a Django
project reads the same settings the same way.

Precedence, highest first::

    command-line flag  >  RAFTSYNC_<KEY> environment variable  >  COORDINATION["<KEY>"]  >  default

The environment wins over the project's dict so one image and one settings file serve every node
(``RAFTSYNC_NODE_ID`` differs per machine), and so ``run_cluster`` can point the processes it
starts at the cluster it just started. Values may be native (``10``) or strings (``"10"``); each is
converted and range-checked here, and a problem names the key, and the variable when the value came
from the environment. Unknown keys in the dict are errors (a typo would otherwise be silently
ignored). Secrets are never echoed in messages.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "RAFTSYNC_"
DEV_SECRET_FILE = "cluster.secret"
MIN_SECRET_BYTES = 16
"""Shortest cluster secret the node and ``manage.py check`` accept (HMAC-SHA256 key)."""

# Where a value came from, lowest precedence first.
DEFAULT, PROJECT, ENVIRONMENT, FLAG = "default", "COORDINATION", "environment", "command line"
_RANK = {DEFAULT: 0, PROJECT: 1, ENVIRONMENT: 2, FLAG: 3}

# Problem codes (``checks.py`` maps them to check ids).
INVALID, UNKNOWN, NOT_A_DICT, NO_SECRET, BAD_SECRET_FILE = (
    "invalid",
    "unknown",
    "not_a_dict",
    "no_secret",
    "bad_secret_file",
)


class Invalid(ValueError):
    """Raised by a converter: the message says what was expected."""


# -- converters: native value or string in, checked native value out ----------------------------


def _integer(value: Any, expected: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise Invalid(f"expected {expected}")


def positive_int(value: Any) -> int:
    number = _integer(value, "a positive integer")
    if number <= 0:
        raise Invalid("expected a positive integer")
    return number


def non_negative_int(value: Any) -> int:
    number = _integer(value, "zero or a positive integer")
    if number < 0:
        raise Invalid("expected zero or a positive integer")
    return number


def port_or_zero(value: Any) -> int:
    number = _integer(value, "a TCP port (1-65535), or 0 for off")
    if not 0 <= number <= 65535:
        raise Invalid("expected a TCP port (1-65535), or 0 for off")
    return number


def seconds_between(low: float, high: float) -> Callable[[Any], float]:
    """A duration in seconds, ``low <= x <= high`` (also rejects NaN and infinities)."""

    def convert(value: Any) -> float:
        if isinstance(value, bool):
            raise Invalid("expected a number of seconds, not a boolean")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise Invalid("expected a number of seconds") from None
        if not (math.isfinite(number) and low <= number <= high):
            raise Invalid(f"expected seconds between {low:g} and {high:g}")
        return number

    return convert


def text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str):
        raise Invalid(f"expected a string, not {type(value).__name__}")
    return value.strip()


def non_empty_text(value: Any) -> str:
    result = text(value)
    if not result:
        raise Invalid("must not be empty")
    return result


def node_id(value: Any) -> str:
    result = non_empty_text(value)
    if re.search(r"[\s=,]", result):
        raise Invalid("a node id may not contain spaces, '=' or ','")
    return result


def secret(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise Invalid("expected text (a bytes secret must be UTF-8)") from None
    return text(value)


def cluster(value: Any) -> str:
    """``"n1=host:port,..."`` (or a dict ``{"n1": "host:port"}``) -> the canonical string."""
    from raft_node.host.config import parse_cluster

    if isinstance(value, Mapping):
        value = ",".join(f"{node}={addr}" for node, addr in value.items())
    spec = text(value)
    try:
        members = parse_cluster(spec)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    for node, (_host, port) in members.items():
        if not 1 <= port <= 65535:
            raise Invalid(f"member {node!r} has port {port}, outside 1-65535")
    return ",".join(f"{node}={host}:{port}" for node, (host, port) in members.items())


def redis_url(value: Any) -> str:
    url = text(value)
    if url and not re.match(r"(redis|rediss|unix)://", url):
        raise Invalid("expected a redis://, rediss:// or unix:// URL (or empty for none)")
    return url


def event_loop(value: Any) -> str:
    choice = non_empty_text(value).lower()
    if choice not in EVENT_LOOPS:
        raise Invalid(f"expected one of {', '.join(EVENT_LOOPS)}")
    return choice


EVENT_LOOPS = ("auto", "uvloop", "asyncio")


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def boolean(value: Any) -> bool:
    """A bool, or its spelling in an environment variable (``1``/``true``/``yes``/``on``,
    ``0``/``false``/``no``/``off`` or empty, any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise Invalid("expected true or false (1/0, yes/no, on/off)")


def dotted_path(value: Any) -> str:
    path = non_empty_text(value)
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", path):
        raise Invalid("expected a dotted path such as 'package.module.Class'")
    return path


@dataclass(frozen=True)
class Setting:
    """One documented ``COORDINATION`` key."""

    default: Any
    convert: Callable[[Any], Any]
    kind: str  # the accepted values, as the docs table shows them
    help: str
    secret: bool = False


#: The single source of truth for the keys; docs/settings.md's table mirrors it (a test checks).
SPEC: dict[str, Setting] = {
    "NODE_ID": Setting("n1", node_id, "id", "This node's id; must appear in CLUSTER."),
    "CLUSTER": Setting(
        "n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003",
        cluster,
        "id=host:port,...",
        "Every voting member and the address peers and clients dial.",
    ),
    "DATA_DIR": Setting(
        "var", non_empty_text, "path", "Base directory for the log and snapshots (per node id)."
    ),
    "CLUSTER_SECRET": Setting(
        "",
        secret,
        f"text, >= {MIN_SECRET_BYTES} bytes",
        "Shared secret authenticating peers and clients.",
        secret=True,
    ),
    "CLUSTER_SECRET_FILE": Setting(
        "", text, "path", "A file holding the secret (e.g. a container secret), instead."
    ),
    "TICK_INTERVAL_MS": Setting(10, positive_int, "int > 0", "Wall-clock length of one Raft tick."),
    "ELECTION_TICKS": Setting(
        15, positive_int, "int > HEARTBEAT_TICKS", "Base election timeout, in ticks."
    ),
    "HEARTBEAT_TICKS": Setting(2, positive_int, "int > 0", "Leader heartbeat interval, in ticks."),
    "SNAPSHOT_EVERY": Setting(
        100000, positive_int, "int > 0", "Applied entries between snapshots."
    ),
    "SNAPSHOT_KEEP": Setting(
        5000,
        non_negative_int,
        "int >= 0",
        "Log entries kept after a snapshot, so slightly lagging followers catch up by appends.",
    ),
    "MAX_FRAME_BYTES": Setting(
        4 * 1024 * 1024, positive_int, "int > 0", "Largest accepted wire frame from a client."
    ),
    "MAX_PEER_FRAME_BYTES": Setting(
        8 * 1024 * 1024,
        positive_int,
        "int >= MAX_FRAME_BYTES + 1 MiB",
        "Largest frame from an authenticated peer (an append batch; snapshots are streamed).",
    ),
    "REDIS_URL": Setting(
        "", redis_url, "redis URL", "Redis mirror for the cache; empty = embedded cache only."
    ),
    "TLS_CERT": Setting("", text, "path", "PEM certificate for peer/client TLS; empty = no TLS."),
    "TLS_KEY": Setting("", text, "path", "PEM private key matching TLS_CERT."),
    "TLS_CA": Setting("", text, "path", "PEM CA bundle used to verify peers (mutual TLS)."),
    "SESSION_TTL": Setting(
        10.0, seconds_between(1, 3600), "seconds, 1-3600", "Default client session TTL."
    ),
    "METRICS_PORT": Setting(
        0, port_or_zero, "port or 0", "Port of this node's Prometheus /metrics; 0 = off."
    ),
    "STATE_MACHINE": Setting(
        "coordination.primitives.machine.CoordinationMachine",
        dotted_path,
        "dotted path",
        "The state machine class the node hosts.",
    ),
    "EVENT_LOOP": Setting(
        "auto",
        event_loop,
        "auto, uvloop or asyncio",
        "The node's event loop: uvloop (pip install raftsync[speed]) when installed, for 'auto'.",
    ),
    "REQUEST_TIMEOUT": Setting(
        5.0,
        seconds_between(0.001, 3600),
        "seconds, 0.001-3600",
        "Deadline of one client request (server side, and the clients' default).",
    ),
    "API_REQUEST_TIMEOUT": Setting(
        0.0,
        seconds_between(0, 3600),
        "seconds, 0-3600; 0 = REQUEST_TIMEOUT",
        "Deadline of one REST API call to the cluster (a waiting call: its wait + 5 s if longer).",
    ),
    "UNSAFE_NO_FSYNC": Setting(
        False,
        boolean,
        "bool",
        "Skip every fsync (test suites, benchmark bounds): a crash may lose acknowledged writes.",
    ),
}


def api_request_timeout(conf: Mapping[str, Any]) -> float:
    """How long the REST API gives one call to the cluster before answering 503 (a call that
    asks the cluster to wait, for a lock, a message or other processes' L1 leases, gets its
    wait plus ``operations.WAIT_MARGIN`` if that is longer). Its own setting, so a project can
    answer HTTP clients sooner (or later) than its workers wait for the cluster; unset (0), it
    is ``REQUEST_TIMEOUT``."""
    return conf["API_REQUEST_TIMEOUT"] or conf["REQUEST_TIMEOUT"]


def env_name(key: str) -> str:
    return ENV_PREFIX + key


def setting_name(key: str) -> str:
    return f'COORDINATION["{key}"]'


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings: ``message`` says what, ``hint`` how to fix it."""

    code: str
    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        return self.message


class SettingsError(ValueError):
    """The settings cannot be used; ``str()`` is every problem on one line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))


@dataclass(frozen=True)
class Resolved(Mapping[str, Any]):
    """Every key's converted value (a read-only mapping), and where it came from
    (``source(key)``)."""

    data: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def source(self, key: str) -> str:
        return self.sources.get(key, DEFAULT)

    def is_set(self, key: str) -> bool:
        """True if the value came from anywhere but the default."""
        return self.source(key) != DEFAULT


def _describe(key: str, source: str, value: Any) -> str:
    shown = "(hidden)" if SPEC[key].secret else repr(value)
    if source == ENVIRONMENT:
        return f"{env_name(key)}={shown} (for {setting_name(key)})"
    if source == FLAG:
        return f"{setting_name(key)} = {shown} (from the command line)"
    return f"{setting_name(key)} = {shown}"


def collect(
    project: Any = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Resolved, list[Problem]]:
    """Resolve every key (flags > environment > ``project`` dict > default) and list every
    problem instead of stopping at the first (``manage.py check`` shows them all). A key whose
    value is invalid keeps its default in the result."""
    environ = environ if environ is not None else {}
    problems: list[Problem] = []
    if project is None:
        project = {}
    if not isinstance(project, Mapping):
        problems.append(
            Problem(
                NOT_A_DICT,
                "",
                f"COORDINATION must be a dict, not {type(project).__name__}",
                "Write COORDINATION = {...} (or leave it out: every key has a default).",
            )
        )
        project = {}
    for key in project:
        if key not in SPEC:
            near = difflib.get_close_matches(str(key), SPEC, n=1)
            problems.append(
                Problem(
                    UNKNOWN,
                    str(key),
                    f"{setting_name(key)} is not a raftsync setting",
                    f"Did you mean {near[0]}?" if near else "See docs/settings.md for the keys.",
                )
            )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, spec in SPEC.items():
        raw, source = spec.default, DEFAULT
        if key in project:
            raw, source = project[key], PROJECT
        if env_name(key) in environ:
            raw, source = environ[env_name(key)], ENVIRONMENT
        if overrides is not None and overrides.get(key) is not None:
            raw, source = overrides[key], FLAG
        try:
            values[key] = spec.convert(raw)
        except Invalid as exc:
            problems.append(
                Problem(
                    INVALID,
                    key,
                    f"{_describe(key, source, raw)} is invalid: {exc}",
                    f"{key}: {spec.help} Accepted: {spec.kind}.",
                )
            )
            values[key] = spec.default
            continue
        sources[key] = source
    problems += _cross_checks(values, sources)
    return Resolved(values, sources), problems


def _cross_checks(values: dict[str, Any], sources: dict[str, str]) -> list[Problem]:
    """Rules that involve two keys; only between values that were valid on their own."""
    problems = []
    if (
        "ELECTION_TICKS" in sources
        and "HEARTBEAT_TICKS" in sources
        and values["HEARTBEAT_TICKS"] >= values["ELECTION_TICKS"]
    ):
        problems.append(
            Problem(
                INVALID,
                "ELECTION_TICKS",
                f"{setting_name('ELECTION_TICKS')} ({values['ELECTION_TICKS']}) must be greater "
                f"than {setting_name('HEARTBEAT_TICKS')} ({values['HEARTBEAT_TICKS']})",
                "Followers must hear several heartbeats per election timeout: e.g. 15 and 2.",
            )
        )
    if (
        "MAX_PEER_FRAME_BYTES" in sources
        and "MAX_FRAME_BYTES" in sources
        and values["MAX_PEER_FRAME_BYTES"] < values["MAX_FRAME_BYTES"] + (1 << 20)
    ):
        problems.append(
            Problem(
                INVALID,
                "MAX_PEER_FRAME_BYTES",
                f"{setting_name('MAX_PEER_FRAME_BYTES')} ({values['MAX_PEER_FRAME_BYTES']}) must "
                f"be at least {setting_name('MAX_FRAME_BYTES')} + 1 MiB "
                f"({values['MAX_FRAME_BYTES'] + (1 << 20)})",
                "An append between nodes carries up to 1 MiB of entries, or one entry as large "
                "as a client request; the default 8 MiB fits the default 4 MiB client frames.",
            )
        )
    for key in ("TLS_KEY", "TLS_CA"):
        if values.get(key) and not values.get("TLS_CERT"):
            problems.append(
                Problem(
                    INVALID,
                    key,
                    f"{setting_name(key)} is set but {setting_name('TLS_CERT')} is empty",
                    "TLS is on only with TLS_CERT (and TLS_KEY); set it, or clear this key.",
                )
            )
    return problems


def resolve(
    project: Any = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Resolved:
    """As ``collect``, but raise ``SettingsError`` (one line, every problem) if any."""
    resolved, problems = collect(project, environ, overrides)
    if problems:
        raise SettingsError(problems)
    return resolved


# -- the cluster secret --------------------------------------------------------------------------


def dev_secret_path(conf: Mapping[str, Any]) -> Path:
    """Where ``run_cluster`` keeps the generated development secret."""
    return Path(conf["DATA_DIR"]) / DEV_SECRET_FILE


def create_dev_secret(path: Path) -> None:
    """32 random bytes (URL-safe text), readable by this user only, if the file is missing."""
    import secrets

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_urlsafe(32))
    path.chmod(0o600)


NO_SECRET_MESSAGE = (
    f"no cluster secret: set {setting_name('CLUSTER_SECRET')} or the environment variable "
    f"{env_name('CLUSTER_SECRET')} (or CLUSTER_SECRET_FILE / {env_name('CLUSTER_SECRET_FILE')}, "
    "a file holding it)"
)


def cluster_secret(conf: Resolved, *, dev: bool = False, how: str = "") -> bytes:
    """The cluster secret: ``CLUSTER_SECRET``, else the file ``CLUSTER_SECRET_FILE`` (when both
    are set, the one from the higher-precedence source wins, a tie goes to ``CLUSTER_SECRET``),
    else, only with ``dev`` (Django's DEBUG), the development secret ``DATA_DIR/cluster.secret``
    that ``run_cluster`` generates. Otherwise ``SettingsError`` naming both ways to set it
    (``how``: the caller's own way, e.g. a flag)."""
    use_file = bool(conf["CLUSTER_SECRET_FILE"]) and (
        not conf["CLUSTER_SECRET"]
        or _RANK[conf.source("CLUSTER_SECRET_FILE")] > _RANK[conf.source("CLUSTER_SECRET")]
    )
    if conf["CLUSTER_SECRET"] and not use_file:
        return conf["CLUSTER_SECRET"].encode()
    if use_file:
        return _read_secret_file(Path(conf["CLUSTER_SECRET_FILE"]), "CLUSTER_SECRET_FILE")
    path = dev_secret_path(conf)
    if dev and path.exists():
        return _read_secret_file(path, None)
    how = how or f"with DEBUG on, `manage.py run_cluster` generates a development secret in {path}"
    raise SettingsError(
        [Problem(NO_SECRET, "CLUSTER_SECRET", f"{NO_SECRET_MESSAGE}; {how}", _SECRET_HINT)]
    )


_SECRET_HINT = (
    "Generate one with `openssl rand -hex 32` and give every node and client the same value."
)


def _read_secret_file(path: Path, key: str | None) -> bytes:
    label = f"{setting_name(key)} ({path})" if key else str(path)
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(
            [Problem(BAD_SECRET_FILE, key or "CLUSTER_SECRET", f"cannot read {label}: {exc}")]
        ) from None
    if not value:
        raise SettingsError(
            [Problem(BAD_SECRET_FILE, key or "CLUSTER_SECRET", f"the secret file {label} is empty")]
        )
    return value.encode()


def weak_secret(value: bytes) -> str | None:
    """Why ``value`` is too weak to run a node with, or None."""
    if len(value) < MIN_SECRET_BYTES:
        return f"the cluster secret is {len(value)} bytes; at least {MIN_SECRET_BYTES} are required"
    return None
