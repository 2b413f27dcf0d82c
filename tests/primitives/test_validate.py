"""``CoordinationMachine.validate``: the leader's check of a client command before it takes a log
entry. It refuses garbage (not msgpack, not ``[op, *args]``, an unknown op, a system op, wrong
arity or argument types) with the error ``apply`` gives, and passes every command the clients
build, whatever the state (state-dependent refusals stay with ``apply``). That it agrees with
``apply`` on every command of the primitives' tests is checked by ``conftest.py``; these are the
cases on purpose, plus a fuzz of both."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.primitives import commands as c
from coordination.primitives import limits
from coordination.primitives.errors import BAD_COMMAND, LIMIT
from coordination.primitives.machine import GRACE, TICK, CoordinationMachine
from raft_node.core.fsm import CommandRejected


def _pack(*args: Any) -> bytes:
    return msgpack.packb(list(args), use_bin_type=True)


def _refusal(m: CoordinationMachine, command: bytes) -> tuple[str, str] | None:
    try:
        m.validate(command)
    except CommandRejected as exc:
        return exc.code, exc.message
    return None


def _applied(m: CoordinationMachine, command: bytes, index: int = 10) -> tuple[str, str] | None:
    try:
        m.apply(index, command, 5_000)
    except CommandRejected as exc:
        return exc.code, exc.message
    return None


GARBAGE = [
    b"",
    b"\xc1",  # never valid msgpack
    b"\x93\x01",  # truncated array
    b"\xff" * 300,
    b"GET / HTTP/1.1\r\n\r\n",
    msgpack.packb({"op": "cache.set"}),
    msgpack.packb("cache.set"),
    msgpack.packb(42),
    msgpack.packb([]),
    msgpack.packb([7, "k"]),
    msgpack.packb([b"cache.set", "k", b"v", None]),  # the op name as bytes, not a string
    _pack("cache.nope", "k"),
    _pack("cache.get", "k"),  # a query, not a command
]


@pytest.mark.parametrize("command", GARBAGE)
def test_garbage_is_refused_as_a_bad_command_as_apply_refuses_it(command: bytes) -> None:
    m = CoordinationMachine()
    refused = _refusal(m, command)
    assert refused is not None and refused[0] == BAD_COMMAND
    assert _applied(CoordinationMachine(), command) == refused


def test_system_commands_are_not_a_clients_to_send() -> None:
    m = CoordinationMachine()
    for command in (TICK, GRACE):
        code, message = _refusal(m, command) or ("", "")
        assert code == BAD_COMMAND and "system command" in message


def test_every_op_checks_at_least_its_arity_as_apply_does() -> None:
    """A new op without a check would let garbage of its shape into the log: each has one, and
    one argument too many or too few is refused exactly as ``apply`` refuses it."""
    m = CoordinationMachine()
    assert set(m._checks) == set(m._ops) and None not in m._checks.values()
    for op in m._ops:
        for count in (0, 8):  # no op takes 0 arguments except cache.clear; none takes 8
            command = _pack(op, *([None] * count))
            refused = _refusal(m, command)
            if op == "cache.clear" and count == 0:
                assert refused is None
                continue
            assert refused is not None and refused[0] == BAD_COMMAND, op
            assert refused == _applied(CoordinationMachine(), command), op


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (c.cache_set("", b"v", None), BAD_COMMAND),  # empty key
        (_pack("cache.set", 42, b"v", None), BAD_COMMAND),  # key not a string
        (_pack("cache.set", "k", "text", None), BAD_COMMAND),  # value not bytes
        (_pack("cache.set", "k", b"v", "soon"), BAD_COMMAND),  # ttl not an integer
        (c.cache_set("k" * 201, b"v", None), LIMIT),
        (c.cache_set("k", b"v" * (limits.VALUE_MAX_BYTES + 1), None), LIMIT),
        (_pack("cache.incr", "k", 1.5), BAD_COMMAND),
        (_pack("cache.cas", "k", "v1", b"v", None), BAD_COMMAND),  # version not an integer
        (_pack("cache.set_many", [["k"]], None), BAD_COMMAND),
        (_pack("cache.delete_many", "k"), BAD_COMMAND),
        (_pack("cache.fill", "s1", "k", 1000), BAD_COMMAND),  # session id not an integer
        (_pack("cache.set_hold", True, "k", b"v", None, 1000), BAD_COMMAND),
        (_pack("session.open", "10s", ""), BAD_COMMAND),
        (c.session_open(10, ""), LIMIT),  # below the shortest TTL
        (_pack("session.keepalive", "1"), BAD_COMMAND),
        (c.lock_acquire(1, "a lock", "exclusive", "me", 0), BAD_COMMAND),  # a space in the name
        (c.lock_acquire(1, "l", "forever", "me", 0), BAD_COMMAND),
        (c.lock_acquire(1, "l", "exclusive", "me", -1), LIMIT),
        (c.lock_acquire("1", "l", "exclusive", "me", 0), BAD_COMMAND),
        (_pack("lock.release", 1, "l", None), BAD_COMMAND),
    ],
)
def test_argument_types_and_fixed_limits_are_refused_as_apply_refuses_them(
    command: bytes, code: str
) -> None:
    refused = _refusal(CoordinationMachine(), command)
    assert refused is not None and refused[0] == code
    assert _applied(CoordinationMachine(), command) == refused


CLIENT_COMMANDS = [
    c.session_open(30_000, "worker"),
    c.session_keepalive(999),  # no such session: apply's to say, in the log
    c.lock_acquire(999, "report:1", "exclusive", "me", 1000),
    c.lock_release(999, "report:1", "me"),
    c.cache_set("user:42", b"x" * 200, 60_000),
    c.cache_set_hold(999, "user:42", b"v", None, 5_000),
    c.cache_fill(999, "user:42", 5_000),
    c.cache_release(999, [["user:42", 7], "other"]),
    c.cache_cas("user:42", None, b"v", None),
    c.cache_cas("user:42", 12, b"v", 1000),
    c.cache_incr("n", -3),
    c.cache_set_many([("a", b"1"), ("b", b"2")], None),
    c.cache_delete_many(["a", "b"]),
    c.cache_clear(),
    c.queue_put("jobs", b"payload", 5, None, 0),
    c.queue_put("jobs", b"payload", 5, "dedup-1", 0, ("held", "tag")),
    c.sem_acquire(999, "pool", 3, "me", 0),
    c.ratelimit_take("api", 100, 1000, 100, 1),
    c.result_set("task:1", b"ok", None, True, None),
]


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_well_formed_commands_pass_whatever_the_state(command: bytes) -> None:
    m = CoordinationMachine()
    before = m.snapshot()
    assert _refusal(m, command) is None
    assert m.snapshot() == before  # validate reads and changes nothing


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(op=st.sampled_from(sorted(CoordinationMachine()._ops)), args=st.lists(_values, max_size=6))
def test_validate_refuses_only_what_apply_refuses_the_same_way(op: str, args: list[Any]) -> None:
    """Random arguments for every op, applied on a machine with a live session (id 1): the
    conftest's wrapper asserts that a command ``validate`` refuses is refused by ``apply`` with
    the same code and message."""
    m = CoordinationMachine()
    m.apply(1, c.session_open(30_000, ""), 1_000)
    _applied(m, _pack(op, *args), index=2)
