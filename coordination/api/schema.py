"""The OpenAPI schema and Swagger UI of raftsync's API, and of nothing else.

drf-spectacular's views describe a project's whole URLconf by default; mounted inside someone
else's project, ``/api/schema/`` would then list their views under raftsync's name. These views
describe only the routes of ``coordination.api.urls``, under the prefix the project mounted them
at, with raftsync's title and version, and need a login like the rest of the API.
"""

from __future__ import annotations

from typing import Any

from django.urls import include, path
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

import coordination
from coordination.api.base import operation

SCHEMA_SETTINGS = {
    "TITLE": "raftsync coordination API",
    "DESCRIPTION": "Sessions, fenced locks, queues and the replicated cache over HTTP.",
    "VERSION": coordination.__version__,
}


class SchemaView(SpectacularAPIView):
    authentication_classes = (TokenAuthentication, SessionAuthentication)
    permission_classes = (IsAuthenticated,)
    schema = AutoSchema()  # these two views are routes of the API too
    custom_settings = SCHEMA_SETTINGS

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        mount = request.path[: -len("schema/")].lstrip("/")  # e.g. "api/" or "ops/raft/"
        self.patterns = [path(mount, include("coordination.api.urls"))]
        return super().get(request, *args, **kwargs)


class SwaggerView(SpectacularSwaggerView):
    authentication_classes = (TokenAuthentication, SessionAuthentication)
    permission_classes = (IsAuthenticated,)
    schema = AutoSchema()
    url_name = "raftsync-api:schema"

    # drf-spectacular's own get was decorated when it was imported, on the project's schema
    # class of that moment; this one is always based on drf-spectacular's AutoSchema.
    @operation(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)
