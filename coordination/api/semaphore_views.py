"""REST views of semaphores: acquire, release and inspect, with sessions named by id as for
locks (``POST /api/sessions/`` opens one; the caller renews it).

    POST /api/semaphores/<name>/acquire/  {"session": 12, "limit": 3, "owner": "", "wait": 10}
    POST /api/semaphores/<name>/release/  {"session": 12, "owner": ""}
    GET  /api/semaphores/<name>/           limit, holders with tokens, waiters in order
    GET  /api/semaphores/<name>/check/?token=N

Busy (no slot on a try, or the wait ran out) is 409 with ``{"acquired": false}``; a limit
other than the live semaphore's is 409 ``semaphore_limit``; a limit out of range, a name past
the key limit or with other characters is 400 with a message (the serializer, or the cluster's
``limit_exceeded``/``bad_request``: the table in ``coordination.errors``).
"""

from __future__ import annotations

from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from coordination.api.base import operation
from coordination.api.views import Primitive, _valid
from coordination.client import operations as ops
from coordination.primitives import limits
from coordination.shared_coordinator import coordinator


class SemaphoreHolder(serializers.Serializer):
    session = serializers.IntegerField(min_value=1)
    owner = serializers.CharField(max_length=limits.OWNER_MAX_BYTES, default="", allow_blank=True)


class SemaphoreAcquire(SemaphoreHolder):
    limit = serializers.IntegerField(
        min_value=limits.SEMAPHORE_LIMIT[0], max_value=limits.SEMAPHORE_LIMIT[1]
    )
    wait = serializers.FloatField(min_value=0, max_value=limits.WAIT_MS[1] / 1000, default=0)


class SemaphoreView(Primitive):
    @operation(summary="Limit, holders with their fencing tokens, waiters in arrival order")
    def get(self, request: Request, name: str) -> Response:
        return Response(coordinator().inspect_semaphore(name))


class SemaphoreAcquireView(Primitive):
    @operation(
        request=SemaphoreAcquire,
        summary="Take a slot (409 if none came within wait; 409 semaphore_limit on a limit "
        "other than the live semaphore's)",
    )
    def post(self, request: Request, name: str) -> Response:
        data = _valid(SemaphoreAcquire, request)
        op = ops.sem_acquire(data["session"], name, data["limit"], data["owner"], data["wait"])
        result = coordinator().run(op)
        if not result.get("acquired"):
            return Response({**result, "acquired": False}, status=status.HTTP_409_CONFLICT)
        return Response(result)


class SemaphoreReleaseView(Primitive):
    @operation(request=SemaphoreHolder, summary="Give the slot back (409 if not held)")
    def post(self, request: Request, name: str) -> Response:
        data = _valid(SemaphoreHolder, request)
        return Response(coordinator().run(ops.sem_release(data["session"], name, data["owner"])))


class SemaphoreCheckView(Primitive):
    @operation(summary="Whether ?token=N is a slot still held (fencing check)")
    def get(self, request: Request, name: str) -> Response:
        try:
            token = int(request.query_params["token"])
        except (KeyError, ValueError):
            return Response({"token": ["an integer token is required"]}, status=400)
        return Response({"current": coordinator().check_semaphore_token(name, token)})
