"""A node for ``write_timeline.py``: ``manage.py`` with a timestamp at the entry and exit of each
step of a write, written to a file when the node stops.

    python bench/timeline_node.py run_raft_node --id n1 ...   (started by LocalCluster)

The steps are methods of the node's own classes (the client-request handler, the Ready loop's
``process``, ``step``, ``_apply`` and ``_answer_now``, ``RawNode.ready``, the storage's ``save``,
the peer transport's ``send``, and every connection's ``data_received``). Each is wrapped once,
before Django starts, by a function that appends ``(step, 0 | 1, time.perf_counter_ns())`` to a
list: about half a microsecond per call, a few per write. ``perf_counter_ns`` is
CLOCK_MONOTONIC on Linux, one clock for every process, so the driver can put the client's and
the three nodes' instants on one time line.

The file is ``$RAFTSYNC_TIMELINE_DIR/<pid>.trace``, one ``step 0|1 ns`` line per event (at most
the last ``MAX_EVENTS``), written by ``atexit`` when the node stops on SIGTERM. Nothing here
changes what a node does; it is not part of the product and is not installed with it.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAX_EVENTS = 2_000_000

# (module, class, method, step name): the steps of a write, in the order it meets them.
STEPS = (
    ("raft_node.transport.frame_channel", "FrameChannel", "data_received", "rx"),
    ("raft_node.host.requests", "RequestHandler", "handle_frame", "req"),
    ("raft_node.host.node_host", "NodeHost", "step", "step"),
    ("raft_node.host.node_host", "NodeHost", "process", "proc"),
    ("raft_node.core.rawnode", "RawNode", "ready", "ready"),
    ("raft_node.transport.tcp", "TcpTransport", "send", "send"),
    ("raft_node.storage.durable", "DurableStorage", "save", "save"),
    ("raft_node.host.node_host", "NodeHost", "_apply", "apply"),
    ("raft_node.host.node_host", "NodeHost", "_answer_now", "answer"),
)


def _timed(method: Callable[..., Any], name: str, events: deque[tuple[str, int, int]]) -> Any:
    record, now = events.append, time.perf_counter_ns

    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        record((name, 0, now()))
        try:
            return method(*args, **kwargs)
        finally:
            record((name, 1, now()))

    return timed


def install(out_dir: Path) -> None:
    """Wrap every step, and write the events to ``out_dir`` when the process exits."""
    from importlib import import_module

    events: deque[tuple[str, int, int]] = deque(maxlen=MAX_EVENTS)
    for module, cls_name, method, name in STEPS:
        cls = getattr(import_module(module), cls_name)
        setattr(cls, method, _timed(getattr(cls, method), name, events))

    def dump() -> None:
        path = out_dir / f"{os.getpid()}.trace"
        with path.open("w") as fh:
            fh.writelines(f"{name} {edge} {ns}\n" for name, edge, ns in events)

    atexit.register(dump)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncproject.settings")
    install(Path(os.environ["RAFTSYNC_TIMELINE_DIR"]))
    from django.core.management import execute_from_command_line

    execute_from_command_line([str(ROOT / "manage.py"), *sys.argv[1:]])


if __name__ == "__main__":
    main()
