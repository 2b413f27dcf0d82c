"""Every node's own status, asked of all nodes at once with one deadline per node: what
``raftsync status``, ``manage.py raft_status``, the admin's nodes page and ``/api/cluster/``
show.

Why not ``RaftClient.status``: a client retries until its timeout (a refused connection is
tried again and again with backoff), and gives a whole timeout to the handshake, so one dead
node held a status report for seconds. A status probe is one attempt per node: the connect may
take half of ``timeout``, and everything (connect, TLS, handshake, the answer) must be done by
``timeout``. A killed node refuses at once; a paused one (SIGSTOP: its kernel still accepts
the connection, but nobody shakes hands) is given up at the deadline. Either is reported as
``{"id", "address", "error", "unreachable": True}``; so is a node whose credentials we refuse
or that refuses ours, with ``unreachable`` False (it answers; a configuration is wrong).
"""

from __future__ import annotations

import socket
import ssl as ssl_module
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raft_node.client.errors import tls_refusal
from raft_node.client.policy import Address
from raft_node.transport import client_protocol as p
from raft_node.transport.auth import AuthError, client_handshake_sync
from raft_node.transport.codec import decode_payload, encode_payload
from raft_node.transport.wire import MAX_FRAME_BYTES, FrameKind, read_frame_sync, send_frame_sync

STATUS_TIMEOUT = 0.4  # seconds per node: a report with a node down stays under half a second


class _Deadline:
    def __init__(self, timeout: float) -> None:
        self.at = time.monotonic() + timeout

    def left(self) -> float:
        """Seconds left; ``TimeoutError`` once none are (a zero socket timeout would mean
        non-blocking, not "give up")."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left


def probe(
    addr: Address,
    secret: bytes,
    *,
    timeout: float = STATUS_TIMEOUT,
    ssl: ssl_module.SSLContext | None = None,
    name: str = "status-probe",
) -> dict[str, Any]:
    """One node's status answer (its dict), within ``timeout``; raises ``OSError`` (a
    ``TimeoutError`` past the deadline), ``AuthError`` or ``p.ProtocolError``."""
    deadline = _Deadline(timeout)
    sock = socket.create_connection(addr, timeout=min(timeout / 2, deadline.left()))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl is not None:
            sock.settimeout(deadline.left())
            sock = ssl.wrap_socket(sock, server_hostname=addr[0])
        client_handshake_sync(sock, secret, my_id=name, timeout=deadline.left())
        sock.settimeout(deadline.left())
        send_frame_sync(sock, FrameKind.CLIENT_REQUEST, encode_payload([p.STATUS, 1]))
        while True:
            sock.settimeout(deadline.left())
            kind, body = read_frame_sync(sock, MAX_FRAME_BYTES)
            if kind != FrameKind.CLIENT_RESPONSE:
                raise p.ProtocolError(f"unexpected frame kind {kind}")
            resp = p.parse_response(decode_payload(body))
            if resp.req_id != 1:
                continue
            if not resp.ok or not isinstance(resp.value, dict):
                raise p.ProtocolError(f"status refused: {resp.code}: {resp.message}")
            return resp.value
    finally:
        sock.close()


def node_statuses(
    members: Sequence[tuple[str, Address]],
    secret: bytes,
    *,
    timeout: float = STATUS_TIMEOUT,
    ssl: ssl_module.SSLContext | None = None,
) -> list[dict[str, Any]]:
    """Each member's status, in ``members`` order, asked in parallel (one thread each): the
    whole takes at most ``timeout`` however many nodes are down."""

    def ask(member: tuple[str, Address]) -> dict[str, Any]:
        node, addr = member
        try:
            return probe(addr, secret, timeout=timeout, ssl=ssl)
        except Exception as exc:
            return _failed(node, addr, exc, timeout)

    if not members:
        return []
    with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix="status") as pool:
        return list(pool.map(ask, members))


def _failed(node: str, addr: Address, exc: BaseException, timeout: float) -> dict[str, Any]:
    refused = tls_refusal(exc, addr)
    if isinstance(exc, AuthError) or refused is not None:
        error, unreachable = str(refused or exc), False
    elif isinstance(exc, TimeoutError):
        error, unreachable = f"no answer within {timeout:g} s", True
    elif isinstance(exc, OSError):
        error, unreachable = exc.strerror or repr(exc), True
    else:
        error, unreachable = str(exc) or repr(exc), True
    return {
        "id": node,
        "address": f"{addr[0]}:{addr[1]}",
        "error": error,
        "unreachable": unreachable,
    }
