"""Settings for the test suite: the project's settings, plus a key to sign sessions and tokens
and an explicit cluster and cluster secret (production refuses to run without them, DEBUG is off
in tests, and ``manage.py check`` must pass). Tests that talk to a real cluster override
``COORDINATION`` with its addresses and secret."""

from syncproject.settings import *  # noqa: F403
from syncproject.settings import COORDINATION, SECRET_KEY

SECRET_KEY = SECRET_KEY or "tests-only-secret-key"
COORDINATION = {
    **COORDINATION,
    "CLUSTER": "n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003",
    "CLUSTER_SECRET": "tests-only-cluster-secret",
}
