"""A tiny replicated key-value register, the state machine the simulator runs on the log.

Commands carry ``(client, seq)``; the state machine remembers each client's last sequence number
and result, so a command that a client retries after a leader change is applied once and
answered with the first result (Raft thesis section 6.3). The simulator's linearizability check
depends on this: without it a retried write could apply twice and be seen out of order.
"""

from __future__ import annotations

import json


def encode_put(client: str, seq: int, key: str, value: str) -> bytes:
    return f"put|{client}|{seq}|{key}|{value}".encode()


def encode_get(client: str, seq: int, key: str) -> bytes:
    return f"get|{client}|{seq}|{key}|".encode()


class KVStateMachine:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.sessions: dict[str, tuple[int, str | None]] = {}
        self.applied_index = 0

    def apply(self, index: int, command: bytes) -> str | None:
        self.applied_index = index
        if not command:
            return None  # leader no-op
        op, client, seq_s, key, value = command.decode().split("|", 4)
        seq = int(seq_s)
        last = self.sessions.get(client)
        if last is not None and seq <= last[0]:
            return last[1] if seq == last[0] else None  # duplicate: answer, do not re-apply
        if op == "put":
            self.data[key] = value
            result = None
        else:
            result = self.data.get(key)
        self.sessions[client] = (seq, result)
        return result

    def read(self, key: str) -> str | None:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        state = {
            "data": self.data,
            "sessions": {c: list(v) for c, v in self.sessions.items()},
            "applied": self.applied_index,
        }
        return json.dumps(state, sort_keys=True).encode()

    def restore(self, blob: bytes) -> None:
        state = json.loads(blob)
        self.data = dict(state["data"])
        self.sessions = {c: (v[0], v[1]) for c, v in state["sessions"].items()}
        self.applied_index = state["applied"]
