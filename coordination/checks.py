"""Django system checks (``manage.py check``, and before ``runserver``/``migrate``/...) for the
settings raftsync reads: a wrong value is reported here, with its key and a hint, instead of as a
traceback at request time or a node that never joins. Registered by ``CoordinationConfig.ready``
under the tag ``coordination``; the table of ids is in docs/settings.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from coordination import conf
from coordination.conf import Resolved, setting_name

TAG = "coordination"
OBJ = "settings.COORDINATION"
API_URLCONF = "coordination.api.urls"
API_APPS = ("rest_framework", "rest_framework.authtoken", "drf_spectacular")
CACHE_BACKEND = "coordination.cache_backend.RaftCache"

_BY_CODE = {conf.NOT_A_DICT: "E006", conf.UNKNOWN: "E005"}


def _error(num: str, msg: str, hint: str, obj: str = OBJ) -> Error:
    return Error(msg, hint=hint or None, obj=obj, id=f"coordination.{num}")


def _resolved() -> tuple[Resolved, list[conf.Problem], bool]:
    project = getattr(settings, "COORDINATION", {})
    resolved, problems = conf.collect(project, os.environ)
    return resolved, problems, bool(settings.DEBUG)


def check_coordination(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001-E006, W001: the COORDINATION dict itself, as every process will resolve it."""
    resolved, problems, debug = _resolved()
    messages: list[CheckMessage] = []
    for p in problems:
        num = _BY_CODE.get(p.code) or ("E001" if p.key == "CLUSTER" else "E004")
        messages.append(_error(num, p.message, p.hint))
    cluster_bad = any(p.key == "CLUSTER" for p in problems)
    if not cluster_bad and not resolved.is_set("CLUSTER") and not debug:
        messages.append(
            _error(
                "E001",
                f"{setting_name('CLUSTER')} is not set (neither in COORDINATION nor "
                f"{conf.env_name('CLUSTER')}), so this project would use the default local "
                "development cluster",
                "Set CLUSTER to 'n1=host:port,n2=host:port,...' naming every node.",
            )
        )
    members = resolved["CLUSTER"].count(",") + 1
    if members > 1 and members % 2 == 0 and not cluster_bad:
        messages.append(
            Warning(
                f"{setting_name('CLUSTER')} has {members} members: an even size tolerates no "
                f"more failures than {members - 1} members do",
                hint="Use 3 or 5 nodes.",
                obj=OBJ,
                id="coordination.W001",
            )
        )
    if not any(p.key in ("CLUSTER_SECRET", "CLUSTER_SECRET_FILE") for p in problems):
        messages += _secret_messages(resolved, debug)
    return messages


def _secret_messages(resolved: Resolved, debug: bool) -> list[CheckMessage]:
    """E002 no secret (fine with DEBUG: run_cluster generates one), E003 a short secret."""
    try:
        secret = conf.cluster_secret(resolved, dev=debug)
    except conf.SettingsError as exc:
        problem = exc.problems[0]
        if problem.code == conf.NO_SECRET and debug:
            return []  # development: `run_cluster` creates DATA_DIR/cluster.secret
        return [_error("E002", problem.message, problem.hint or _FILE_HINT)]
    weak = conf.weak_secret(secret)
    if weak:
        return [_error("E003", weak, "Generate one with `openssl rand -hex 32`.")]
    return []


_FILE_HINT = "Make the file readable by this user, holding the secret on one line."


