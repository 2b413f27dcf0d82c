"""REST views of cluster-wide rate limits (routed in ``coordination.api.urls``).

- ``POST ratelimits/<key>/take/`` ``{"rate": "100/m", "burst": 20, "n": 1}`` takes ``n``
  tokens: 200 ``{"granted": true, "retry_after": 0, "tokens", "burst"}``, or 429 with
  ``Retry-After`` (whole seconds, rounded up) and the exact ``retry_after`` in seconds in the
  body: retry then. A bad rate (zero, negative, unknown unit) is 400 ``invalid_rate``; a key
  past the key limit or ``n`` over the burst is 400 ``limit_exceeded``. Needs
  ``coordination.use_primitives``.
- ``GET ratelimits/<key>/``: the bucket now (``tokens``, ``full_in_ms``...), or ``{"key",
  "exists": false}``: no bucket, which is a full one (idle buckets are dropped).
- ``GET ratelimits/?prefix=&limit=``: ``{"buckets": [...], "stats": {...}}``, buckets by key
  and the part's totals (buckets refilling, dropped, the bucket limit).

As in ``views``: validate, run the client's operation on the process's ``Coordinator``, shape
the answer; errors are raised typed and answered by ``coordination.api.errors``.
"""

from __future__ import annotations

import math

from drf_spectacular.types import OpenApiTypes
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from coordination.api.base import RaftsyncAPIView, operation
from coordination.api.permissions import UsePrimitives
from coordination.client import operations as ops
from coordination.primitives import limits
from coordination.primitives.rates import check_burst, default_burst, parse_rate
from coordination.shared_coordinator import coordinator

__all__ = ["RateLimitListView", "RateLimitTakeView", "RateLimitView"]


class RateTake(serializers.Serializer):
    rate = serializers.CharField(max_length=32, help_text='"100/s", "100/m" or "100/h"')
    burst = serializers.IntegerField(
        min_value=limits.RATE_BURST[0],
        max_value=limits.RATE_BURST[1],
        required=False,
        allow_null=True,
        default=None,
        help_text="tokens at most in the bucket (default: the rate's count)",
    )
    n = serializers.IntegerField(min_value=1, max_value=limits.RATE_BURST[1], default=1)


class RateList(serializers.Serializer):
    prefix = serializers.CharField(max_length=limits.NAME_MAX_BYTES, default="", allow_blank=True)
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=100)


class RateLimitTakeView(RaftsyncAPIView):
    permission_classes = (UsePrimitives,)

    @operation(
        request=RateTake,
        responses=OpenApiTypes.OBJECT,
        summary="Take tokens of a cluster-wide rate limit (429 with Retry-After if none)",
    )
    def post(self, request: Request, key: str) -> Response:
        data = RateTake(data=request.data)
        data.is_valid(raise_exception=True)
        count, period_ms = parse_rate(data.validated_data["rate"])  # InvalidRate: 400
        burst = data.validated_data["burst"]
        burst = default_burst(count) if burst is None else check_burst(burst)
        op = ops.ratelimit_take(key, count, period_ms, burst, data.validated_data["n"])
        answer = coordinator().run(op)
        body = {
            "granted": answer["granted"],
            "retry_after": answer["wait_ms"] / 1000,
            "tokens": answer["tokens"],
            "burst": answer["burst"],
        }
        if answer["granted"]:
            return Response(body)
        headers = {"Retry-After": str(math.ceil(answer["wait_ms"] / 1000))}
        return Response(body, status=status.HTTP_429_TOO_MANY_REQUESTS, headers=headers)


class RateLimitView(RaftsyncAPIView):
    permission_classes = (UsePrimitives,)

    @operation(responses=OpenApiTypes.OBJECT, summary="A rate-limit bucket now")
    def get(self, request: Request, key: str) -> Response:
        view = coordinator().run(ops.ratelimit_get(key))
        if view is None:
            return Response({"key": key, "exists": False})
        return Response({**view, "exists": True})


class RateLimitListView(RaftsyncAPIView):
    permission_classes = (UsePrimitives,)

    @operation(
        parameters=[RateList],
        responses=OpenApiTypes.OBJECT,
        summary="Rate-limit buckets",
        operation_id="ratelimits_list",
    )
    def get(self, request: Request) -> Response:
        query = RateList(data=request.query_params)
        query.is_valid(raise_exception=True)
        prefix, limit = query.validated_data["prefix"], query.validated_data["limit"]
        coord = coordinator()
        return Response(
            {
                "buckets": coord.run(ops.ratelimit_list(prefix, limit)),
                "stats": coord.run(ops.ratelimit_stats()),
            }
        )
