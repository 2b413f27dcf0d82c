"""The node's structured event log: one ``event=name key=value ...`` line per thing that happened.

Operators grep and alert on these lines (``event=fatal``, ``event=role_change``, ...), so every
part of a node writes them the same way, through ``event``, to the ``raft_node.server`` logger
whoever drives the host (the server or the simulator).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["event", "log"]

log = logging.getLogger("raft_node.server")  # the node's event log, whoever drives the host


def event(level: int, name: str, **fields: Any) -> None:
    """One structured log line: ``event=name key=value ...`` (fields also in ``extra``)."""
    if not log.isEnabledFor(level):
        return  # the simulator runs thousands of nodes with these lines off: build nothing
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    log.log(level, "event=%s %s", name, text, extra={"event": name, **fields})
