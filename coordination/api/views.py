"""REST views: validate, call the coordination client, shape the answer. No logic of their own.

HTTP is stateless, so clients hold sessions explicitly: ``POST /api/sessions/`` opens one,
``.../keepalive/`` renews it (every TTL/3), and locks and queue leases name it (by id: the
views run the client's operations, ``coordination.client.operations``, on the ids given).

Every call to the cluster goes through the process's ``Coordinator``, whose timeout is
``API_REQUEST_TIMEOUT`` (``REQUEST_TIMEOUT`` unless set); a call that waits (a lock or queue
``wait``, a cache write waiting out L1 leases) gets its wait plus the client's margin. Errors
are raised typed and answered by ``coordination.api.errors`` (the table of codes).
"""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from coordination import inspection
from coordination.api import serializers as s
from coordination.api.base import RaftsyncAPIView, operation
from coordination.api.permissions import OperateCluster, UsePrimitives
from coordination.client import operations as ops
from coordination.exceptions import UnknownKey, UnknownSession
from coordination.shared_coordinator import coordinator, reset_coordinator  # noqa: F401 (re-exported)

DEAD_LETTERS_SHOWN = 100  # the dead letters a GET lists (oldest first)


def _valid(serializer_class: type, request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)  # 400 with field errors
    return serializer.validated_data


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


class Primitive(RaftsyncAPIView):
    permission_classes = (UsePrimitives,)


class ApiRootView(RaftsyncAPIView):
    """``/api/``: where everything is (the README's endpoint table, as links)."""

    permission_classes = (IsAuthenticated,)

    @operation(summary="The API's endpoints")
    def get(self, request: Request) -> Response:
        def url(name: str) -> str:
            return reverse(f"raftsync-api:{name}", request=request)

        return Response(
            {
                "cluster": url("cluster"),
                "sessions": url("sessions"),
                "locks": url("root").rstrip("/") + "/locks/{name}/",
                "semaphores": url("root").rstrip("/") + "/semaphores/{name}/",
                "queues": url("root").rstrip("/") + "/queues/{name}/",
                "cache": url("root").rstrip("/") + "/cache/{key}/",
                "ratelimits": url("ratelimits"),
                "watch": url("watch"),
                "schema": url("schema"),
                "docs": url("docs"),
            }
        )


# -- cluster --------------------------------------------------------------------------------------


class ClusterView(RaftsyncAPIView):
    permission_classes = (IsAuthenticated,)  # node addresses and lag: a login at least

    @operation(summary="Every node's Raft status and the leader")
    def get(self, request: Request) -> Response:
        nodes = inspection.node_statuses()
        leaders = [n["id"] for n in nodes if n.get("role") == "leader"]
        return Response({"leader": leaders[0] if len(leaders) == 1 else None, "nodes": nodes})


class TransferView(RaftsyncAPIView):
    permission_classes = (OperateCluster,)

    @operation(request=s.Transfer, summary="Hand leadership to another node")
    def post(self, request: Request) -> Response:
        data = _valid(s.Transfer, request)
        return Response({"leader": coordinator().transfer_leadership(data["to"])})


# -- sessions -------------------------------------------------------------------------------------


class SessionsView(Primitive):
    @operation(request=s.SessionOpen, summary="Open a session (renew it every TTL/3)")
    def post(self, request: Request) -> Response:
        data = _valid(s.SessionOpen, request)
        result = coordinator().run(ops.session_open(data["ttl"], data["label"]))
        return Response(result, status=status.HTTP_201_CREATED)

    @operation(operation_id="sessions_list")
    def get(self, request: Request) -> Response:
        return Response(coordinator().sessions())


class SessionView(Primitive):
    def get(self, request: Request, session: int) -> Response:
        found = coordinator().session_info(session)
        if found is None:
            raise UnknownSession("unknown_session", "no such session")
        return Response(found)

    def delete(self, request: Request, session: int) -> Response:
        coordinator().run(ops.session_close(session))
        return Response(status=status.HTTP_204_NO_CONTENT)


class KeepaliveView(Primitive):
    @operation(request=None)
    def post(self, request: Request, session: int) -> Response:
        return Response(coordinator().run(ops.session_keepalive(session)))


# -- locks ----------------------------------------------------------------------------------------


class LockView(Primitive):
    @operation(summary="Holders, waiters and the last fencing token of a lock")
    def get(self, request: Request, name: str) -> Response:
        return Response(coordinator().inspect_lock(name))


class LockAcquireView(Primitive):
    @operation(request=s.LockAcquire, summary="Acquire (409 if busy, 423 on deadlock)")
    def post(self, request: Request, name: str) -> Response:
        data = _valid(s.LockAcquire, request)
        op = ops.lock_acquire(data["session"], name, data["mode"], data["owner"], data["wait"])
        result = coordinator().run(op)
        if not result.get("acquired"):
            return Response({"acquired": False, **result}, status=status.HTTP_409_CONFLICT)
        return Response(result)


class LockReleaseView(Primitive):
    @operation(request=s.LockHolder)
    def post(self, request: Request, name: str) -> Response:
        data = _valid(s.LockHolder, request)
        return Response(coordinator().run(ops.lock_release(data["session"], name, data["owner"])))


