"""Django's own cache tests (BaseCacheTests, and the middleware and utils classes) against
RaftCache in bounded mode: L1 entries are plain reads kept for STALENESS (1 s), with no
registration or invalidation.

Named skips beyond every mode's: the sleep-heavy expiry tests (run in the default mode), and
the tests where one alias reads what another alias just changed (bounded staleness)."""

from __future__ import annotations

import pytest
from django.test import TestCase
from raftcache_harness import (
    BoundedStaleness,
    ExpiryOnce,
    MiddlewareExpiryOnce,
    NoCulling,
    RaftBaseCacheTests,
    RaftCacheClass,
)
from vendored_django_cache import tests as django_tests

pytestmark = [pytest.mark.realprocess]
OPTIONS = {"MODE": "bounded"}


class RaftCacheTests(
    NoCulling,
    ExpiryOnce,
    BoundedStaleness,
    RaftBaseCacheTests,
    django_tests.BaseCacheTests,
    TestCase,
):
    raft_options = OPTIONS


class RaftCacheMiddlewareTest(
    MiddlewareExpiryOnce, RaftCacheClass, django_tests.CacheMiddlewareTest
):
    raft_options = OPTIONS


class RaftCacheUtils(RaftCacheClass, django_tests.CacheUtils):
    raft_options = OPTIONS


class RaftPrefixedCacheUtils(RaftCacheClass, django_tests.PrefixedCacheUtils):
    raft_options = OPTIONS


class RaftCacheHEADTest(RaftCacheClass, django_tests.CacheHEADTest):
    raft_options = OPTIONS


class RaftCacheI18nTest(RaftCacheClass, django_tests.CacheI18nTest):
    raft_options = OPTIONS


class RaftPrefixedCacheI18nTest(RaftCacheClass, django_tests.PrefixedCacheI18nTest):
    raft_options = OPTIONS


class RaftTestWithTemplateResponse(RaftCacheClass, django_tests.TestWithTemplateResponse):
    raft_options = OPTIONS
