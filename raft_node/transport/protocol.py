"""The ``Transport`` contract: how a node host hands Raft messages to other nodes and gets theirs.

Two implementations keep it: ``raft_node.transport.tcp.TcpTransport`` (asyncio TCP between
processes, the production one) and ``raft_node.transport.memory.MemoryTransport`` (in-process,
for tests of the host without sockets). ``tests/raft/test_transport_contract.py`` runs the same
tests against both. (Client *requests* have their own contract:
``raft_node.transport.client_protocol``.)

Contract
--------
``send(msgs)`` queues messages and returns at once: it never awaits the network, never raises
because a peer is down, and may lose messages (Raft tolerates loss, duplication and reordering
across connections; within one connection messages keep their order). ``start()``/``stop()``
bracket the transport's life. ``send`` must be called on the event loop's thread.

What a transport reports goes to callbacks given at construction, always on the event loop
thread and never from inside ``send``:

- ``on_message(msg)``: a message for this node, one at a time, only from the peer it claims to
  be from. An exception in it is counted and logged, never raised into the transport.
- ``on_unreachable(peer)``: a peer could not be reached (the host calls
  ``RawNode.report_unreachable``), once per failed attempt.
- ``on_peer_closed(peer)`` (optional): the peer's process is gone: its connection to us closed
  (EOF or reset, as a crash or restart does; not a timeout, nor a close of ours) and ours to it
  failed too; the host calls ``RawNode.report_peer_closed``. The in-process transport has no
  connections and never calls it.
- ``on_snapshot_status(peer, ok)``: a ``SNAP`` message reached the peer (``True``: the TCP
  transport reports it when the receiver acknowledges the complete, checked snapshot; the
  in-process one when it is handed over) or was dropped, rejected or lost with its connection
  (``False``); the host calls ``RawNode.report_snapshot``. A snapshot may be overtaken by
  messages sent after it while it streams (TCP): order is kept for every other message.
- ``on_client_frame(body, respond)`` (a ``ClientHandler``, optional): a client request. The
  handler answers with ``respond(body)`` any number of times, now or later; calls after the
  client went away are ignored. It returns None if it answered or arranged to answer from a
  callback, or an awaitable that the transport runs in its own task (cancelled when the client
  goes away), so a slow request does not hold up the client's other requests.

``stats()`` answers counters since construction, the ``STAT_KEYS`` (a transport leaves those
that mean nothing for it at 0), plus per-peer state under ``"peers"``: ``{peer: {connected,
queued, drops, frames_out, reconnects, failures}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from raft_node.core.messages import Message

__all__ = ["STAT_KEYS", "ClientHandler", "Transport", "call_client_handler"]

ClientHandler = Callable[[bytes, Callable[[bytes], None]], Awaitable[None] | None]

STAT_KEYS = (  # noqa: SIM905
    "frames_in bytes_in frames_out bytes_out drops oversize_drops encode_errors "
    "unknown_destination connects reconnects connect_failures write_failures auth_failures "
    "handshake_failures tls_failures protocol_errors callback_errors client_requests "
    "client_responses snapshots_out snapshots_in snapshot_failures"
).split()


def call_client_handler(
    handler: ClientHandler,
    body: bytes,
    respond: Callable[[bytes], None],
    stats: dict[str, Any],
    log: logging.Logger,
) -> Awaitable[None] | None:
    """Count one client request and hand it to ``handler``; what it returns (an awaitable for
    the transport to run), or None if it answered or raised. A handler that raises is counted
    and logged, never let out: one bad request must not end the client's connection."""
    stats["client_requests"] += 1
    try:
        return handler(body, respond)
    except Exception:
        stats["callback_errors"] += 1
        log.exception("event=callback_error callback=on_client_frame")
        return None


@runtime_checkable
class Transport(Protocol):
    def send(self, msgs: Iterable[Message]) -> None:
        """Queue messages for their ``to`` nodes; never blocks, never raises for a down peer."""

    async def start(self) -> None:
        """Begin accepting and delivering."""

    async def stop(self) -> None:
        """Close every connection and task; queued messages are discarded."""

    def stats(self) -> dict[str, Any]:
        """``STAT_KEYS`` counters plus ``"peers"`` (see the module docstring)."""
