"""A follower's path to its leader: proposals and transfers it received from clients, relayed
over one pipelined connection per leader (``raft_node.host.requests`` calls ``forward``).

Two rules keep a client's connection to a follower usable while the leader changes:

- **One open at a time per leader.** Every request that needs the connection waits on the same
  opening. A leader that hangs (a paused process, a dead machine) accepts TCP connections but
  never answers the handshake, so each open takes the whole connect timeout; before, every
  request opened its own and the client's in-flight limit filled with them, which stalled the
  connection for that timeout even after a new leader was elected.
- **A leader change ends the old leader's connection.** The follower closes it and abandons an
  opening to it: requests still waiting on the old leader answer ``unavailable`` at once
  (``definite`` when nothing was sent), and the client retries them, under the same client id
  and sequence, on the new leader; the state machine applies each one once.
"""

from __future__ import annotations

import asyncio
import contextlib

from raft_node.client import AsyncConnection, AuthenticationFailed
from raft_node.client.connection import NotSent
from raft_node.core.messages import NONE, NodeId
from raft_node.host.config import NodeConfig
from raft_node.transport import client_protocol as p

OPEN_TIMEOUT = 2.0  # connect + handshake to the leader
_UNREACHABLE = (OSError, EOFError, asyncio.IncompleteReadError, AuthenticationFailed)


class LeaderForwarder:
    """Relays requests to ``leader()``, the node's current leader (a callable: it changes)."""

    def __init__(self, node_id: NodeId, config: NodeConfig) -> None:
        self.node_id = node_id
        self.config = config
        self._conns: dict[NodeId, AsyncConnection] = {}
        self._opening: dict[NodeId, asyncio.Task[AsyncConnection]] = {}

    async def forward(self, lead: NodeId, req: p.Propose | p.Transfer, hint: str) -> list:
        """``req`` relayed to ``lead``; the answer as a response list (an error one when the
        leader cannot be reached or does not answer in time)."""
        if lead == NONE or lead == self.node_id:
            return p.err(req.req_id, p.NOT_LEADER, "no leader known; retry", definite=True)
        try:
            conn = await self._connection(lead)
        except _UNREACHABLE as exc:
            # Nothing was sent: the proposal surely went nowhere (``definite``).
            message = f"leader unreachable: {exc!r}"
            return p.err(req.req_id, p.UNAVAILABLE, message, hint, definite=True)
        try:
            timeout = self.config.request_timeout
            if isinstance(req, p.Propose):
                resp = await conn.request(p.PROPOSE, [req.client_id, req.seq, req.body], timeout)
            else:
                resp = await conn.request(p.TRANSFER, [req.target], timeout)
        except TimeoutError:
            return p.err(req.req_id, p.TIMEOUT, "leader did not answer in time", hint)
        except NotSent as exc:
            message = f"leader unreachable: {exc!r}"
            return p.err(req.req_id, p.UNAVAILABLE, message, hint, definite=True)
        except _UNREACHABLE as exc:
            # AuthenticationFailed: the leader refuses this node's secret or certificate (a
            # rotation half done); the client may still reach the leader itself.
            return p.err(req.req_id, p.UNAVAILABLE, f"leader unreachable: {exc!r}", hint)
        if resp.ok:
            return p.ok(req.req_id, resp.value, resp.leader_hint or hint)
        assert resp.error is not None
        return p.error(req.req_id, resp.kind, resp.error, resp.leader_hint or hint)

    async def _connection(self, lead: NodeId) -> AsyncConnection:
        conn = self._conns.get(lead)
        if conn is not None and not conn.closed:
            return conn
        opening = self._opening.get(lead)
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open(lead))
            self._opening[lead] = opening
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            if opening.cancelled():  # abandoned by ``leader_changed``, not our caller's cancel
                raise ConnectionAbortedError("the leader changed while connecting") from None
            raise

    async def _open(self, lead: NodeId) -> AsyncConnection:
        config = self.config
        try:
            conn = AsyncConnection(
                config.cluster[lead],
                config.secret,
                f"{self.node_id}-forward",
                ssl=config.ssl_client,
                max_frame_bytes=config.max_frame_bytes,
            )
            await conn.open(OPEN_TIMEOUT)
            self._conns[lead] = conn
            return conn
        finally:
            if self._opening.get(lead) is asyncio.current_task():
                del self._opening[lead]  # (an abandoned one was removed already)

    def leader_changed(self, lead: NodeId) -> None:
        """Close the connections to, and abandon the openings to, every node but ``lead``."""
        for node in [n for n in self._opening if n != lead]:
            self._opening.pop(node).cancel()
        for node in [n for n in self._conns if n != lead]:
            self._close(self._conns.pop(node))

    def drop_connections(self) -> None:
        """Close every connection (reopened on the next request, with the config's current TLS
        context). A request in flight on one answers ``unavailable``; its client retries it."""
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            self._close(conn)

    @staticmethod
    def _close(conn: AsyncConnection) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing in flight to fail
            asyncio.get_running_loop().create_task(conn.close())
