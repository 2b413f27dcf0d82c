"""The client protocol: request and response shapes on a CLIENT frame, validated both ways.

One authenticated connection carries many requests at once (pipelining); each request has a
connection-unique ``req_id`` echoed in its response, and responses may come back out of order.

Requests (msgpack arrays)::

    [PROPOSE, req_id, client_id, seq, body]     apply ``body`` via the log, once per (client, seq)
    [READ,    req_id, query, stale]             query the state machine; linearizable unless stale
    [STATUS,  req_id]                           this node's Raft status
    [TRANSFER, req_id, target]                  ask the leader to hand leadership to ``target``
    [WATCH,   req_id, topic]                    stream state machine events on ``topic``
    [WATCH,   req_id, topic, replay, options]   the same, after replaying a query (below)
    [MEMBERS, req_id, op, node, address]        membership: "list", or a single-server change
                                                ("add_learner" with the node's host:port,
                                                "promote", "remove"); answered by the leader

Responses::

    [req_id, OK, value, leader_hint]
    [req_id, ERR, kind, {"code": code, "message": message, "details": {...}}, leader_hint]

A WATCH is answered first with ``[req_id, OK, ["subscribed", applied_index], hint]`` and then
with one ``[req_id, OK, ["event", index, payload], hint]`` per event, in log order, until the
connection closes. Events are emitted by every node as it applies entries, so any node can serve
a watch; a client that reconnects may have missed events and must resynchronise.

The five-field WATCH closes that gap for a state machine that keeps a history: ``replay`` (a
query, or nil) runs on the node's state machine in the same step as the subscription, and its
answer is the third element of ``subscribed``; every event after it is streamed, none before.
A rejected replay ends the watch with that rejection. ``options`` (a map): ``leader`` (only the
leader may serve it: ``not_leader`` with a hint otherwise, and the watch ends with
``not_leader`` if the node loses leadership), ``max_lag_ms`` (a follower ends the watch with
``unavailable`` once it has not heard from a leader for that long: the bound on how stale its
stream may be) and ``progress_ms`` (send ``["progress", applied_index]`` after that long
without an event, so the client can tell a quiet stream from a dead connection).

An error is a record, never a string to parse. ``kind`` is one of ``ERROR_KINDS`` and says what
the client does next (retry elsewhere, retry, or raise); the record says what went wrong:
``code`` (a stable identifier), ``message`` (for people) and ``details`` (a map with string keys,
for programs: e.g. the cycle of a deadlock). For the engine's own kinds the record's ``code`` is
the kind; for ``rejected`` it is the state machine's code (``deadlock``, ``bad_command``...),
carried as the state machine raised it (``CommandRejected(code, message, details)``).
``leader_hint`` is the ``host:port`` of the leader as this node knows it ('' if unknown), so a
client talking to a follower learns where to go next time.

A client session (``client_id``) must have at most one PROPOSE outstanding: the state machine's
duplicate detection remembers only the latest ``seq`` per client. Concurrent callers use several
client ids (the async client does this for you).

**Definite and uncertain failures of a PROPOSE.** A ``not_leader``, ``unavailable`` or
``timeout`` answer to a proposal says the node has no outcome for it, not that it will never
have one: a leader that appended the entry and then lost leadership, stopped, or ran out of
time may still see it committed (by itself or by the next leader). A node that knows the
proposal went nowhere (it is not the leader and never forwarded it, it is overloaded, no leader
is known, the leader could not be dialled) says so with ``details[DEFINITE] = True``. A client
treats every other such answer as "may have been applied" (older nodes never set the flag:
the safe reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROPOSE, READ, STATUS, TRANSFER, WATCH, MEMBERS = 1, 2, 3, 4, 5, 6
MEMBER_OPS = frozenset({"list", "add_learner", "promote", "remove"})
MAX_TOPIC = 200
OK, ERR = 0, 1

# Error kinds (strings on the wire so logs and other-language clients read them).
NOT_LEADER = "not_leader"  # no leader known, or the request must go elsewhere; retry
TIMEOUT = "timeout"  # not answered within the server's deadline; outcome unknown; retry
UNAVAILABLE = "unavailable"  # node is shutting down or has no quorum; retry elsewhere/later
REJECTED = "rejected"  # the state machine refused the command (its code is the record's)
BAD_REQUEST = "bad_request"  # malformed request; do not retry
ERROR_KINDS = frozenset({NOT_LEADER, TIMEOUT, UNAVAILABLE, REJECTED, BAD_REQUEST})
MAX_ERROR_CODE = 64
DEFINITE = "definite"  # details key: this proposal was not accepted, and never will be

MAX_CLIENT_ID = 128
MAX_BODY_BYTES = 1 << 20


class ProtocolError(ValueError):
    """A request or response that does not follow the shapes above."""


@dataclass(frozen=True, slots=True)
class Propose:
    req_id: int
    client_id: str
    seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Read:
    req_id: int
    query: bytes
    stale: bool


@dataclass(frozen=True, slots=True)
class Status:
    req_id: int


@dataclass(frozen=True, slots=True)
class Transfer:
    req_id: int
    target: str


@dataclass(frozen=True, slots=True)
class Watch:
    req_id: int
    topic: str
    replay: bytes | None = None
    leader: bool = False
    max_lag_ms: int | None = None
    progress_ms: int | None = None


WATCH_OPTIONS = frozenset({"leader", "max_lag_ms", "progress_ms"})


@dataclass(frozen=True, slots=True)
class Members:
    req_id: int
    op: str
    node: str
    address: str


Request = Propose | Read | Status | Transfer | Watch | Members


def parse_request(obj: Any) -> Request:
    """Validate a decoded CLIENT frame body. Raises ``ProtocolError`` with a useful message."""
    if not isinstance(obj, (list, tuple)) or len(obj) < 2:
        raise ProtocolError("request must be an array [kind, req_id, ...]")
    kind, req_id = obj[0], obj[1]
    if not isinstance(req_id, int) or isinstance(req_id, bool) or req_id < 0:
        raise ProtocolError("req_id must be a non-negative integer")
    if kind == PROPOSE and len(obj) == 5:
        _, _, client_id, seq, body = obj
        if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID:
            raise ProtocolError(f"client_id must be a string of 1..{MAX_CLIENT_ID} chars")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ProtocolError("seq must be a positive integer")
        _check_body(body)
        return Propose(req_id, client_id, seq, body)
    if kind == READ and len(obj) == 4:
        _check_body(obj[2])
        if not isinstance(obj[3], bool):
            raise ProtocolError("stale must be a boolean")
        return Read(req_id, obj[2], obj[3])
    if kind == STATUS and len(obj) == 2:
        return Status(req_id)
    if kind == TRANSFER and len(obj) == 3 and isinstance(obj[2], str):
        return Transfer(req_id, obj[2])
    if kind == MEMBERS and len(obj) == 5:
        _, _, op, node, address = obj
        if op not in MEMBER_OPS:
            raise ProtocolError(f"membership op must be one of {sorted(MEMBER_OPS)}")
        if not isinstance(node, str) or len(node) > MAX_CLIENT_ID or (op != "list" and not node):
            raise ProtocolError(f"node must be an id of 1..{MAX_CLIENT_ID} chars")
        if not isinstance(address, str) or len(address) > MAX_TOPIC:
            raise ProtocolError("address must be a host:port string")
        return Members(req_id, op, node, address)
    if kind == WATCH and len(obj) in (3, 5):
        if not isinstance(obj[2], str) or not 0 < len(obj[2]) <= MAX_TOPIC:
            raise ProtocolError(f"topic must be a string of 1..{MAX_TOPIC} chars")
        if len(obj) == 3:
            return Watch(req_id, obj[2])
        return _parse_watch(req_id, obj[2], obj[3], obj[4])
    raise ProtocolError(f"unknown request kind {kind!r} with {len(obj)} fields")


def _parse_watch(req_id: int, topic: str, replay: Any, options: Any) -> Watch:
    if replay is not None:
        _check_body(replay)
    if not isinstance(options, dict) or not set(options) <= WATCH_OPTIONS:
        raise ProtocolError(f"watch options must be a map with keys from {sorted(WATCH_OPTIONS)}")
    leader = options.get("leader", False)
    if not isinstance(leader, bool):
        raise ProtocolError("watch option leader must be a boolean")
    bounds = [options.get("max_lag_ms"), options.get("progress_ms")]
    for name, value in zip(("max_lag_ms", "progress_ms"), bounds, strict=True):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 3_600_000
        ):
            raise ProtocolError(f"watch option {name} must be milliseconds in 1..3600000")
    return Watch(req_id, topic, replay, leader, *bounds)


def _check_body(body: Any) -> None:
    if not isinstance(body, bytes) or len(body) > MAX_BODY_BYTES:
        raise ProtocolError(f"body must be bytes of at most {MAX_BODY_BYTES}")


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """What went wrong, as it crosses the wire: a stable ``code``, a ``message`` for people and
    ``details`` for programs (msgpack-able values under string keys)."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    @classmethod
    def from_wire(cls, obj: Any) -> ErrorRecord:
        """Validate a decoded record. Raises ``ProtocolError``."""
        if not isinstance(obj, dict) or set(obj) != {"code", "message", "details"}:
            raise ProtocolError("error must be a map of code, message and details")
        code, message, details = obj["code"], obj["message"], obj["details"]
        if not isinstance(code, str) or not 0 < len(code) <= MAX_ERROR_CODE:
            raise ProtocolError(f"error code must be a string of 1..{MAX_ERROR_CODE} chars")
        if not isinstance(message, str):
            raise ProtocolError("error message must be a string")
        if not isinstance(details, dict) or not all(isinstance(k, str) for k in details):
            raise ProtocolError("error details must be a map with string keys")
        return cls(code, message, details)


