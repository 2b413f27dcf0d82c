"""Django's own cache test classes (vendored_django_cache/tests.py) pointed at RaftCache.

Each test_django_cache_<mode>.py subclasses Django's classes with ``RaftCacheClass`` first: at
class set-up their ``CACHES`` (a LocMemCache per alias in Django's source) become RaftCache
aliases on the module's 3-node cluster, with the mode's ``OPTIONS``; nothing else of the
tests changes. Django's tests assume every alias shares one store and that stores named by
``LOCATION`` are separate; here every alias is a client of the one cluster, so an alias that
had a ``LOCATION`` gets it as its ``KEY_PREFIX`` instead.

What is expected to differ is a *named skip*: the test method overridden by ``unittest.skip``
with one of the reasons below, so a run lists every difference and why:

- every mode: ``test_cull``, ``test_zero_cull``, ``test_cull_delete_when_store_empty``
  (``NO_CULLING``: no entry-count culling; Django's Redis tests leave these out too);
- every mode but the default: ``test_expiration``, ``test_touch``, ``test_set_many_expiration``,
  ``test_forever_timeout``, and the middleware's ``test_view_decorator`` and
  ``test_cache_page_timeout`` (``SLEEPS_IN_DEFAULT_MODE_ONLY``: 17 s of sleeps, run once);
- bounded: ``test_cache_versioning_incr_decr`` (``BOUNDED_STALENESS``);
- the json and msgpack serializers (test_django_cache_codecs.py): the tests that cache what
  only pickle can store, model instances, responses (the cache middleware's), a function and a
  class, a tuple, and the two that expect ``pickle.PickleError`` (``serializer_skips``); json
  also ``test_binary_string`` (no bytes in JSON). The compressor modes skip nothing more.

Everything else runs unchanged and passes, including what raftsync used to get wrong:
``test_long_timeout`` (a timeout over 30 days), ``test_invalid_key_characters`` and
``test_invalid_key_length`` (``CacheKeyWarning``), and every test with ``L1_SIZE = 0``.

Set-up, not differences: Django's hook for a backend's own error type, as Django's Redis tests
use it (``incr`` of a value that is not an integer raises ``NotInteger``:
``incr_decr_type_error``); the two settings Django's own test run has (``USE_TZ = False``,
``LANGUAGE_CODE = "en"``); the vendored app installed for the class whose tests pickle ``Poll``
instances; ``databases`` for pytest-django (see ``RaftCacheClass``); and in bounded mode a
tearDown that clears every alias, not only the default one, since each alias keeps its own L1.
"""

from __future__ import annotations

import unittest
from typing import Any, ClassVar

from django.conf import settings
from django.core.cache import caches
from vendored_django_cache import tests as django_tests

from coordination.client import cache as cache_client
from coordination.exceptions import NotInteger
from raft_node.testing.launcher import LocalCluster

BACKEND = "coordination.cache_backend.RaftCache"
APP = "vendored_django_cache"  # the vendored package, installed for the class using its Poll

#: The module's cluster (set by tests/conformance/conftest.py for each test module).
CLUSTER: LocalCluster | None = None
#: What Django's own test run has and this project's settings do not (tests/test_sqlite.py,
#: tests/runtests.py of the sdist): the cache keys the tests expect have no time zone suffix.
DJANGO_TEST_SETTINGS = {"USE_TZ": False, "LANGUAGE_CODE": "en"}

# -- the expected differences ------------------------------------------------------------------

NO_CULLING = (
    "RaftCache has no MAX_ENTRIES/CULL_FREQUENCY: the cluster bounds the cache by bytes, "
    "evicting the least recently changed keys (to the Redis mirror), not by entry count"
)
SLEEPS_IN_DEFAULT_MODE_ONLY = (
    "waits 2-7 s for keys to expire: run in the default mode only "
    "(test_django_cache_default.py) to keep the suite short; expiry is decided by the "
    "cluster's log time, whatever the client's mode"
)
BOUNDED_STALENESS = (
    "bounded mode: each alias is its own client, whose L1 may serve a value up to STALENESS "
    "(1 s) old after another alias changed it, as another process's may; the test expects "
    "every alias to see one coherent store (the linearizable default does)"
)


def skipped(reason: str) -> Any:
    """A test method that is skipped with ``reason`` (overrides Django's of the same name)."""

    @unittest.skip(reason)
    def test(self: Any) -> None:
        raise AssertionError("skipped")

    return test


