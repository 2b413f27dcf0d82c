"""ASGI entry point; needed for blocking lock/queue waits served without a thread per request."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncproject.settings")

application = get_asgi_application()
