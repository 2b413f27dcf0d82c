"""Typed coordination errors as HTTP answers, with a stable ``code`` for clients.

400 invalid input or a limit; 404 unknown session, queue or key; 409 conflict (not the holder,
a lock mode clash, a message no longer leased to you, not an integer); 423 deadlock (the body
names the cycle); 503 with ``Retry-After`` when the cluster has no quorum or does not answer.
"""

from __future__ import annotations

from typing import Any

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from coordination import exceptions as exc

STATUS = {
    exc.LimitExceeded: 400,
    exc.BadRequest: 400,
    exc.UnknownSession: 404,
    exc.SessionExpired: 404,
    exc.UnknownQueue: 404,
    exc.UnknownKey: 404,
    exc.NotHolder: 409,
    exc.LockModeError: 409,
    exc.UnknownMessage: 409,
    exc.NotInteger: 409,
    exc.Evicted: 409,
    exc.Deadlock: 423,
}


def exception_handler(error: Exception, context: Any) -> Response | None:
    if isinstance(error, (exc.ClusterUnavailable, exc.Timeout)):
        body = {"code": "unavailable", "detail": str(error)}
        return Response(body, status=503, headers={"Retry-After": "1"})
    for cls, status in STATUS.items():
        if isinstance(error, cls):
            code = getattr(error, "code", "bad_request")
            message = getattr(error, "message", str(error))
            return Response({"code": code, "detail": message}, status=status)
    return drf_exception_handler(error, context)
