"""What every raftsync API view declares for itself, whatever the host project's DRF defaults:

- authentication: a DRF token (``Authorization: Token ...``) or a Django session (with CSRF);
  token first, so an anonymous request gets 401 with ``WWW-Authenticate``, not 403;
- permissions: a login at least (views narrow it: ``UsePrimitives``, ``OperateCluster``), so a
  project whose ``DEFAULT_PERMISSION_CLASSES`` is DRF's ``AllowAny`` exposes nothing;
- errors: ``coordination.api.errors.exception_handler`` (typed errors to stable codes and
  statuses), without the project having to set ``EXCEPTION_HANDLER``;
- the OpenAPI inspector: drf-spectacular's ``AutoSchema``, without the project having to set
  ``DEFAULT_SCHEMA_CLASS``.

Throttling and renderers stay the project's choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from coordination.api.errors import exception_handler


class RaftsyncAPIView(APIView):
    authentication_classes = (TokenAuthentication, SessionAuthentication)
    permission_classes: tuple[type, ...] = (IsAuthenticated,)
    schema = AutoSchema()

    def get_exception_handler(self) -> Callable[[Exception, Any], Any]:
        return exception_handler


def operation(**kwargs: Any) -> Callable[[Any], Any]:
    """``extend_schema`` for a view method, based on drf-spectacular's ``AutoSchema`` whatever the
    project's ``DEFAULT_SCHEMA_CLASS`` was when this module was imported (drf-spectacular builds
    a method's schema class from the function's ``schema`` attribute, else from that setting)."""

    def decorate(handler: Any) -> Any:
        if not hasattr(handler, "schema") and "schema" not in getattr(handler, "kwargs", {}):
            handler.schema = AutoSchema
        return extend_schema(**kwargs)(handler)

    return decorate
