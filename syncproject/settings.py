"""Django settings for the raftsync demo project.

The demo's own deployment settings come from environment variables (``RAFTSYNC_DEBUG``,
``RAFTSYNC_SECRET_KEY``, ``RAFTSYNC_ALLOWED_HOSTS``, ``RAFTSYNC_DB_PATH``,
``RAFTSYNC_CELERY_BROKER_URL``) so one image serves every role; parsing lives in
:mod:`syncproject.envconfig` where it is unit tested. Secrets have development defaults only when
DEBUG is on: without DEBUG an unset SECRET_KEY stays empty and Django refuses to use it, rather
than running production on a well-known key.

The cluster settings are the plugin's: ``COORDINATION`` below holds only what differs from the
defaults, and every key can be overridden by ``RAFTSYNC_<KEY>`` in any project
(``coordination/conf.py``, docs/settings.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from syncproject.envconfig import env_bool

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool(os.environ, "RAFTSYNC_DEBUG")
SECRET_KEY = os.environ.get("RAFTSYNC_SECRET_KEY") or (
    "django-insecure-dev-only-raftsync-key" if DEBUG else ""
)
ALLOWED_HOSTS = [
    host.strip() for host in os.environ.get("RAFTSYNC_ALLOWED_HOSTS", "").split(",") if host.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "coordination",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "syncproject.urls"
WSGI_APPLICATION = "syncproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Only Django's own tables (admin, auth, sessions) live here; coordination state lives in Raft.
_DEFAULT_DB_PATH = BASE_DIR / "var" / "db.sqlite3"
DB_PATH = Path(os.environ.get("RAFTSYNC_DB_PATH") or _DEFAULT_DB_PATH)
if DB_PATH == _DEFAULT_DB_PATH:
    DB_PATH.parent.mkdir(exist_ok=True)  # var/ is git-ignored, so create it on first use
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DB_PATH}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"


# Raft node and primitives: every key has a default (docs/settings.md) and RAFTSYNC_<KEY> wins.
COORDINATION = {"DATA_DIR": str(BASE_DIR / "var")}

# Celery's broker is the cluster itself: a bare raft:// means COORDINATION["CLUSTER"]
# (coordination/celery/connect.py), so the worker follows RAFTSYNC_CLUSTER like everything else.
CELERY_BROKER_URL = os.environ.get("RAFTSYNC_CELERY_BROKER_URL") or "raft://"
# On raft:// a delivered task is leased to the worker's session: ack after it ran, one at a time.
# Results live on the cluster too (the raft result backend): `.get()` works with nothing else.
CELERY_RESULT_BACKEND = os.environ.get("RAFTSYNC_CELERY_RESULT_BACKEND") or "raft://"
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# raft:// leases a delivered task for as long as the worker's session lives (no visibility
# timeout to outgrow); a dead worker's tasks come back after session_ttl seconds.
CELERY_BROKER_TRANSPORT_OPTIONS = {"session_ttl": 30}

# The replicated cache is its own alias: the default cache stays local, so throttling and
# sessions do not depend on the cluster being reachable.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "coordination": {
        "BACKEND": "coordination.cache_backend.RaftCache",
        "TIMEOUT": 300,
        "OPTIONS": {"L1_SIZE": 1000, "MODE": "linearizable", "LEASE": 5.0},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an anonymous request then gets 401 with WWW-Authenticate, not 403.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {"anon": "30/min", "user": "6000/min"},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "coordination.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "raftsync coordination API",
    "DESCRIPTION": "Sessions, fenced locks, queues and the replicated cache over HTTP.",
    "VERSION": "1",
}