def ok(req_id: int, value: Any, leader_hint: str = "") -> list:
    return [req_id, OK, value, leader_hint]


def err(
    req_id: int, kind: str, message: str, leader_hint: str = "", *, definite: bool = False
) -> list:
    """An error of the engine itself (``kind`` is also the record's code); ``definite`` marks
    a proposal that was not accepted (``DEFINITE`` above), so its client may say so."""
    if kind == REJECTED:
        raise ProtocolError("a rejection carries the state machine's code: use rejected()")
    details = {DEFINITE: True} if definite else {}
    return error(req_id, kind, ErrorRecord(kind, message, details), leader_hint)


def rejected(
    req_id: int, code: str, message: str, details: dict[str, Any], leader_hint: str = ""
) -> list:
    """The state machine refused the command with ``CommandRejected(code, message, details)``."""
    return error(req_id, REJECTED, ErrorRecord(code, message, details), leader_hint)


def error(req_id: int, kind: str, record: ErrorRecord, leader_hint: str = "") -> list:
    """Any error response (a node relaying its leader's answer passes the record on as is)."""
    if kind not in ERROR_KINDS or (kind != REJECTED and record.code != kind):
        raise ProtocolError(f"error kind {kind!r} with code {record.code!r}")
    return [req_id, ERR, kind, record.to_wire(), leader_hint]


