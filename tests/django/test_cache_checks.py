"""The RaftCache system checks: W002 (an unknown OPTIONS key), E015 (a SERIALIZER/COMPRESSOR
that cannot be loaded); E008 (bad values) is in test_checks.py with the other ids."""

from __future__ import annotations

import sys

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

CLUSTER = "n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003"
BACKEND = "coordination.cache_backend.RaftCache"


def _caches(settings, options: dict) -> None:
    settings.COORDINATION = {"CLUSTER": CLUSTER, "CLUSTER_SECRET": "s" * 32}
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "coordination": {"BACKEND": BACKEND, "OPTIONS": options},
    }


def _fails(check_id: str, *expected: str, level: str = "ERROR") -> str:
    with pytest.raises(SystemCheckError) as info:
        call_command("check", fail_level=level)
    text = str(info.value)
    assert f"(coordination.{check_id})" in text, text
    for part in expected:
        assert part in text, text
    return text


def test_w002_an_unknown_key_is_a_warning_naming_it_and_the_known_ones(settings) -> None:
    _caches(settings, {"L1_SZE": 10})
    text = _fails(
        "W002",
        "unknown OPTIONS key 'L1_SZE': ignored",
        "HINT: RaftCache knows L1_SIZE, MODE,",
        "IGNORE_EXCEPTIONS, SERIALIZER, COMPRESSOR",
        level="WARNING",
    )
    assert "ERRORS" not in text  # a warning only: the project still starts
    call_command("check")  # fail_level ERROR: passes


def test_w002_names_a_django_redis_option_as_such(settings) -> None:
    _caches(
        settings,
        {"CLIENT_CLASS": "django_redis.client.DefaultClient", "IGNORE_EXCEPTIONS": True},
    )
    _fails("W002", "'CLIENT_CLASS' is a django-redis option", level="WARNING")


def test_the_django_redis_names_of_known_classes_pass(settings) -> None:
    _caches(
        settings,
        {
            "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
            "COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor",
            "IGNORE_EXCEPTIONS": True,
            "SOCKET_TIMEOUT": 2,
            "PICKLE_VERSION": 4,
        },
    )
    call_command("check", fail_level="WARNING")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"SERIALIZER": "yaml"}, "SERIALIZER 'yaml' is unknown: use one of pickle, json, msgpack"),
        ({"COMPRESSOR": "brotli"}, "COMPRESSOR 'brotli' is unknown: use one of none, zlib"),
        ({"COMPRESSOR": "no.such.Module"}, "COMPRESSOR 'no.such.Module' cannot be imported"),
        ({"PICKLE_VERSION": 99}, "PICKLE_VERSION must be -1 (the highest) or 0-"),
    ],
)
def test_e015_a_serializer_or_compressor_that_cannot_be_loaded(settings, options, expected):
    _caches(settings, options)
    _fails("E015", expected, "HINT: SERIALIZER is pickle (default), json, msgpack")


@pytest.mark.parametrize(
    ("name", "module", "extra"), [("lz4", "lz4", "lz4"), ("zstd", "zstandard", "zstd")]
)
def test_e015_a_compressor_whose_package_is_missing(settings, monkeypatch, name, module, extra):
    """With the package not importable (None in sys.modules makes import fail), the check
    names the package and the extra to install."""
    monkeypatch.setitem(sys.modules, module, None)
    if module == "lz4":
        monkeypatch.setitem(sys.modules, "lz4.frame", None)
    _caches(settings, {"COMPRESSOR": name})
    _fails("E015", f"needs the {module} package", f"pip install raftsync[{extra}]")
