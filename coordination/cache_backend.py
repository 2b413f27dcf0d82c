"""Django cache backend on the replicated cache (with the per-process L1 of ``cache_client``).

    CACHES = {
        "coordination": {
            "BACKEND": "coordination.cache_backend.RaftCache",
            "TIMEOUT": 300,
            "OPTIONS": {"L1_SIZE": 1000, "MODE": "linearizable", "LEASE": 5.0},
        },
    }

``LOCATION`` may name the cluster (``"host:port,host:port"``); by default the project's
``COORDINATION`` settings are used (``OPTIONS["SECRET"]`` overrides the cluster secret).

Values: integers are stored as ASCII decimal, so ``incr``/``decr`` run on the cluster atomically;
everything else is pickled (as Django's own backends do).

Keys: Django's full key (prefix, version, key) is used as is when it fits the cluster's key
rules (at most 200 bytes of UTF-8 from ``[A-Za-z0-9_.:/@+=#{}[]-]``), else replaced by a SHA-256
digest with a readable prefix, so any string works. As with Django's built-in backends, a key
memcached would refuse (over 250 characters, or with spaces or control characters) still gives
a ``CacheKeyWarning``, so code stays portable; a key that is not a string, or has characters
UTF-8 cannot encode (lone surrogates), raises ``InvalidCacheKey``: no digest can be made of it.

Timeouts: ``None`` never expires; ``0`` or less expires at once (the key is deleted), as Django
specifies; any positive number is accepted, and one longer than the cluster's longest TTL
(``CACHE_TTL_MS``, 30 days) is stored with that TTL. Memcached reads such values as absolute
times and Redis keeps them as given; here the key may simply expire sooner, as any cache entry
may be evicted sooner. (The cluster's limit itself is not raised: a node replaying log entries
it once refused would then apply them, and disagree with nodes that did not replay them.)
"""

from __future__ import annotations

import hashlib
import pickle
import re
import threading
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache, InvalidCacheKey

from coordination.exceptions import UnknownKey
from coordination.primitives.limits import CACHE_TTL_MS, NAME_MAX_BYTES, NAME_PATTERN

_DECIMAL = re.compile(rb"-?[0-9]{1,19}")
_MISSING = object()

#: ``OPTIONS`` this backend understands, with their defaults (``manage.py check`` reports others).
OPTION_DEFAULTS: dict[str, Any] = {
    "L1_SIZE": 1000,
    "MODE": "linearizable",
    "LEASE": 5.0,
    "STALENESS": 1.0,
    "REDIS_URL": "",
    "SECRET": "",
}
MODES = ("linearizable", "bounded")
#: The longest TTL the cluster stores (seconds); a longer Django timeout is stored with it.
MAX_TIMEOUT = CACHE_TTL_MS[1] / 1000


def option_problems(options: Any) -> list[str]:
    """What is wrong with a ``RaftCache`` ``OPTIONS`` dict (empty if nothing): unknown names
    (typos) and values the cache client would refuse or misuse. Used by the system check, and
    on first use so a bad option is refused rather than half-applied."""
    if not isinstance(options, dict):
        return [f"OPTIONS must be a dict, not {type(options).__name__}"]
    problems = [f"unknown option {name!r}" for name in options if name not in OPTION_DEFAULTS]
    size = options.get("L1_SIZE", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"L1_SIZE must be an integer >= 0 (0: no L1), got {size!r}")
    if options.get("MODE", "linearizable") not in MODES:
        problems.append(f"MODE must be one of {', '.join(MODES)}, got {options['MODE']!r}")
    for name, low, high in (("LEASE", 0.1, 60.0), ("STALENESS", 0.0, 3600.0)):
        value = options.get(name, OPTION_DEFAULTS[name])
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (low <= value <= high)
        ):
            problems.append(f"{name} must be a number of seconds in [{low:g}, {high:g}]")
    return problems


def encode_value(value: Any) -> bytes:
    if type(value) is int and -(2**63) <= value < 2**63:
        return str(value).encode()
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def decode_value(data: bytes) -> Any:
    if _DECIMAL.fullmatch(data):
        return int(data)
    return pickle.loads(data)  # our own authenticated cluster, as with Django's backends


def cluster_key(full_key: str) -> str:
    """Django's key when the cluster accepts it; else a digest (keys may hold any character)."""
    if len(full_key.encode()) <= NAME_MAX_BYTES and NAME_PATTERN.fullmatch(full_key):
        return full_key
    digest = hashlib.sha256(full_key.encode()).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9_.:-]", "_", full_key)[:40]
    return f"{readable}#{digest}"