@dataclass(frozen=True, slots=True)
class Response:
    req_id: int
    ok: bool
    value: Any  # result when ok
    kind: str  # error kind when not ok ('' when ok)
    error: ErrorRecord | None  # the error when not ok
    leader_hint: str

    @property
    def code(self) -> str:
        """The error's code ('' when ok): the kind, or the state machine's code if rejected."""
        return self.error.code if self.error is not None else ""

    @property
    def message(self) -> str:
        return self.error.message if self.error is not None else ""


def parse_response(obj: Any) -> Response:
    if isinstance(obj, (list, tuple)) and len(obj) == 4 and obj[1] == OK:
        return Response(obj[0], True, obj[2], "", None, _hint(obj[3]))
    if isinstance(obj, (list, tuple)) and len(obj) == 5 and obj[1] == ERR:
        kind = obj[2]
        if kind not in ERROR_KINDS:
            raise ProtocolError(f"unknown error kind {kind!r:.80}")
        record = ErrorRecord.from_wire(obj[3])
        if kind != REJECTED and record.code != kind:
            raise ProtocolError(f"error kind {kind!r} with code {record.code!r:.80}")
        return Response(obj[0], False, None, kind, record, _hint(obj[4]))
    raise ProtocolError(f"malformed response {obj!r:.200}")


def _hint(value: Any) -> str:
    return value if isinstance(value, str) else ""
