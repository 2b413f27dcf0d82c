"""Django cache backend on the replicated cache (with the per-process L1 of ``cache_client``).

    CACHES = {
        "coordination": {
            "BACKEND": "coordination.cache_backend.RaftCache",
            "TIMEOUT": 300,
            "OPTIONS": {"L1_SIZE": 1000, "MODE": "linearizable", "LEASE": 5.0},
        },
    }

The options (names, defaults, checks) are in ``cache_options``; django-redis's names are used
where they exist (``IGNORE_EXCEPTIONS``, ``SERIALIZER``, ``COMPRESSOR``, ``PICKLE_VERSION``,
``SOCKET_TIMEOUT``), so a django-redis ``OPTIONS`` dict works here unchanged.

``LOCATION`` may name the cluster (``"host:port,host:port"``); by default the project's
``COORDINATION`` settings are used (``OPTIONS["SECRET"]`` overrides the cluster secret).

Values: integers are stored as ASCII decimal, so ``incr``/``decr`` run on the cluster atomically;
everything else is serialized (pickle by default, as Django's own backends do) and optionally
compressed (``cache_codec``). A value over the cluster's 1 MiB limit, counted in the bytes
stored, raises ``LimitExceeded`` before anything is sent.

Outages: with ``IGNORE_EXCEPTIONS`` (django-redis's option, default False) an error that means
the cluster is unavailable (``ClusterUnavailable``, ``Timeout``, ``NotLeader``: the rows of
``coordination.errors`` answered as ``unavailable``) makes a read a miss and a write a no-op,
returning what django-redis returns, and is logged at WARNING on the logger
``coordination.cache_backend`` (one line: the operation and the error). Any other error (a bad
key, a value too large, a bad option, a wrong secret) still raises.

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
import logging
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache, InvalidCacheKey

from coordination import errors
from coordination.cache_codec import DEFAULT, ValueCodec
from coordination.cache_options import OPTION_DEFAULTS, option_problems
from coordination.exceptions import UnknownKey
from coordination.primitives.limits import (
    CACHE_TTL_MS,
    NAME_MAX_BYTES,
    NAME_PATTERN,
    VALUE_MAX_BYTES,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
_MISSING = object()

#: What ``IGNORE_EXCEPTIONS`` ignores: the errors the one table answers as ``unavailable``.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = tuple(
    {entry.exception for entry in errors.CODES.values() if entry.api_code == errors.UNAVAILABLE}
)
#: The longest TTL the cluster stores (seconds); a longer Django timeout is stored with it.
MAX_TIMEOUT = CACHE_TTL_MS[1] / 1000


def encode_value(value: Any) -> bytes:
    """The default codec's bytes (pickle, no compressor)."""
    return DEFAULT.encode(value)


