"""A tiny replicated key-value register, the state machine the simulator runs on the log.

A ``StateMachine`` (``raft_node.core.fsm``) like the product's: the node host wraps it in its
applier, whose ``(client, seq)`` envelope makes a command that a client retries after a leader
change apply once and answer with the first result (Raft thesis section 6.3). The simulator's
linearizability check depends on that dedup, so it tests the applier the node process runs.

Commands are ``put|key|value`` and ``get|key|`` (a read through the log); the query (a
ReadIndex read) is ``get|key|`` too.
"""

from __future__ import annotations

import json

from raft_node.core.fsm import CommandRejected


def encode_put(key: str, value: str) -> bytes:
    return f"put|{key}|{value}".encode()


def encode_get(key: str) -> bytes:
    return f"get|{key}|".encode()


class KVStateMachine:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, index: int, command: bytes, now_ms: int) -> str | None:
        op, key, value = command.decode().split("|", 2)
        if op == "put":
            self.data[key] = value
            return None
        if op == "get":
            return self.data.get(key)
        raise CommandRejected("bad_command", f"unknown command {op!r}")

    def query(self, query: bytes) -> str | None:
        op, key, _ = query.decode().split("|", 2)
        if op != "get":
            raise CommandRejected("bad_query", f"unknown query {op!r}")
        return self.read(key)

    def read(self, key: str) -> str | None:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return json.dumps(self.data, sort_keys=True).encode()

    def restore(self, blob: bytes) -> None:
        self.data = dict(json.loads(blob))
