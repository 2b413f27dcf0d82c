"""Django's own cache tests (BaseCacheTests, and the middleware and utils classes) against
RaftCache with each SERIALIZER other than the default pickle (json, msgpack) and each
COMPRESSOR (zlib, lz4, zstd, over pickle): five modes in one module, so one cluster serves all.

Named skips beyond every mode's: the sleep-heavy expiry tests (run in the default mode), and for
json and msgpack the tests that cache what only pickle can store (model instances, responses,
functions; ``raftcache_harness.serializer_skips`` gives each reason). Everything else passes.

About 30 s of wall, so it is marked ``slow``: ``make test-deep`` (run by CI after the default
suite) runs it; the default suite covers the codecs with ``tests/client/test_cache_codec.py``.
"""

from __future__ import annotations

import pytest
from raftcache_harness import mode_classes, serializer_skips

pytestmark = [pytest.mark.realprocess, pytest.mark.slow]

MODES = {
    "json": ({"SERIALIZER": "json"}, serializer_skips("json")),
    "msgpack": ({"SERIALIZER": "msgpack"}, serializer_skips("msgpack")),
    "zlib": ({"COMPRESSOR": "zlib"}, {}),
    "lz4": ({"COMPRESSOR": "lz4"}, {}),
    "zstd": ({"COMPRESSOR": "zstd"}, {}),
}

for _mode, (_options, _skips) in MODES.items():
    globals().update(mode_classes(_mode, _options, _skips))
