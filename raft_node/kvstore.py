"""A replicated key-value store: the state machine the node hosts until the coordination
primitives plug in their own. Deterministic; values are bytes; commands are msgpack.

Commands: ``("put", key, value)``, ``("delete", key)``, ``("cas", key, expected, new)``
(``expected`` None means "absent"), ``("incr", key, delta)``.
Queries: ``("get", key)``, ``("len",)``.
"""

from __future__ import annotations

from typing import Any

import msgpack

from raft_node.core.fsm import CommandRejected

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20


def put(key: str, value: bytes) -> bytes:
    return msgpack.packb(("put", key, value), use_bin_type=True)


def get(key: str) -> bytes:
    return msgpack.packb(("get", key), use_bin_type=True)


def delete(key: str) -> bytes:
    return msgpack.packb(("delete", key), use_bin_type=True)


def cas(key: str, expected: bytes | None, new: bytes) -> bytes:
    return msgpack.packb(("cas", key, expected, new), use_bin_type=True)


def incr(key: str, delta: int = 1) -> bytes:
    return msgpack.packb(("incr", key, delta), use_bin_type=True)


class KVStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def apply(self, index: int, command: bytes, now_ms: int) -> Any:
        op = _decode(command)
        name = op[0]
        if name == "put" and len(op) == 3:
            key, value = _key(op[1]), _value(op[2])
            self.data[key] = value
            return index
        if name == "delete" and len(op) == 2:
            return self.data.pop(_key(op[1]), None) is not None
        if name == "cas" and len(op) == 4:
            key, new = _key(op[1]), _value(op[3])
            if self.data.get(key) != op[2]:
                return False
            self.data[key] = new
            return True
        if name == "incr" and len(op) == 3 and isinstance(op[2], int):
            key = _key(op[1])
            try:
                current = int(self.data.get(key, b"0"))
            except ValueError:
                raise CommandRejected(
                    "not_integer", f"value of {key!r} is not an integer"
                ) from None
            self.data[key] = str(current + op[2]).encode()
            return current + op[2]
        raise CommandRejected("bad_command", f"unknown command {name!r}/{len(op)}")

    def query(self, query: bytes) -> Any:
        op = _decode(query)
        if op[0] == "get" and len(op) == 2:
            return self.data.get(_key(op[1]))
        if op[0] == "len":
            return len(self.data)
        raise CommandRejected("bad_query", f"unknown query {op[0]!r}")

    def snapshot(self) -> bytes:
        # Dict order is insertion order, itself a function of the log: identical on every
        # replica (also after a restore), so no sort is needed for identical snapshots.
        return msgpack.packb(self.data, use_bin_type=True)

    def restore(self, data: bytes) -> None:
        self.data = msgpack.unpackb(data, raw=False)


def _decode(raw: bytes) -> tuple:
    try:
        op = msgpack.unpackb(raw, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises several types on garbage
        raise CommandRejected("bad_command", f"undecodable command: {exc}") from None
    if not isinstance(op, tuple) or not op or not isinstance(op[0], str):
        raise CommandRejected("bad_command", "command must be a non-empty array")
    return op


def _key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY_BYTES:
        raise CommandRejected("bad_key", f"key must be a non-empty string <= {MAX_KEY_BYTES} B")
    return key


def _value(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
        raise CommandRejected("bad_value", f"value must be bytes <= {MAX_VALUE_BYTES} B")
    return value
