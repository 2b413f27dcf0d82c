"""``RaftCache``'s ``OPTIONS``: the names it knows, their defaults, and what is wrong with a dict.

Shared by the backend (which refuses a bad value on first use rather than half-apply it) and
the system checks (which report it at ``manage.py check``):

- an unknown name is a warning (``coordination.W002``), ignored at run time, so a django-redis
  ``OPTIONS`` dict (``CLIENT_CLASS``, ``CONNECTION_POOL_KWARGS``...) works unchanged while
  its leftovers, and typos, are pointed out;
- a bad value of a known name is an error (``coordination.E008``);
- a ``SERIALIZER``/``COMPRESSOR`` that cannot be loaded is an error (``coordination.E015``,
  ``cache_codec.codec_problems``).
"""

from __future__ import annotations

from typing import Any

#: ``OPTIONS`` this backend understands, with their defaults.
OPTION_DEFAULTS: dict[str, Any] = {
    "L1_SIZE": 1000,
    "MODE": "linearizable",
    "LEASE": 5.0,
    "STALENESS": 1.0,
    "REDIS_URL": "",
    "SECRET": "",
    "SOCKET_TIMEOUT": None,  # None: COORDINATION's REQUEST_TIMEOUT (5 s with a LOCATION)
    "IGNORE_EXCEPTIONS": False,
    "SERIALIZER": "pickle",
    "COMPRESSOR": "none",
    "PICKLE_VERSION": -1,
}
MODES = ("linearizable", "bounded")
#: django-redis options that mean nothing here (Redis connections, client classes): named as
#: such in the warning, so a user moving from django-redis knows they are safe to delete.
DJANGO_REDIS_ONLY = frozenset(
    {
        "CLIENT_CLASS",
        "CLIENT_KWARGS",
        "CONNECTION_FACTORY",
        "CONNECTION_POOL_CLASS",
        "CONNECTION_POOL_CLASS_KWARGS",
        "CONNECTION_POOL_KWARGS",
        "PARSER_CLASS",
        "PASSWORD",
        "REDIS_CLIENT_CLASS",
        "REDIS_CLIENT_KWARGS",
        "SENTINELS",
        "SENTINEL_KWARGS",
        "SOCKET_CONNECT_TIMEOUT",
        "CLOSE_CONNECTION",
    }
)


def unknown_options(options: Any) -> list[str]:
    """The names in ``options`` this backend does not know (it ignores them)."""
    if not isinstance(options, dict):
        return []
    return [name for name in options if name not in OPTION_DEFAULTS]


def unknown_option_message(name: Any) -> str:
    if name in DJANGO_REDIS_ONLY:
        return f"OPTIONS key {name!r} is a django-redis option RaftCache has no use for: ignored"
    return f"unknown OPTIONS key {name!r}: ignored"


def option_problems(options: Any) -> list[str]:
    """What is wrong with the values of known ``OPTIONS`` (empty if nothing): values the cache
    client would refuse or misuse. Unknown names are not problems (``unknown_options``)."""
    if not isinstance(options, dict):
        return [f"OPTIONS must be a dict, not {type(options).__name__}"]
    problems = []
    size = options.get("L1_SIZE", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"L1_SIZE must be an integer >= 0 (0: no L1), got {size!r}")
    if options.get("MODE", "linearizable") not in MODES:
        problems.append(f"MODE must be one of {', '.join(MODES)}, got {options['MODE']!r}")
    for name, low, high in (("LEASE", 0.1, 60.0), ("STALENESS", 0.0, 3600.0)):
        if not _seconds(options.get(name, OPTION_DEFAULTS[name]), low, high):
            problems.append(f"{name} must be a number of seconds in [{low:g}, {high:g}]")
    timeout = options.get("SOCKET_TIMEOUT")
    if timeout is not None and not _seconds(timeout, 0.05, 300.0):
        problems.append("SOCKET_TIMEOUT must be None or a number of seconds in [0.05, 300]")
    if not isinstance(options.get("IGNORE_EXCEPTIONS", False), bool):
        problems.append(
            f"IGNORE_EXCEPTIONS must be True or False, got {options['IGNORE_EXCEPTIONS']!r}"
        )
    return problems


def _seconds(value: Any, low: float, high: float) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high
