"""How ``RaftCache`` shrinks a serialized value before it is stored (``OPTIONS["COMPRESSOR"]``).

The interface and semantics are django-redis's, so a compressor written for it works here by
its dotted path: built with the alias's ``OPTIONS``; ``compress`` leaves values of
``min_length`` bytes or fewer as they are (compressing them would only add a header), and
``decompress`` raises ``CompressorError`` for data that is not compressed, so the codec reads
such values as stored. That also means values written before a compressor was turned on are
still read.

- ``none`` (default): store the serializer's bytes.
- ``zlib``: the standard library; level 6.
- ``lz4`` (``pip install raftsync[lz4]``): LZ4 frames, fast, a smaller ratio.
- ``zstd`` (``pip install raftsync[zstd]``): Zstandard frames (the ``zstandard`` package),
  level 3; frames from any Zstandard library (django-redis uses ``pyzstd``) read the same.

The cluster's 1 MiB value limit applies to the bytes stored, so compression lets a larger
value fit, and a compressed value costs less on the wire, in the log and in every node's memory.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from django.core.exceptions import ImproperlyConfigured


class CompressorError(Exception):
    """``decompress`` was given data that is not compressed (stored as is)."""


def require(module: str, package: str, extra: str) -> ModuleType:
    """Import an optional package, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImproperlyConfigured(
            f"RaftCache COMPRESSOR {extra!r} needs the {package} package, which is not "
            f"installed: pip install raftsync[{extra}]"
        ) from None


class BaseCompressor:
    """``compress(bytes) -> bytes``; ``decompress(bytes) -> bytes`` or ``CompressorError``."""

    min_length = 15  # django-redis's: shorter values are stored uncompressed

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes) -> bytes:
        return data


class IdentityCompressor(BaseCompressor):
    pass


class ZlibCompressor(BaseCompressor):
    level = 6

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, self.level) if len(data) > self.min_length else data

    def decompress(self, data: bytes) -> bytes:
        try:
            return zlib.decompress(data)
        except zlib.error as exc:
            raise CompressorError(str(exc)) from exc


class Lz4Compressor(BaseCompressor):
    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self._frame = require("lz4.frame", "lz4", "lz4")

    def compress(self, data: bytes) -> bytes:
        return self._frame.compress(data) if len(data) > self.min_length else data

    def decompress(self, data: bytes) -> bytes:
        try:
            return self._frame.decompress(data)
        except RuntimeError as exc:  # lz4.frame's error for data that is not a frame
            raise CompressorError(str(exc)) from exc


class ZstdCompressor(BaseCompressor):
    level = 3

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        zstd = require("zstandard", "zstandard", "zstd")
        self._error = zstd.ZstdError
        self._compressor = zstd.ZstdCompressor(level=self.level)
        self._decompressor = zstd.ZstdDecompressor()

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data) if len(data) > self.min_length else data

    def decompress(self, data: bytes) -> bytes:
        try:
            # A stream reader, not decompress(): a frame without its content size (other
            # Zstandard libraries may write one) is read too.
            return self._decompressor.decompressobj().decompress(data)
        except self._error as exc:
            raise CompressorError(str(exc)) from exc


#: Short names (``OPTIONS["COMPRESSOR"] = "zlib"``).
COMPRESSORS: dict[str, type[BaseCompressor]] = {
    "none": IdentityCompressor,
    "zlib": ZlibCompressor,
    "lz4": Lz4Compressor,
    "zstd": ZstdCompressor,
}
