"""The change history over HTTP, as a long poll (``coord.watch`` for clients that cannot hold a
raftsync connection: shell scripts, other languages):

    GET /api/watch/?prefix=jobs:                       {"events": [], "version": 812}
    GET /api/watch/?prefix=jobs:&since_version=812&wait=25
        {"events": [{"version": 813, "kind": "cache", "type": "put", "key": "jobs:7", ...}],
         "version": 813, "more": false}

Pass the answer's ``version`` as the next ``since_version``: each change is returned once, in
order. Without ``since_version`` the answer is only the current version (where to start). With
``wait`` the request is held up to that many seconds until a change arrives. A version older
than the retained history is 410 (``compacted``) with the oldest version still available in
``details``. Values are shown as text, as in the cache endpoints.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from coordination.api.base import operation
from coordination.api.views import Primitive, _text
from coordination.client.watch import WatchEvent
from coordination.primitives import commands, limits
from coordination.shared_coordinator import coordinator

MAX_WAIT = 30.0
MAX_LIMIT = 1_000


class WatchQuery(serializers.Serializer):
    prefix = serializers.CharField(
        default="", allow_blank=True, max_length=limits.NAME_MAX_BYTES, trim_whitespace=False
    )
    exact = serializers.BooleanField(default=False)
    since_version = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    wait = serializers.FloatField(min_value=0, max_value=MAX_WAIT, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=MAX_LIMIT, default=100)


def _event(event: WatchEvent) -> dict[str, Any]:
    return {
        "version": event.version,
        "index": event.index,
        "time_ms": event.time_ms,
        "kind": event.kind,
        "type": event.type,
        "key": event.key,
        "value": _text(event.value),
        "details": event.details,
    }


class WatchView(Primitive):
    @operation(
        parameters=[WatchQuery],
        summary="Changes after since_version (cache and locks), in order; wait: long poll",
    )
    def get(self, request: Request) -> Response:
        query = WatchQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        args = query.validated_data
        prefix, exact, since = args["prefix"], args["exact"], args.get("since_version")
        coord = coordinator()
        found = coord.query(commands.history_since(prefix, exact, since, args["limit"]))
        events = [WatchEvent.from_wire(e) for e in found["events"]]
        version = events[-1].version if found["more"] else found["revision"]
        if since is not None and not events and args["wait"] > 0:
            events, version = _wait_for_changes(coord, prefix, exact, version, args)
        return Response(
            {"events": [_event(e) for e in events], "version": version, "more": found["more"]}
        )


def _wait_for_changes(
    coord: Any, prefix: str, exact: bool, version: int, args: dict[str, Any]
) -> tuple[list[WatchEvent], int]:
    """Hold the request until a change after ``version`` (or ``wait`` seconds); then hand out
    what arrived with it, up to ``limit``."""
    with coord.watch(prefix, since_version=version, exact=exact) as watch:
        first = watch.get(args["wait"])
        events = [] if first is None else [first]
        while events and len(events) < args["limit"]:
            more = watch.get(0.05)
            if more is None:
                break
            events.append(more)
        return events, events[-1].version if events else version
