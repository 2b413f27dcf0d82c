"""Simulated clients of the key-value register, and the history they leave behind.

Each client has at most one operation outstanding, as a real synchronous client would; clients
run concurrently with each other. A write (or a read through the log) is retried with the same
``(client, seq)`` until it completes, so its outcome is always known by the end of the liveness
phase; the state machine's dedup makes the retries safe. A ReadIndex read that is lost (leader
change, crash) carries no information and is simply abandoned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raft_node.core.messages import NodeId
from raft_node.sim.linearizability import Operation

WRITE, LOG_READ, INDEX_READ = "write", "log_read", "index_read"


@dataclass(slots=True)
class ClientOp:
    client: str
    seq: int
    kind: str
    key: str
    value: str | None
    call: int
    ret: int | None = None
    output: str | None = None
    index: int = 0  # log position of a completed write / log read
    term: int = 0
    needs_retry: bool = True
    attempt_at: int = 0  # virtual time of the latest proposal attempt
    node: NodeId = ""  # where a ReadIndex read is waiting
    abandoned: bool = False

    def to_operation(self) -> Operation | None:
        if self.kind == INDEX_READ and self.ret is None:
            return None  # an unanswered read constrains nothing
        kind = "write" if self.kind == WRITE else "read"
        output = None if self.kind == WRITE else self.output
        return Operation(
            client=self.client,
            key=self.key,
            kind=kind,
            input=self.value if self.kind == WRITE else None,
            output=output,
            call=self.call,
            ret=self.ret,
        )


@dataclass
class Client:
    name: str
    seq: int = 0
    current: ClientOp | None = None
    history: list[ClientOp] = field(default_factory=list)

    def start(self, kind: str, key: str, value: str | None, now: int) -> ClientOp:
        self.seq += 1
        op = ClientOp(self.name, self.seq, kind, key, value, now)
        self.current = op
        self.history.append(op)
        return op

    def finish(self, op: ClientOp, now: int, output: str | None) -> None:
        op.ret, op.output, op.needs_retry = now, output, False
        if self.current is op:
            self.current = None

    def abandon(self, op: ClientOp) -> None:
        op.abandoned, op.needs_retry = True, False
        if self.current is op:
            self.current = None


def history_operations(clients: list[Client]) -> list[Operation]:
    ops = []
    for c in clients:
        for op in c.history:
            converted = op.to_operation()
            if converted is not None:
                ops.append(converted)
    return ops
