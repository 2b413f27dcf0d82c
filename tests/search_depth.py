"""How hard the property tests search: a quick default, and the deep search CI runs as well.

The default suite (``make test``) is what a developer runs after each change, so it has to stay
within a couple of minutes on two cores; ``make test-deep`` (run by ``.ci/run`` after it) sets
``RAFTSYNC_TEST_DEPTH=deep`` and runs the same property tests with the larger example counts
and the simulator with thousands of seeds. A bug that needs a rare interleaving is still looked
for on every CI run; it is only not looked for as hard on every save.
"""

from __future__ import annotations

import os

DEEP = os.environ.get("RAFTSYNC_TEST_DEPTH", "") == "deep"


def examples(quick: int, deep: int) -> int:
    """Hypothesis ``max_examples`` for this run: ``deep`` under ``RAFTSYNC_TEST_DEPTH=deep``."""
    return deep if DEEP else quick


def seeds(quick: int, deep: int) -> int:
    """How many seeded runs a loop over seeds makes in this run."""
    return deep if DEEP else quick