class LockRenewView(Primitive):
    @operation(request=s.LockHolder)
    def post(self, request: Request, name: str) -> Response:
        data = _valid(s.LockHolder, request)
        token = coordinator().run(ops.lock_renew(data["session"], name, data["owner"]))
        return Response({"token": token})


class LockCheckView(Primitive):
    @operation(summary="Whether ?token=N is the current grant (fencing check)")
    def get(self, request: Request, name: str) -> Response:
        try:
            token = int(request.query_params["token"])
        except (KeyError, ValueError):
            return Response({"token": ["an integer token is required"]}, status=400)
        return Response({"current": coordinator().check_token(name, token)})


# -- queues ---------------------------------------------------------------------------------------


class QueueView(Primitive):
    @operation(summary="Depth by priority, in flight, dead letters (404 if unknown)")
    def get(self, request: Request, name: str) -> Response:
        return Response(coordinator().queue(name).stats())


class QueueMessagesView(Primitive):
    @operation(request=s.QueuePut, summary="Put a message (201 with its id)")
    def post(self, request: Request, name: str) -> Response:
        data = _valid(s.QueuePut, request)
        payload = data["payload"].encode()
        op = ops.queue_put(
            name,
            payload,
            data["priority"],
            data["dedup_id"],
            data["delay"],
            hold_key=data["hold_key"],
            tag=data["tag"],
        )
        result = coordinator().run(op)
        return Response(result, status=status.HTTP_201_CREATED)

    @operation(parameters=[s.QueuePeek], summary="The next ready messages (not leased)")
    def get(self, request: Request, name: str) -> Response:
        query = s.QueuePeek(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = coordinator().queue(name).peek(query.validated_data["limit"])
        return Response([{**row, "payload": _text(row["payload"])} for row in rows])


class QueueGetView(Primitive):
    @operation(request=s.QueueGet, summary="Lease the next message (204 if none)")
    def post(self, request: Request, name: str) -> Response:
        data = _valid(s.QueueGet, request)
        op = ops.queue_get(data["session"], name, data["wait"], data["visibility"])
        msg = coordinator().run(op)
        if not msg:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response({**msg, "payload": _text(msg["payload"])})


class QueueAckView(Primitive):
    @operation(request=s.QueueAck)
    def post(self, request: Request, name: str, msg_id: int) -> Response:
        data = _valid(s.QueueAck, request)
        coordinator().run(ops.queue_ack(data["session"], name, msg_id))
        return Response({"acked": True})


class QueueNackView(Primitive):
    @operation(request=s.QueueNack)
    def post(self, request: Request, name: str, msg_id: int) -> Response:
        data = _valid(s.QueueNack, request)
        op = ops.queue_nack(data["session"], name, msg_id, data["requeue"], data["delay"])
        coordinator().run(op)
        return Response({"nacked": True})


class QueueDeadLettersView(Primitive):
    def get(self, request: Request, name: str) -> Response:
        rows = coordinator().queue(name).dead_letters(DEAD_LETTERS_SHOWN)
        return Response([{**row, "payload": _text(row["payload"])} for row in rows])


class QueuePurgeView(RaftsyncAPIView):
    permission_classes = (OperateCluster,)

    @operation(request=None)
    def post(self, request: Request, name: str) -> Response:
        return Response({"purged": coordinator().queue(name).purge()})


class QueueRequeueDeadView(RaftsyncAPIView):
    permission_classes = (OperateCluster,)

    @operation(request=None)
    def post(self, request: Request, name: str) -> Response:
        return Response({"requeued": coordinator().queue(name).requeue_dead()})


# -- cache ----------------------------------------------------------------------------------------


class CacheView(Primitive):
    def get(self, request: Request, key: str) -> Response:
        found = coordinator().run(ops.cache_get(key))
        if not found or found.get("evicted"):
            raise UnknownKey("unknown_key", "no such key")
        return Response({**found, "value": _text(found["value"])})

    @operation(request=s.CacheSet)
    def put(self, request: Request, key: str) -> Response:
        data = _valid(s.CacheSet, request)
        version = coordinator().run(ops.cache_set(key, data["value"].encode(), data["ttl"]))
        return Response({"version": version})

    def delete(self, request: Request, key: str) -> Response:
        existed = coordinator().run(ops.cache_delete(key))
        return Response(status=204 if existed else 404)


class CacheIncrView(Primitive):
    @operation(request=s.CacheIncr)
    def post(self, request: Request, key: str) -> Response:
        data = _valid(s.CacheIncr, request)
        value = coordinator().run(ops.cache_incr(key, data["delta"]))
        return Response({"value": value})


def _describe_responses() -> None:
    """These views answer JSON objects shaped by the primitives (documented in the README);
    declare that, so the OpenAPI schema covers every view instead of skipping them."""
    from drf_spectacular.types import OpenApiTypes

    for view in (obj for obj in list(globals().values()) if isinstance(obj, type)):
        if not issubclass(view, APIView) or view in (APIView, RaftsyncAPIView, Primitive):
            continue
        for method in ("get", "post", "put", "delete"):
            handler = view.__dict__.get(method)
            if handler is not None:
                setattr(view, method, operation(responses=OpenApiTypes.OBJECT)(handler))


_describe_responses()