class NoCulling:
    """Named skips for every mode: the culling tests (Django's Redis tests skip them too)."""

    test_cull = skipped(NO_CULLING)
    test_zero_cull = skipped(NO_CULLING)
    test_cull_delete_when_store_empty = skipped(NO_CULLING)


class ExpiryOnce:
    """Named skips for the modes other than the default: the sleep-heavy expiry tests."""

    test_expiration = skipped(SLEEPS_IN_DEFAULT_MODE_ONLY)
    test_touch = skipped(SLEEPS_IN_DEFAULT_MODE_ONLY)
    test_set_many_expiration = skipped(SLEEPS_IN_DEFAULT_MODE_ONLY)
    test_forever_timeout = skipped(SLEEPS_IN_DEFAULT_MODE_ONLY)


class MiddlewareExpiryOnce:
    test_view_decorator = skipped(SLEEPS_IN_DEFAULT_MODE_ONLY)
    test_cache_page_timeout = skipped(SLEEPS_IN_DEFAULT_MODE_ONLY)


class BoundedStaleness:
    """Named skips of the bounded mode: one alias reads a key another alias just changed."""

    test_cache_versioning_incr_decr = skipped(BOUNDED_STALENESS)


# -- pointing Django's classes at the cluster --------------------------------------------------


def raft_caches(original: dict[str, dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
    """``original`` (a Django test class's CACHES) with every alias on RaftCache and the
    module's cluster; aliases keep their KEY_PREFIX, VERSION, KEY_FUNCTION and TIMEOUT."""
    if CLUSTER is None:
        raise RuntimeError("no cluster: tests/conformance/conftest.py starts one per module")
    location = ",".join(f"{h}:{p}" for h, p in CLUSTER.addresses.values())
    out = {}
    for alias, params in original.items():
        params = {k: v for k, v in params.items() if k not in ("BACKEND", "OPTIONS")}
        separate_store = params.pop("LOCATION", "")
        if separate_store:
            params.setdefault("KEY_PREFIX", separate_store)
        params.update(
            BACKEND=BACKEND,
            LOCATION=location,
            OPTIONS={"SECRET": CLUSTER.secret, **options},
        )
        out[alias] = params
    return out


def base_cache_tests_caches() -> dict[str, dict[str, Any]]:
    """The aliases Django's BaseCacheTests use (``caches_setting_for_tests``), without the
    culling ones, and with ``custom_key2``'s dotted path pointing at the vendored module."""
    setting = django_tests.caches_setting_for_tests(
        base={"BACKEND": BACKEND}, exclude={"cull", "zero_cull"}
    )
    setting["custom_key2"]["KEY_FUNCTION"] = f"{django_tests.__name__}.custom_key_func"
    return setting


class RaftCacheClass:
    """Mixin (first in the bases) for a Django cache test class: its settings' CACHES on
    RaftCache in the mode of ``raft_options``. Every cache client the class opened (Django makes
    one per alias and thread) is closed when the class ends, so no session outlives it."""

    raft_options: ClassVar[dict[str, Any]] = {}
    uses_poll: ClassVar[bool] = False  # install the vendored app (pickled Poll instances)
    # A response's close() sends request_finished, whose close_old_connections asks the open
    # test database connection for its autocommit state: pytest-django refuses that to a
    # SimpleTestCase without databases (Django's own runner lets it through). No test queries.
    databases: ClassVar[set[str]] = {"default"}
    _overridden_settings: ClassVar[dict[str, Any] | None]

    @classmethod
    def django_caches(cls) -> dict[str, dict[str, Any]]:
        return (cls._overridden_settings or {})["CACHES"]

    @classmethod
    def setUpClass(cls) -> None:
        before = set(cache_client._open_caches)
        overrides = {
            **DJANGO_TEST_SETTINGS,
            **(cls._overridden_settings or {}),
            "CACHES": raft_caches(cls.django_caches(), cls.raft_options),
        }
        if cls.uses_poll:
            overrides["INSTALLED_APPS"] = [*settings.INSTALLED_APPS, APP]
        cls._overridden_settings = overrides
        super().setUpClass()  # type: ignore[misc]
        cls.addClassCleanup(_close_clients_opened_since, before)  # type: ignore[attr-defined]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        if self.raft_options.get("MODE") == "bounded":
            # Django clears the default alias only (one store for all); every other alias's
            # L1 could carry a value into the next test for up to STALENESS.
            for backend in caches.all(initialized_only=True):
                backend.clear()


class RaftBaseCacheTests(RaftCacheClass):
    """BaseCacheTests' settings: the aliases it names, and the vendored Poll model's app."""

    uses_poll = True
    incr_decr_type_error = NotInteger

    @classmethod
    def django_caches(cls) -> dict[str, dict[str, Any]]:
        return base_cache_tests_caches()


def _close_clients_opened_since(before: set[Any]) -> None:
    for client in set(cache_client._open_caches) - before:
        client.close()
        client.coord.close()


# -- one module, several modes ------------------------------------------------------------------

NOT_PICKLE_OBJECTS = (
    "{serializer} serializer: caches objects only pickle can store (model instances, an "
    "HttpResponse, a function and a class by reference; a tuple comes back as a list), as "
    "django-redis documents for its JSON serializer"
)
NOT_PICKLE_ERROR = (
    "{serializer} serializer: expects pickle.PickleError for an unpicklable object; this "
    "serializer refuses an object it cannot encode with its own TypeError (tests/client/"
    "test_cache_codec.py)"
)
NOT_PICKLE_MIDDLEWARE = (
    "{serializer} serializer: the cache middleware and cache_page store HttpResponse objects, "
    "which only pickle can: give the alias they use the pickle serializer"
)
JSON_NO_BYTES = "json serializer: caches bytes, which JSON has no type for (msgpack has)"

#: The named skips of a serializer other than pickle: test name -> reason.
NOT_PICKLE_SKIPS = {
    "test_data_types": NOT_PICKLE_OBJECTS,
    "test_cache_read_for_model_instance": NOT_PICKLE_OBJECTS,
    "test_cache_read_for_model_instance_with_deferred": NOT_PICKLE_OBJECTS,
    "test_cache_write_for_model_instance_with_deferred": NOT_PICKLE_OBJECTS,
    "test_cache_write_unpicklable_object": NOT_PICKLE_OBJECTS,
    "test_add_fail_on_pickleerror": NOT_PICKLE_ERROR,
    "test_set_fail_on_pickleerror": NOT_PICKLE_ERROR,
    # the middleware classes (CacheMiddlewareTest, CacheHEADTest, CacheI18nTest...)
    "test_middleware": NOT_PICKLE_MIDDLEWARE,
    "test_cache_control_max_age": NOT_PICKLE_MIDDLEWARE,
    "test_authorization_header_exceptions": NOT_PICKLE_MIDDLEWARE,
    "test_no_vary_on_authorization_for_empty_authorization_header": NOT_PICKLE_MIDDLEWARE,
    "test_vary_on_authorization_for_authorization_header": NOT_PICKLE_MIDDLEWARE,
    "test_head_caches_correctly": NOT_PICKLE_MIDDLEWARE,
    "test_head_with_cached_get": NOT_PICKLE_MIDDLEWARE,
}


def serializer_skips(serializer: str) -> dict[str, str]:
    """The named skips of ``serializer`` (json or msgpack), reasons filled in."""
    skips = {
        name: reason.format(serializer=serializer) for name, reason in NOT_PICKLE_SKIPS.items()
    }
    if serializer == "json":
        skips["test_binary_string"] = JSON_NO_BYTES
    return skips


def mode_classes(mode: str, options: dict[str, Any], skips: dict[str, str]) -> dict[str, type]:
    """Django's cache test classes for one mode (``options``), named ``<Class>_<mode>`` so
    that several modes share one module, and so one cluster. Every mode gets the culling skips
    and the sleep-heavy expiry skips (the default mode runs those); ``skips`` (test name ->
    reason) adds the mode's own, to each class that has a test of that name."""
    from django.test import TestCase

    specs: list[tuple[str, tuple[type, ...]]] = [
        (
            "RaftCacheTests",
            (NoCulling, ExpiryOnce, RaftBaseCacheTests, django_tests.BaseCacheTests, TestCase),
        ),
        (
            "RaftCacheMiddlewareTest",
            (MiddlewareExpiryOnce, RaftCacheClass, django_tests.CacheMiddlewareTest),
        ),
    ]
    for name in (
        "CacheUtils",
        "PrefixedCacheUtils",
        "CacheHEADTest",
        "CacheI18nTest",
        "PrefixedCacheI18nTest",
        "TestWithTemplateResponse",
    ):
        specs.append((f"Raft{name}", (RaftCacheClass, getattr(django_tests, name))))
    out: dict[str, type] = {}
    for name, bases in specs:
        django_class = bases[-2] if bases[-1] is TestCase else bases[-1]
        body: dict[str, Any] = {
            test: skipped(reason) for test, reason in skips.items() if hasattr(django_class, test)
        }
        body["raft_options"] = options
        cls = type(f"{name}_{mode}", bases, body)
        out[cls.__name__] = cls
    return out