def check_broker(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E007: a raft:// broker or result backend naming hosts that are not in CLUSTER."""
    from coordination.celery.connect import SCHEME, hosts_from_urls

    resolved, problems, _ = _resolved()
    if any(p.key == "CLUSTER" for p in problems):
        return []  # E001 already
    members = {f"{host}:{port}" for host, port in _members(resolved)}
    messages: list[CheckMessage] = []
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        value = getattr(settings, name, None)
        urls = value if isinstance(value, (list, tuple)) else [value]
        urls = [u for u in urls if isinstance(u, str) and u.startswith(f"{SCHEME}://")]
        outside = [h for h in hosts_from_urls(urls) if h not in members]
        if outside:
            messages.append(
                _error(
                    "E007",
                    f"{name} names {', '.join(outside)}, not in {setting_name('CLUSTER')} "
                    f"({', '.join(sorted(members))}): Celery would use a different cluster",
                    'Use a bare "raft://": it means the COORDINATION cluster (RAFTSYNC_CLUSTER '
                    "included), so every process agrees.",
                    obj=f"settings.{name}",
                )
            )
    return messages


def _members(resolved: Resolved) -> list[tuple[str, int]]:
    from coordination.node.runtime import cluster_addresses

    return list(cluster_addresses(resolved).values())


def check_caches(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """For each RaftCache alias: W002 an unknown OPTIONS key (ignored at run time, so a
    django-redis OPTIONS dict works; a typo is pointed out), E008 a bad value of a known one,
    E015 a SERIALIZER/COMPRESSOR that cannot be loaded (unknown name, missing package)."""
    from coordination.cache_codec import codec_problems
    from coordination.cache_options import (
        OPTION_DEFAULTS,
        option_problems,
        unknown_option_message,
        unknown_options,
    )

    messages: list[CheckMessage] = []
    for alias, config in getattr(settings, "CACHES", {}).items():
        if config.get("BACKEND") != CACHE_BACKEND:
            continue
        obj = f"settings.CACHES[{alias!r}]"
        options = config.get("OPTIONS", {})
        for name in unknown_options(options):
            messages.append(
                Warning(
                    f"CACHES[{alias!r}]: {unknown_option_message(name)}",
                    hint=f"RaftCache knows {', '.join(OPTION_DEFAULTS)}; delete {name!r} or "
                    "fix its spelling.",
                    obj=obj,
                    id="coordination.W002",
                )
            )
        problems = option_problems(options)
        for problem in problems:
            messages.append(
                _error(
                    "E008",
                    f"CACHES[{alias!r}]: {problem}",
                    f"RaftCache OPTIONS are {', '.join(OPTION_DEFAULTS)} (L1_SIZE >= 0, 0 for "
                    "no L1; MODE 'linearizable' or 'bounded'); see coordination/cache_options.py.",
                    obj=obj,
                )
            )
        if problems and not isinstance(options, dict):
            continue
        for problem in codec_problems(options):
            messages.append(
                _error(
                    "E015",
                    f"CACHES[{alias!r}]: {problem}",
                    "SERIALIZER is pickle (default), json, msgpack or a dotted path; COMPRESSOR "
                    "is none (default), zlib, lz4 (pip install raftsync[lz4]), zstd (pip "
                    "install raftsync[zstd]) or a dotted path.",
                    obj=obj,
                )
            )
    return messages


def check_api(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E009: coordination.api.urls is routed but DRF or drf-spectacular is not set up. (No
    check of DEFAULT_SCHEMA_CLASS: the API's views declare drf-spectacular's AutoSchema
    themselves, so the project's own choice of schema class does not matter to them.)"""
    from django.apps import apps

    try:
        routed = _api_routed()
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("rest_framework", "drf_spectacular"):
            return [_error("E009", f"the URLconf needs {exc.name}: {exc}", _API_HINT, "urls")]
        return []  # Django's own URL check reports it
    if not routed:
        return []
    messages: list[CheckMessage] = []
    missing = [app for app in API_APPS if not apps.is_installed(app)]
    if missing:
        messages.append(
            _error(
                "E009",
                f"{API_URLCONF} is included in the URLconf but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not in INSTALLED_APPS",
                f"Add {', '.join(repr(m) for m in missing)} to INSTALLED_APPS "
                "(pip install raftsync[api]).",
                "settings.INSTALLED_APPS",
            )
        )
    return messages


_API_HINT = (
    "pip install raftsync[api], and add rest_framework, rest_framework.authtoken and "
    "drf_spectacular to INSTALLED_APPS."
)


def _api_routed() -> bool:
    if not getattr(settings, "ROOT_URLCONF", None):
        return False
    from django.urls import get_resolver

    return any(_urlconf_names(get_resolver().url_patterns))


def _urlconf_names(patterns: Any) -> Iterator[bool]:
    from django.urls import URLResolver

    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            name = getattr(pattern.urlconf_name, "__name__", pattern.urlconf_name)
            yield name == API_URLCONF
            yield from _urlconf_names(pattern.url_patterns)


def check_node(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E011-E014: what a node started from this project would need (metrics, state machine,
    TLS files, Redis), reported now rather than when the node starts; W003: its fsync is off.
    W003 is a warning, not an error, because a project's test suite (DEBUG off under Django's
    test runner) is where the setting belongs."""
    from coordination.node import runtime
    from raft_node.host import metrics

    resolved, problems, _ = _resolved()
    bad = {p.key for p in problems}
    messages: list[CheckMessage] = []
    if resolved["METRICS_PORT"] and metrics.CollectorRegistry is None:
        messages.append(
            _error(
                "E011",
                f"{setting_name('METRICS_PORT')} = {resolved['METRICS_PORT']} but "
                "prometheus-client is not installed",
                "pip install raftsync[metrics], or set METRICS_PORT to 0.",
            )
        )
    if "STATE_MACHINE" not in bad:
        try:
            runtime.state_machine_class(resolved["STATE_MACHINE"])
        except conf.SettingsError as exc:
            messages.append(_error("E012", str(exc), "Give the dotted path of a class."))
    messages += _tls_messages(resolved, bad)
    if resolved["UNSAFE_NO_FSYNC"] and "UNSAFE_NO_FSYNC" not in bad:
        messages.append(
            Warning(
                f"{setting_name('UNSAFE_NO_FSYNC')} is on: nodes acknowledge writes they have "
                "not synced to disk, so a crash or power loss may lose them (locks granted "
                "twice, tasks lost)",
                hint="Only for test suites and benchmark bounds; never in production.",
                obj=OBJ,
                id="coordination.W003",
            )
        )
    if resolved["REDIS_URL"] and "REDIS_URL" not in bad:
        try:
            import redis  # noqa: F401
        except ImportError:
            messages.append(
                _error(
                    "E014",
                    f"{setting_name('REDIS_URL')} is set but the redis package is not installed",
                    "pip install raftsync[redis], or clear REDIS_URL.",
                )
            )
    return messages


def _tls_messages(resolved: Resolved, bad: set[str]) -> list[CheckMessage]:
    from coordination.node import runtime

    keys = [k for k in ("TLS_CERT", "TLS_KEY", "TLS_CA") if resolved[k] and k not in bad]
    missing = [
        _error(
            "E013",
            f"{setting_name(key)} = {resolved[key]!r}: no such file",
            "Give the path of a PEM file readable by this user.",
        )
        for key in keys
        if not Path(resolved[key]).is_file()
    ]
    if missing:
        return missing
    if keys and not bad & {"TLS_CERT", "TLS_KEY", "TLS_CA"}:
        try:
            runtime.ssl_contexts(resolved)
        except conf.SettingsError as exc:
            return [_error("E013", str(exc), "Check that the key matches the certificate.")]
    return []


def register_checks() -> None:
    for check in (check_coordination, check_broker, check_caches, check_api, check_node):
        register(check, TAG)
