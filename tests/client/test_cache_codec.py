"""RaftCache's value codec: each serializer and compressor round trip, integers stored as
decimal whatever the serializer (so the cluster's incr works), the default's bytes unchanged,
and values written before a compressor was set still read."""

from __future__ import annotations

import datetime
import pickle
import zlib

import pytest
from django.core.exceptions import ImproperlyConfigured

from coordination.cache_codec import DEFAULT, ValueCodec, codec_problems, load
from coordination.cache_compressors import CompressorError, ZlibCompressor

SERIALIZERS = ("pickle", "json", "msgpack")
COMPRESSORS = ("none", "zlib", "lz4", "zstd")
PORTABLE = ("text", "é" * 300, 1.5, None, True, False, [1, "x", None], {"k": [1, 2]}, 2**64 + 1)


@pytest.mark.parametrize("compressor", COMPRESSORS)
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_round_trip(serializer: str, compressor: str) -> None:
    codec = ValueCodec.from_options({"SERIALIZER": serializer, "COMPRESSOR": compressor})
    values = PORTABLE if serializer != "msgpack" else PORTABLE[:-1]  # msgpack: 64-bit ints
    for value in (*values, 0, -5, 2**63 - 1, -(2**63)):
        decoded = codec.decode(codec.encode(value))
        assert decoded == value and type(decoded) is type(value), (value, decoded)


@pytest.mark.parametrize("compressor", COMPRESSORS)
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_integers_are_decimal_whatever_the_codec(serializer: str, compressor: str) -> None:
    codec = ValueCodec.from_options({"SERIALIZER": serializer, "COMPRESSOR": compressor})
    assert codec.encode(42) == b"42"
    assert codec.encode(-(2**63)) == str(-(2**63)).encode()
    assert codec.decode(b"43") == 43  # what the cluster's incr leaves
    assert codec.encode(True) != b"1" and codec.decode(codec.encode(True)) is True


@pytest.mark.parametrize("compressor", ("zlib", "lz4", "zstd"))
def test_compressors_shrink_large_values_and_leave_short_ones(compressor: str) -> None:
    plain = ValueCodec.from_options({"SERIALIZER": "json"})
    packed = ValueCodec.from_options({"SERIALIZER": "json", "COMPRESSOR": compressor})
    big = {"rows": ["the same row, again"] * 500}
    assert len(packed.encode(big)) < len(plain.encode(big)) / 10
    assert packed.encode("short") == plain.encode("short") == b'"short"'
    # a value stored before the compressor was configured is still read
    assert packed.decode(plain.encode(big)) == big


def test_the_default_writes_the_bytes_raftcache_always_stored() -> None:
    value = {"a": (1, 2), "d": datetime.date(2026, 1, 2)}
    assert DEFAULT.encode(value) == pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    assert DEFAULT.decode(pickle.dumps(value, pickle.HIGHEST_PROTOCOL)) == value
    assert ValueCodec.from_options({"PICKLE_VERSION": 2}).encode("x") == pickle.dumps("x", 2)


def test_json_limits() -> None:
    codec = ValueCodec.from_options({"SERIALIZER": "json"})
    assert codec.decode(codec.encode((1, 2))) == [1, 2]  # tuples come back as lists
    assert codec.decode(codec.encode(datetime.date(2026, 1, 2))) == "2026-01-02"
    for name in ("json", "msgpack"):  # what Django's tests expect as pickle.PickleError
        with pytest.raises(TypeError):
            ValueCodec.from_options({"SERIALIZER": name}).encode(object())


def test_django_redis_paths_and_custom_classes() -> None:
    codec = ValueCodec.from_options(
        {
            "SERIALIZER": "django_redis.serializers.msgpack.MSGPackSerializer",
            "COMPRESSOR": "coordination.cache_compressors.ZlibCompressor",
        }
    )
    assert type(codec.compressor) is ZlibCompressor
    assert codec.decode(codec.encode(b"x" * 100)) == b"x" * 100
    assert zlib.decompress(codec.encode(b"x" * 100))  # really zlib on the wire


def test_not_compressed_data_is_a_compressor_error() -> None:
    for name in ("zlib", "lz4", "zstd"):
        with pytest.raises(CompressorError):
            load("COMPRESSOR", {"COMPRESSOR": name}).decompress(pickle.dumps("x" * 50))


def test_bad_names_are_improperly_configured() -> None:
    with pytest.raises(ImproperlyConfigured, match="SERIALIZER 'yaml' is unknown"):
        load("SERIALIZER", {"SERIALIZER": "yaml"})
    with pytest.raises(ImproperlyConfigured, match="must be a name or a dotted path"):
        load("COMPRESSOR", {"COMPRESSOR": 3})
    assert codec_problems({"SERIALIZER": "JSON", "COMPRESSOR": "ZSTD"}) == []  # any case
    assert len(codec_problems({"SERIALIZER": "x", "COMPRESSOR": "y"})) == 2


def test_a_missing_package_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "lz4.frame", None)  # import fails, as if not installed
    with pytest.raises(ImproperlyConfigured, match=r"lz4 package.*pip install raftsync\[lz4\]"):
        ValueCodec.from_options({"COMPRESSOR": "lz4"})
