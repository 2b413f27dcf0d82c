"""Typed coordination errors as HTTP answers, with a stable ``code`` for clients.

The status of each code is in ``coordination.errors`` (the one table of codes): 400 invalid input
or a limit; 404 unknown session, queue or key; 409 conflict (not the holder, a lock mode clash, a
message no longer leased to you, not an integer); 423 deadlock (the body names the cycle); 429
rate limited (``Retry-After``: whole seconds until the tokens are there); 503 with
``Retry-After`` when the cluster has no quorum or does not answer. The body is
``{"code": ..., "detail": ...}``; anything else is DRF's to answer.

A write whose outcome is unknown (``OutcomeUnknown``: it may have been applied) is a 503 too,
with the same ``unavailable`` code (what API clients have always matched on) and two more
fields: ``"outcome": "unknown"`` and ``"request_id": {"client_id", "seq"}``. A definite 503
(``ClusterUnavailable``, a timed-out read) has neither: retrying it cannot apply anything twice.
An API client should not blindly repeat an unknown write that is not idempotent; it can read
the state it meant to change first.
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from coordination import errors
from coordination.exceptions import OutcomeUnknown, RateLimited


def error_response(error: Exception) -> Response | None:
    """The API's answer to a registered error (None for anything else)."""
    entry = errors.lookup(error)
    if entry is None:
        return None
    headers = {"Retry-After": "1"} if entry.status == 503 else None
    if isinstance(error, RateLimited):  # 429: when the tokens will be there, in whole seconds
        headers = {"Retry-After": str(math.ceil(error.retry_after))}
    message = getattr(error, "message", "") or str(error)
    body: dict[str, Any] = {"code": entry.api_code, "detail": message}
    if isinstance(error, OutcomeUnknown):
        client_id, seq = error.request_id
        body.update(outcome="unknown", request_id={"client_id": client_id, "seq": seq})
    return Response(body, entry.status, headers=headers)


def exception_handler(error: Exception, context: Any) -> Response | None:
    response = error_response(error)
    return response if response is not None else drf_exception_handler(error, context)