def decode_value(data: bytes) -> Any:
    return DEFAULT.decode(data)


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
        opts = self._options if isinstance(self._options, dict) else {}
        self._ignore_exceptions = opts.get("IGNORE_EXCEPTIONS") is True
        self._client: Any = None
        self._codec: ValueCodec | None = None
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

    @property
    def codec(self) -> ValueCodec:
        """The alias's serializer and compressor, loaded on first use (``ImproperlyConfigured``
        if they cannot be: ``manage.py check`` reports it first, as coordination.E015)."""
        if self._codec is None:
            self._codec = ValueCodec.from_options(self._options)
        return self._codec

    def _connect(self) -> Any:
        from coordination.client.cache import Cache
        from coordination.client.coordinator import Coordinator

        opts = self._options
        problems = option_problems(opts)
        if problems:  # `manage.py check` reports these as coordination.E008 (Django's own
            # cache check builds every backend, so refusing in __init__ would be a traceback)
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"RaftCache OPTIONS: {'; '.join(problems)}")
        timeout = {"timeout": opts["SOCKET_TIMEOUT"]} if opts.get("SOCKET_TIMEOUT") else {}
        if self._location:
            from coordination.node import node_settings

            secret = opts.get("SECRET") or node_settings.cluster_secret()
            coord = Coordinator(self._location, secret, **timeout)
        else:
            coord = Coordinator.from_settings(**timeout)
        try:
            return Cache(
                coord,
                l1_size=opts.get("L1_SIZE", OPTION_DEFAULTS["L1_SIZE"]),
                mode=opts.get("MODE", OPTION_DEFAULTS["MODE"]),
                lease=opts.get("LEASE", OPTION_DEFAULTS["LEASE"]),
                staleness=opts.get("STALENESS", OPTION_DEFAULTS["STALENESS"]),
                redis_url=opts.get("REDIS_URL") or None,
            )
        except BaseException:
            coord.close()  # e.g. no session could be opened: the next call tries again
            raise

    def _guard(self, op: str, fallback: T, call: Callable[[], T]) -> T:
        """``call()``; with ``IGNORE_EXCEPTIONS``, an unavailable cluster gives ``fallback``
        (and a WARNING line) instead of the error. Other errors always raise."""
        if not self._ignore_exceptions:
            return call()
        try:
            return call()
        except UNAVAILABLE_ERRORS as exc:
            logger.warning(
                "RaftCache %s ignored (IGNORE_EXCEPTIONS): %s: %s", op, type(exc).__name__, exc
            )
            return fallback

    def _encode(self, value: Any) -> bytes:
        """The stored bytes; over the cluster's value limit raises ``LimitExceeded`` here, so
        a too-large value is refused even when the cluster is unreachable."""
        data = self.codec.encode(value)
        if len(data) > VALUE_MAX_BYTES:
            raise errors.build(
                errors.LIMIT,
                f"cache value is {len(data)} bytes as stored (serialized and compressed), "
                f"over the {VALUE_MAX_BYTES}-byte limit",
            )
        return data

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
    # Under IGNORE_EXCEPTIONS an outage returns what django-redis returns: a miss for reads
    # (``get_many`` {}), None for writes, False where Django's contract is a bool (``add``,
    # ``touch``, ``delete``, ``has_key``), every key for ``set_many`` (the keys not stored).

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None):
        ttl = self._ttl(timeout)
        name = self._key(key, version)
        if ttl is not None and ttl <= 0:
            return self.get(key, _MISSING, version) is _MISSING
        data = self._encode(value)
        return self._guard("add", False, lambda: self.client.add(name, data, ttl) is not None)

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        name = self._key(key, version)
        data = self._guard("get", None, lambda: self.client.get(name))
        return default if data is None else self.codec.decode(data)

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None):
        ttl = self._ttl(timeout)
        name = self._key(key, version)
        if ttl is not None and ttl <= 0:
            self._guard("set", None, lambda: self.client.delete(name))
            return
        data = self._encode(value)
        self._guard("set", None, lambda: self.client.set(name, data, ttl))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        ttl = self._ttl(timeout)
        name = self._key(key, version)
        if ttl is not None and ttl <= 0:
            return self._guard("touch", False, lambda: self.client.delete(name))
        return self._guard("touch", False, lambda: self.client.touch(name, ttl))

    def delete(self, key: Any, version: Any = None) -> bool:
        name = self._key(key, version)
        return self._guard("delete", False, lambda: self.client.delete(name))

    def get_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        names = {self._key(key, version): key for key in keys}
        found = self._guard("get_many", {}, lambda: self.client.get_many(list(names)))
        return {names[name]: self.codec.decode(data) for name, data in found.items()}

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None):
        ttl = self._ttl(timeout)
        keys = {self._key(key, version): key for key in data}
        items = {name: self._encode(data[key]) for name, key in keys.items()}
        if ttl is not None and ttl <= 0:
            self._guard("set_many", None, lambda: self.client.delete_many(list(items)))
        elif items:
            stored = self._guard("set_many", None, lambda: self.client.set_many(items, ttl))
            if stored is None:
                return list(data)  # not stored: Django's return value names failed keys
        return []

    def delete_many(self, keys: Any, version: Any = None) -> None:
        names = [self._key(key, version) for key in keys]
        if names:
            self._guard("delete_many", None, lambda: self.client.delete_many(names))

    def has_key(self, key: Any, version: Any = None) -> bool:
        name = self._key(key, version)
        return self._guard("has_key", None, lambda: self.client.get(name)) is not None

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        name = self._key(key, version)
        try:
            return self._guard("incr", None, lambda: self.client.incr(name, delta))
        except UnknownKey:
            raise ValueError(f"Key '{key}' not found") from None

    def clear(self) -> None:
        self._guard("clear", None, lambda: self.client.clear())

    def close(self, **kwargs: Any) -> None:
        """Django calls this after each request; the connection is kept for the next one."""
