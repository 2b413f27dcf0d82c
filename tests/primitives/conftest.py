"""Every command the primitives' tests apply is also checked by ``CoordinationMachine.validate``,
the leader's pre-log check, which must agree with ``apply``: if it refuses a command, ``apply``
refuses it too, with the same code and message (it may only refuse what would be refused in any
state). So the whole suite, hypothesis runs included, is a test of that agreement; a
disagreement fails the test that met it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from coordination.primitives.machine import GRACE, TICK, CoordinationMachine
from raft_node.core.fsm import CommandRejected

_apply = CoordinationMachine.apply


def _checked_apply(self: CoordinationMachine, index: int, command: bytes, now_ms: int) -> Any:
    if command in (TICK, GRACE):  # system commands: validate refuses them from clients
        return _apply(self, index, command, now_ms)
    try:
        self.validate(command)
        refused = None
    except CommandRejected as exc:
        refused = exc
    try:
        result = _apply(self, index, command, now_ms)
    except CommandRejected as exc:
        if refused is not None:
            assert (refused.code, refused.message) == (exc.code, exc.message), command
        raise
    assert refused is None, f"validate refused {command!r} ({refused}), apply accepted it"
    return result


@pytest.fixture(autouse=True)
def validate_agrees_with_apply(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(CoordinationMachine, "apply", _checked_apply)
    yield
