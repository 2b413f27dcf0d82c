"""A cached value's bytes: integers as ASCII decimal, everything else serialized and compressed.

Integers (``int``, not ``bool``, in the signed 64-bit range) are stored as decimal digits
whatever the serializer, so the cluster can ``incr``/``decr`` them atomically (as django-redis
stores them as plain Redis integers). Any other value goes through the alias's serializer, then
its compressor. Reading reverses it: digits are an integer; otherwise the compressor is asked to
decompress and, if the data is not compressed (short values are stored as they are, and so are
values written before a compressor was configured), the bytes are read as stored.

No serializer here can produce bare digits for a non-integer (pickle starts with 0x80, JSON of
a non-integer is quoted, bracketed, a word or has a point, msgpack of anything but a small
integer is longer than a digit), nor can a compressor's output (its frame magic comes first).
So the default (pickle, no compressor) writes exactly the bytes ``RaftCache`` always has.

``SERIALIZER`` and ``COMPRESSOR`` name a class: a short name (``json``, ``zlib``...),
django-redis's dotted path of the same class (so its settings work unchanged, without
django-redis installed), or any dotted path of a class with the same interface.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from coordination.cache_compressors import COMPRESSORS, BaseCompressor, CompressorError
from coordination.cache_serializers import SERIALIZERS, BaseSerializer

_DECIMAL = re.compile(rb"-?[0-9]{1,19}")

#: django-redis's classes, by dotted path, and ours that read and write the same bytes.
DJANGO_REDIS_SERIALIZERS = {
    "django_redis.serializers.pickle.PickleSerializer": "pickle",
    "django_redis.serializers.json.JSONSerializer": "json",
    "django_redis.serializers.msgpack.MSGPackSerializer": "msgpack",
}
DJANGO_REDIS_COMPRESSORS = {
    "django_redis.compressors.identity.IdentityCompressor": "none",
    "django_redis.compressors.zlib.ZlibCompressor": "zlib",
    "django_redis.compressors.lz4.Lz4Compressor": "lz4",
    "django_redis.compressors.zstd.ZStdCompressor": "zstd",
}
_KINDS: dict[str, tuple[dict[str, Any], dict[str, str], str]] = {
    "SERIALIZER": (SERIALIZERS, DJANGO_REDIS_SERIALIZERS, "pickle"),
    "COMPRESSOR": (COMPRESSORS, DJANGO_REDIS_COMPRESSORS, "none"),
}


def load(option: str, options: Mapping[str, Any]) -> Any:
    """The ``SERIALIZER`` or ``COMPRESSOR`` object ``options`` name, built with ``options``.
    ``ImproperlyConfigured`` says what is wrong: an unknown name, a path that does not import,
    a missing optional package (with its ``pip install``), or a bad option of the class."""
    short_names, aliases, default = _KINDS[option]
    spec = options.get(option) or default
    if not isinstance(spec, str):
        raise ImproperlyConfigured(
            f"RaftCache {option} must be a name or a dotted path, got {spec!r}"
        )
    name = aliases.get(spec, spec)
    cls = short_names.get(name.lower())
    if cls is None:
        if "." not in name:
            raise ImproperlyConfigured(
                f"RaftCache {option} {spec!r} is unknown: use one of "
                f"{', '.join(short_names)}, or the dotted path of a class"
            )
        try:
            cls = import_string(name)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"RaftCache {option} {spec!r} cannot be imported: {exc}"
            ) from exc
    try:
        return cls(options)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"RaftCache {option} {spec!r}: {exc}") from exc


def codec_problems(options: Mapping[str, Any]) -> list[str]:
    """Why the ``SERIALIZER``/``COMPRESSOR`` of ``options`` cannot be used (empty if they can)."""
    problems = []
    for option in _KINDS:
        try:
            load(option, options)
        except ImproperlyConfigured as exc:
            problems.append(str(exc))
    return problems


class ValueCodec:
    """Bytes for the cluster from a value, and back (see the module's docstring)."""

    def __init__(self, serializer: BaseSerializer, compressor: BaseCompressor) -> None:
        self.serializer = serializer
        self.compressor = compressor

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ValueCodec:
        return cls(load("SERIALIZER", options), load("COMPRESSOR", options))

    def encode(self, value: Any) -> bytes:
        if type(value) is int and -(2**63) <= value < 2**63:
            return str(value).encode()
        return self.compressor.compress(self.serializer.dumps(value))

    def decode(self, data: bytes) -> Any:
        if _DECIMAL.fullmatch(data):
            return int(data)
        with contextlib.suppress(CompressorError):  # else stored uncompressed (short, or
            data = self.compressor.decompress(data)  # written before the compressor was set)
        return self.serializer.loads(data)


#: The default codec (pickle, no compressor): what ``RaftCache`` has always stored.
DEFAULT = ValueCodec.from_options({})
