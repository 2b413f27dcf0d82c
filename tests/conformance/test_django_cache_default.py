"""Django's own cache tests (BaseCacheTests, and the middleware and utils classes) against
RaftCache in its default mode: linearizable, with a per-process L1 of 1,000 keys.

This mode also runs the tests that sleep for expiry (skipped by name in the other modes)."""

from __future__ import annotations

import pytest
from django.test import TestCase
from raftcache_harness import NoCulling, RaftBaseCacheTests, RaftCacheClass
from vendored_django_cache import tests as django_tests

pytestmark = [pytest.mark.realprocess]
OPTIONS: dict = {}


class RaftCacheTests(NoCulling, RaftBaseCacheTests, django_tests.BaseCacheTests, TestCase):
    raft_options = OPTIONS


class RaftCacheMiddlewareTest(RaftCacheClass, django_tests.CacheMiddlewareTest):
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
