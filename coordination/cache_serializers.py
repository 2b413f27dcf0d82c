"""How ``RaftCache`` turns a Python value into bytes (``OPTIONS["SERIALIZER"]``).

The interface is django-redis's (a class built with the alias's ``OPTIONS``, with ``dumps``
and ``loads``), so a serializer written for django-redis works here by its dotted path. Integers
never reach a serializer: ``cache_codec`` stores them as ASCII decimal so the cluster can
``incr`` them, whatever the serializer.

- ``pickle`` (default): any picklable object; the bytes ``RaftCache`` has always stored.
  ``PICKLE_VERSION`` (django-redis's option) picks the protocol, -1 (default) the highest.
- ``json``: Django's JSON encoder (dates, decimals and UUIDs become strings and come back as
  strings; tuples come back as lists); no arbitrary objects. Readable by other languages.
- ``msgpack``: compact and fast; the same limits as JSON, plus bytes and no Django encoder.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from typing import Any

import msgpack
from django.core.serializers.json import DjangoJSONEncoder


class BaseSerializer:
    """``dumps(value) -> bytes`` and ``loads(bytes) -> value``; built with the OPTIONS dict."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options

    def dumps(self, value: Any) -> bytes:
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:
        raise NotImplementedError


def pickle_protocol(options: Mapping[str, Any]) -> int:
    """``PICKLE_VERSION``: -1 (default) or a protocol this Python can write (ValueError else)."""
    version = options.get("PICKLE_VERSION", -1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"PICKLE_VERSION must be an integer, got {version!r}")
    if not (version == -1 or 0 <= version <= pickle.HIGHEST_PROTOCOL):
        raise ValueError(
            f"PICKLE_VERSION must be -1 (the highest) or 0-{pickle.HIGHEST_PROTOCOL}, got {version}"
        )
    return pickle.HIGHEST_PROTOCOL if version == -1 else version


class PickleSerializer(BaseSerializer):
    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.protocol = pickle_protocol(options)

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, self.protocol)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # our own authenticated cluster, as with Django's backends


class JSONSerializer(BaseSerializer):
    encoder_class: type[json.JSONEncoder] = DjangoJSONEncoder

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, cls=self.encoder_class, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class MSGPackSerializer(BaseSerializer):
    def dumps(self, value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True)

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False)


#: Short names (``OPTIONS["SERIALIZER"] = "json"``).
SERIALIZERS: dict[str, type[BaseSerializer]] = {
    "pickle": PickleSerializer,
    "json": JSONSerializer,
    "msgpack": MSGPackSerializer,
}