class RaftCache(BaseCache):
    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._location = location
        self._options = params.get("OPTIONS", {})
        self._client: Any = None
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The process's cache client, created on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        from coordination.client.cache import Cache
        from coordination.client.coordinator import Coordinator

        opts = self._options
        problems = option_problems(opts)
        if problems:  # `manage.py check` reports these as coordination.E008 (Django's own
            # cache check builds every backend, so refusing in __init__ would be a traceback)
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"RaftCache OPTIONS: {'; '.join(problems)}")
        if self._location:
            from coordination.node import node_settings

            secret = opts.get("SECRET") or node_settings.cluster_secret()
            coord = Coordinator(self._location, secret)
        else:
            coord = Coordinator.from_settings()
        return Cache(
            coord,
            l1_size=opts.get("L1_SIZE", OPTION_DEFAULTS["L1_SIZE"]),
            mode=opts.get("MODE", OPTION_DEFAULTS["MODE"]),
            lease=opts.get("LEASE", OPTION_DEFAULTS["LEASE"]),
            staleness=opts.get("STALENESS", OPTION_DEFAULTS["STALENESS"]),
            redis_url=opts.get("REDIS_URL") or None,
        )

    def validate_key(self, key: str) -> None:
        """Django's ``CacheKeyWarning`` for keys memcached would refuse, as the built-in
        backends give it (the key still works here: awkward ones are hashed), and
        ``InvalidCacheKey`` for a key no digest can be made of (not a string, or not
        encodable as UTF-8)."""
        if not isinstance(key, str):
            raise InvalidCacheKey(f"Cache key must be a string, not {type(key).__name__}: {key!r}")
        try:
            key.encode()
        except UnicodeEncodeError as exc:
            raise InvalidCacheKey(f"Cache key is not encodable as UTF-8 ({exc}): {key!r}") from None
        super().validate_key(key)

    def _key(self, key: Any, version: int | None) -> str:
        return cluster_key(self.make_and_validate_key(key, version=version))

    def _ttl(self, timeout: Any) -> float | None:
        """Seconds to live; None = forever; <= 0 = already expired. Longer than the cluster's
        longest TTL: that TTL (Django accepts any positive timeout; the cluster refuses more)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else min(float(timeout), MAX_TIMEOUT)

    # -- the Django cache API -------------------------------------------------------------------

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None):
        ttl = self._ttl(timeout)
        name = self._key(key, version)
        if ttl is not None and ttl <= 0:
            return self.get(key, _MISSING, version) is _MISSING
        return self.client.add(name, encode_value(value), ttl) is not None

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        data = self.client.get(self._key(key, version))
        return default if data is None else decode_value(data)

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None):
        ttl = self._ttl(timeout)
        name = self._key(key, version)
        if ttl is not None and ttl <= 0:
            self.client.delete(name)
            return
        self.client.set(name, encode_value(value), ttl)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        ttl = self._ttl(timeout)
        name = self._key(key, version)
        if ttl is not None and ttl <= 0:
            return self.client.delete(name)
        return self.client.touch(name, ttl)

    def delete(self, key: Any, version: Any = None) -> bool:
        return self.client.delete(self._key(key, version))

    def get_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        names = {self._key(key, version): key for key in keys}
        found = self.client.get_many(list(names))
        return {names[name]: decode_value(data) for name, data in found.items()}

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None):
        ttl = self._ttl(timeout)
        items = {self._key(key, version): encode_value(value) for key, value in data.items()}
        if ttl is not None and ttl <= 0:
            self.client.delete_many(list(items))
        elif items:
            self.client.set_many(items, ttl)
        return []

    def delete_many(self, keys: Any, version: Any = None) -> None:
        names = [self._key(key, version) for key in keys]
        if names:
            self.client.delete_many(names)

    def has_key(self, key: Any, version: Any = None) -> bool:
        return self.client.get(self._key(key, version)) is not None

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        try:
            return self.client.incr(self._key(key, version), delta)
        except UnknownKey:
            raise ValueError(f"Key '{key}' not found") from None

    def clear(self) -> None:
        self.client.clear()

    def close(self, **kwargs: Any) -> None:
        """Django calls this after each request; the connection is kept for the next one."""
