"""The API mounted in someone else's project: it declares its own authentication, permissions,
error handling and schema, so DRF's defaults (``AllowAny``, no exception handler, DRF's own
schema class) expose nothing and break nothing. No cluster runs here: the coordinator points at a
closed port, so anything that reaches the cluster answers 503."""

from __future__ import annotations

import socket
import sys
import types

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import URLPattern, URLResolver, clear_url_caches, get_resolver, include, path
from rest_framework.authtoken.models import Token
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from coordination.shared_coordinator import reset_coordinator

pytestmark = pytest.mark.django_db


class TheirView(APIView):
    """A view of the host project, which raftsync's schema must not describe."""

    def get(self, request):
        return Response({"theirs": True})


@pytest.fixture
def their_project(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    urls = types.ModuleType("their_urls")
    urls.urlpatterns = [
        path("ops/raft/", include("coordination.api.urls")),
        path("theirs/", TheirView.as_view()),
    ]
    sys.modules["their_urls"] = urls
    settings.ROOT_URLCONF = "their_urls"
    settings.REST_FRAMEWORK = {}  # DRF's defaults: AllowAny, Session + Basic auth, no handler
    settings.COORDINATION = {
        **settings.COORDINATION,
        "CLUSTER": f"n1=127.0.0.1:{closed}",
        "CLUSTER_SECRET": "s" * 32,
        "REQUEST_TIMEOUT": 0.3,
    }
    clear_url_caches()
    reset_coordinator()
    yield "/ops/raft/"
    reset_coordinator()
    sys.modules.pop("their_urls", None)
    clear_url_caches()


def _routes(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _routes(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p.callback


def _concrete(route: str) -> str:
    names = (("<name:name>", "n"), ("<name:key>", "k"), ("<name:node>", "n9"))
    for token, value in (*names, ("<int:session>", "1")):
        route = route.replace(token, value)
    return "/" + route.replace("<int:msg_id>", "1")


def _user(*perms: str) -> APIClient:
    user = User.objects.create_user(f"user{User.objects.count()}")
    for perm in perms:
        user.user_permissions.add(Permission.objects.get(codename=perm))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_every_route_refuses_anonymous_users_under_allow_any(their_project):
    routes = [r for r, _ in _routes(get_resolver().url_patterns) if r.startswith("ops/raft/")]
    assert len(routes) >= 20
    anonymous = APIClient()
    for route in routes:
        url = _concrete(route)
        for method in ("get", "post", "put", "delete"):
            answer = getattr(anonymous, method)(url)
            assert answer.status_code in (401, 403, 405), (method, url, answer.status_code)
            assert answer.status_code != 200


def test_every_view_declares_authentication_and_permissions():
    from coordination.api.base import RaftsyncAPIView

    for _, callback in _routes(get_resolver("coordination.api.urls").url_patterns):
        view = callback.view_class
        assert "IsAuthenticated" in str(view.permission_classes) or any(
            p.__module__.startswith("coordination") for p in view.permission_classes
        ), view
        assert view.authentication_classes, view
        assert issubclass(view, RaftsyncAPIView) or view.__module__ == "coordination.api.schema"


def test_the_api_root_lists_the_endpoints_under_its_mount(their_project):
    answer = _user().get(their_project)
    assert answer.status_code == 200
    body = answer.json()
    assert body["cluster"].endswith("/ops/raft/cluster/")
    assert body["schema"].endswith("/ops/raft/schema/")
    assert body["locks"].endswith("/ops/raft/locks/{name}/")


def test_errors_are_mapped_without_the_projects_exception_handler(their_project):
    answer = _user("use_primitives").post(f"{their_project}sessions/", {"ttl": 5}, format="json")
    assert answer.status_code == 503
    assert answer.json()["code"] == "unavailable" and answer["Retry-After"] == "1"


def test_the_schema_describes_only_raftsync(their_project):
    schema = _user().get(f"{their_project}schema/?format=json")
    assert schema.status_code == 200, schema.content[:300]
    paths = schema.json()["paths"]
    assert "/ops/raft/locks/{name}/acquire/" in paths
    assert "/ops/raft/cluster/" in paths
    assert not any(p.startswith("/theirs") for p in paths)
    assert schema.json()["info"]["title"] == "raftsync coordination API"
    assert _user().get(f"{their_project}docs/").status_code == 200


def test_the_schema_builds_when_drf_defaults_were_set_at_import(tmp_path) -> None:
    """In a fresh process whose project never named a schema class, so DRF's own was the
    default when the API's views were imported (the in-process tests above imported them under
    the example project's settings)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "plain_drf_settings.py").write_text(
        "from syncproject.test_settings import *  # noqa\n"
        "REST_FRAMEWORK = {}\n"
        "ALLOWED_HOSTS = ['testserver']\n"
        "ROOT_URLCONF = 'plain_drf_urls'\n"
    )
    (tmp_path / "plain_drf_urls.py").write_text(
        "from django.urls import include, path\n"
        "urlpatterns = [path('api/', include('coordination.api.urls'))]\n"
    )
    script = (
        "import django; django.setup()\n"
        "from django.contrib.auth.models import User\n"
        "from django.core.management import call_command\n"
        "from django.test import Client\n"
        "call_command('migrate', verbosity=0)\n"
        "c = Client(); c.force_login(User.objects.create_user('u'))\n"
        "r = c.get('/api/schema/?format=json')\n"
        "print(r.status_code, r.status_code == 200 and '/api/cluster/' in r.json()['paths'])\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "plain_drf_settings",
        "PYTHONPATH": f"{tmp_path}:{root}",
        "RAFTSYNC_DB_PATH": str(tmp_path / "db.sqlite3"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["200", "True"], done.stderr[-2000:]
