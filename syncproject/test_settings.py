"""Settings for the test suite: the project's settings, plus a key to sign sessions and tokens
(production refuses to run without one, and DEBUG is off in tests)."""

from syncproject.settings import *  # noqa: F403
from syncproject.settings import SECRET_KEY

SECRET_KEY = SECRET_KEY or "tests-only-secret-key"
