"""The sans-I/O core of ``coord.watch``: what it asks a node for, and how it turns answers into
events: replay then live, duplicates dropped, a skipped version or a lost leader makes it
resubscribe after the last version it handled, and a compacted history is a typed error."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from coordination.client.watch import Reconnect, WatchCursor, _page_of, cursor_for
from coordination.exceptions import BadRequest, LimitExceeded, WatchCompacted
from raft_node.transport import client_protocol as p
from raft_node.transport.codec import decode_payload


def _event(version: int, key: str = "k", kind: str = "cache", type_: str = "put") -> list:
    return [version, version + 10, 1_000, kind, type_, key, b"v", {"key_version": version + 10}]


def _ok(value: Any, hint: str = "") -> p.Response:
    return p.parse_response([1, p.OK, value, hint])


def _subscribed(events: list, revision: int, more: bool = False) -> p.Response:
    replay = {"events": events, "revision": revision, "oldest": 1, "more": more}
    return _ok(["subscribed", 5, replay])


def _live(event: list) -> p.Response:
    return _ok(["event", event[1], event])


def _request(cursor: WatchCursor) -> tuple[list, list]:
    kind, req_id, topic, replay, options = decode_payload(cursor.request())
    assert (kind, req_id, topic) == (p.WATCH, 1, "watch")
    return msgpack.unpackb(replay, raw=False), options


def test_it_asks_for_the_history_after_its_version_then_follows_live_events():
    cursor = cursor_for("k", since_version=3)
    replay, options = _request(cursor)
    assert replay == ["history.since", "k", False, 3, 10_000]
    assert options == {"progress_ms": 1_000, "leader": True}
    got = cursor.on_response(_subscribed([_event(4), _event(6)], revision=6))
    assert [e.version for e in got] == [4, 6] and cursor.version == 6
    assert cursor.on_response(_live(_event(7)))[0].key == "k"
    assert cursor.on_response(_live(_event(7))) == []  # a duplicate
    assert cursor.on_response(_ok(["progress", 99])) == []
    assert cursor.on_response(_live(_event(8, key="other"))) == []  # filtered, but counted
    assert cursor.version == 8
    assert _request(cursor)[0][3] == 8  # a reconnect resumes after it


def test_from_now_asks_for_no_history_and_starts_at_the_revision():
    cursor = cursor_for("", None)
    assert _request(cursor)[0][3] is None
    assert cursor.on_response(_subscribed([], revision=41)) == []
    assert cursor.version == 41


def test_a_skipped_version_resubscribes_after_the_last_one_handled():
    cursor = cursor_for("", 0)
    cursor.on_response(_subscribed([_event(1)], revision=1))
    with pytest.raises(Reconnect):
        cursor.on_response(_live(_event(3)))
    assert cursor.version == 1


def test_a_node_behind_the_watch_does_not_make_it_go_back():
    cursor = cursor_for("", 10)
    assert cursor.on_response(_subscribed([], revision=7)) == []  # a lagging node
    assert cursor.version == 10
    assert cursor.on_response(_live(_event(8))) == []  # seen already, from the other node
    assert cursor.on_response(_live(_event(11)))[0].version == 11


def test_a_page_of_history_is_handed_out_and_the_rest_asked_for():
    cursor = cursor_for("", 0)
    with pytest.raises(Reconnect) as info:
        cursor.on_response(_subscribed([_event(1), _event(2)], revision=9, more=True))
    assert [e.version for e in _page_of(info.value)] == [1, 2] and cursor.version == 2


def test_leadership_moves_and_unavailability_reconnect_with_the_hint():
    cursor = cursor_for("", 0)
    resp = p.parse_response(
        [1, p.ERR, p.NOT_LEADER, {"code": p.NOT_LEADER, "message": "m", "details": {}}, "h:1"]
    )
    with pytest.raises(Reconnect) as info:
        cursor.on_response(resp)
    assert info.value.hint == "h:1"


def test_a_compacted_history_is_a_typed_error_naming_the_oldest_version():
    cursor = cursor_for("", 0)
    record = {"code": "compacted", "message": "gone", "details": {"oldest": 40, "revision": 90}}
    with pytest.raises(WatchCompacted) as info:
        cursor.on_response(p.parse_response([1, p.ERR, p.REJECTED, record, ""]))
    assert info.value.oldest == 40 and info.value.revision == 90
    record = {"code": "bad_request", "message": "bad", "details": {}}
    with pytest.raises(BadRequest):
        cursor.on_response(p.parse_response([1, p.ERR, p.BAD_REQUEST, record, ""]))


def test_kinds_and_exact_keys_filter_events():
    cursor = cursor_for("job", 0, exact=True, kinds="lock")
    cursor.on_response(_subscribed([], revision=0))
    assert cursor.on_response(_live(_event(1, key="job"))) == []  # a cache event
    assert cursor.on_response(_live(_event(2, key="jobs", kind="lock"))) == []
    got = cursor.on_response(_live(_event(3, key="job", kind="lock", type_="acquired")))
    assert got[0].type == "acquired"


def test_a_follower_watch_states_its_staleness_bound():
    _, options = _request(cursor_for("", None, follower_ok=True, max_lag=0.5))
    assert options == {"progress_ms": 1_000, "max_lag_ms": 500}


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"since_version": -1}, ValueError),
        ({"since_version": "3"}, TypeError),
        ({"kinds": ["queue"]}, ValueError),
        ({"max_lag": 0}, ValueError),
        ({"key_or_prefix": "k" * 201}, LimitExceeded),
    ],
)
def test_bad_arguments_are_refused_before_connecting(kwargs, error):
    kwargs = {"key_or_prefix": "k", "since_version": None, **kwargs}
    with pytest.raises(error):
        cursor_for(**kwargs)
