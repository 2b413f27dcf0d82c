"""Cluster membership over the REST API, for operators (the ``operate_cluster`` permission):

    GET    /api/cluster/members/                 voters, learners, addresses, entries behind
    POST   /api/cluster/members/                 {"id": "n4", "address": "10.0.0.4:7001",
                                                  "wait": true, "promote": true}
    POST   /api/cluster/members/<id>/promote/
    DELETE /api/cluster/members/<id>/
    POST   /api/cluster/members/replace/         {"old": "n2", "id": "n4", "address": "..."}

The same operations as ``raft_members`` (``coordination.node.membership``). With ``wait`` an add
answers once the learner has caught up (and is promoted, with ``promote``), up to
``catch_up_timeout`` seconds; refusals are 409 with their code (``member_exists``,
``last_voter``, ``change_pending``, ``member_unreachable``...), an unknown member 404.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from coordination.api.base import RaftsyncAPIView, operation
from coordination.api.permissions import OperateCluster
from coordination.api.views import _valid
from coordination.inspection import membership_client
from coordination.shared_coordinator import coordinator

MAX_CATCH_UP = 300.0


class NewMember(serializers.Serializer):
    id = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,64}$")
    address = serializers.RegexField(r"^[^\s:]+:\d{1,5}$", max_length=200)
    wait = serializers.BooleanField(default=True)
    promote = serializers.BooleanField(default=True)
    catch_up_timeout = serializers.FloatField(min_value=1, max_value=MAX_CATCH_UP, default=120)


class Replacement(NewMember):
    old = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,64}$")


def _members() -> Any:
    return membership_client(coordinator())


class MembersView(RaftsyncAPIView):
    permission_classes = (OperateCluster,)

    @operation(summary="The membership in force: voters, learners, addresses, entries behind")
    def get(self, request: Request) -> Response:
        return Response(_members().list())

    @operation(request=NewMember, summary="Add a member: learner, caught up, then voter")
    def post(self, request: Request) -> Response:
        data = _valid(NewMember, request)
        result = _members().add(
            data["id"],
            data["address"],
            wait=data["wait"],
            promote=data["promote"],
            catch_up_timeout=data["catch_up_timeout"],
        )
        return Response(result, status=status.HTTP_201_CREATED)


class MemberView(RaftsyncAPIView):
    permission_classes = (OperateCluster,)

    @operation(summary="Remove a member (the leader too: it hands over and steps down)")
    def delete(self, request: Request, node: str) -> Response:
        return Response(_members().remove(node))


class MemberPromoteView(RaftsyncAPIView):
    permission_classes = (OperateCluster,)

    @operation(request=None, summary="Promote a learner to voter")
    def post(self, request: Request, node: str) -> Response:
        return Response(_members().promote(node))


class MemberReplaceView(RaftsyncAPIView):
    permission_classes = (OperateCluster,)

    @operation(request=Replacement, summary="Add the new member (caught up, voter), remove the old")
    def post(self, request: Request) -> Response:
        data = _valid(Replacement, request)
        result = _members().replace(
            data["old"], data["id"], data["address"], catch_up_timeout=data["catch_up_timeout"]
        )
        return Response(result)
