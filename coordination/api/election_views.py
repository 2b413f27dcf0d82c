"""REST views of elections (``coordination.client.election``), with sessions named by id as for
locks (``POST /api/sessions/`` opens one; the caller renews it, and leadership ends with it).

    GET  /api/elections/<name>/            the leader: value, fencing token, session (or null)
    POST /api/elections/<name>/campaign/   {"session": 12, "value": "host-3", "wait": 10}
    POST /api/elections/<name>/resign/     {"session": 12, "value": "host-3"}
    GET  /api/elections/<name>/check/?token=N   whether N is still the current leadership

A campaign not won within ``wait`` (0: a try) is 409 with ``{"elected": false}``; a name that is
empty, too long or has other characters is 400 (the client's typed errors, raised before
anything is sent).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from coordination.api.base import operation
from coordination.api.views import Primitive, _valid
from coordination.client import operations as ops
from coordination.client.election import ElectionState, Leadership
from coordination.primitives import limits
from coordination.shared_coordinator import coordinator


class Campaigner(serializers.Serializer):
    session = serializers.IntegerField(min_value=1)
    value = serializers.CharField(max_length=limits.OWNER_MAX_BYTES, default="", allow_blank=True)


class Campaign(Campaigner):
    wait = serializers.FloatField(min_value=0, max_value=limits.WAIT_MS[1] / 1000, default=0)


def _leader(leadership: Leadership | None) -> dict[str, Any] | None:
    return None if leadership is None else asdict(leadership)


class ElectionView(Primitive):
    @operation(summary="The current leader: its value, fencing token and session (or null)")
    def get(self, request: Request, name: str) -> Response:
        state = ElectionState(name, "")
        return Response({"name": name, "leader": _leader(coordinator().run(state._leader_op()))})


class ElectionCampaignView(Primitive):
    @operation(request=Campaign, summary="Campaign (409 if not elected within wait; 0 tries)")
    def post(self, request: Request, name: str) -> Response:
        data = _valid(Campaign, request)
        state = ElectionState(name, data["value"])
        won = coordinator().run(state._campaign_op(data["session"], data["wait"]))
        if won is None:
            return Response({"name": name, "elected": False}, status=status.HTTP_409_CONFLICT)
        return Response({"elected": True, **asdict(won)})


class ElectionResignView(Primitive):
    @operation(request=Campaigner, summary="Resign: the next campaigner is elected at once")
    def post(self, request: Request, name: str) -> Response:
        data = _valid(Campaigner, request)
        state = ElectionState(name, data["value"])
        coordinator().run(state._resign_op(data["session"]))
        return Response({"name": name, "resigned": True})


class ElectionCheckView(Primitive):
    @operation(summary="Whether ?token=N is still the current leadership (fencing check)")
    def get(self, request: Request, name: str) -> Response:
        try:
            token = int(request.query_params["token"])
        except (KeyError, ValueError):
            return Response({"token": ["an integer token is required"]}, status=400)
        state = ElectionState(name, "")
        current = coordinator().run(ops.lock_check_token(state.lock, token))
        return Response({"name": name, "current": current})
