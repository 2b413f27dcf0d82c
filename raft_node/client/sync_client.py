"""``RaftClient``: the blocking client, for Django views and Celery workers.

Thread-safe: calls are serialized on one connection. Its writes are one lane, ``(name, seq)``,
with at most one outstanding (the calls are serialized anyway). A write that ends
``OutcomeUnknown`` retires its lane (the next write starts ``name.2``, and so on), so the cluster
keeps that write's outcome as the id's latest for ``resolve`` to find.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Any

from raft_node.client.errors import (
    AuthenticationFailed,
    OutcomeUnknown,
    PendingWrite,
    tls_refusal,
)
from raft_node.client.policy import Address, Attempts, ClientConfig, Lane
from raft_node.transport import client_protocol as p
from raft_node.transport.auth import AuthError, client_handshake_sync
from raft_node.transport.codec import decode_payload, encode_payload
from raft_node.transport.wire import FrameKind, read_frame_sync, send_frame_sync


class RaftClient(ClientConfig):
    """Blocking client; thread-safe (calls are serialized on one connection)."""

    def _init_connection_state(self) -> None:
        self.client_id = self.name
        self._lane = Lane(self.client_id)
        self._retired = itertools.count(2)
        self._sock: socket.socket | None = None
        self._sock_addr: Address | None = None
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def __enter__(self) -> RaftClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def propose(self, body: bytes, *, timeout: float | None = None) -> Any:
        """Apply ``body`` through the log exactly once; returns the state machine's result.
        ``OutcomeUnknown`` if it may or may not have been applied (``resolve`` it)."""
        with self._lock:
            lane = self._lane
            write = PendingWrite(lane.client_id, lane.next(), body, time.monotonic())
            try:
                return self._propose(write, timeout)
            except OutcomeUnknown:
                self._lane = Lane(f"{self.client_id}.{next(self._retired)}")
                raise

    def resolve(self, unknown: OutcomeUnknown, *, timeout: float | None = None) -> Any:
        """The final outcome of the write ``unknown`` is about: its result, or its rejection
        raised. Re-sends the same ``(client_id, seq)`` and body; the cluster answers a request
        it has applied with the recorded result and applies one it never saw (once). Raises
        ``OutcomeUnknown`` again if the cluster still cannot be asked, or if the write is older
        than ``RESOLVE_WINDOW_S``; ``ValueError`` if ``unknown`` came without its body (from
        the wire, or unpickled)."""
        write = unknown.resend()
        with self._lock:
            return self._propose(write, timeout, in_doubt=True)

    def _propose(self, write: PendingWrite, timeout: float | None, in_doubt: bool = False) -> Any:
        fields = [write.client_id, write.seq, write.body]
        return self._call(p.PROPOSE, fields, timeout, write=write, in_doubt=in_doubt)

    def read(self, query: bytes, *, stale: bool = False, timeout: float | None = None) -> Any:
        with self._lock:
            return self._call(p.READ, [query, stale], timeout)

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        with self._lock:
            return self._call(p.STATUS, [], timeout, follow_leader=False)

    def members(
        self, op: str = "list", node: str = "", address: str = "", *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The membership (``op="list"``), or one change: ``add_learner`` (with the node's
        ``host:port``), ``promote``, ``remove``; answered by the leader once committed."""
        with self._lock:
            return self._call(p.MEMBERS, [op, node, address], timeout)

    def transfer_leadership(self, target: str, *, timeout: float | None = None) -> Any:
        with self._lock:
            return self._call(p.TRANSFER, [target], timeout)

    def _socket(self, budget: float) -> socket.socket:
        if self._sock is not None and self._sock_addr == self._targets.current:
            return self._sock
        self.close()
        addr = self._targets.current
        sock = socket.create_connection(addr, timeout=budget)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=addr[0])
            client_handshake_sync(sock, self._secret, my_id=self.client_id, timeout=budget)
        except AuthError as exc:
            sock.close()
            raise AuthenticationFailed(str(exc)) from exc
        except BaseException as exc:
            sock.close()
            refused = tls_refusal(exc, addr)
            if refused is not None:
                raise refused from exc
            raise
        self._sock, self._sock_addr = sock, addr
        return sock

    def _request(
        self, sock: socket.socket, kind: int, fields: list[Any], budget: float
    ) -> p.Response:
        req_id = next(self._ids)
        sock.settimeout(budget)
        send_frame_sync(sock, FrameKind.CLIENT_REQUEST, encode_payload([kind, req_id, *fields]))
        while True:
            frame_kind, body = read_frame_sync(sock, self._max)
            if frame_kind != FrameKind.CLIENT_RESPONSE:
                raise ConnectionError(f"unexpected frame kind {frame_kind}")
            resp = p.parse_response(decode_payload(body))
            if resp.req_id == req_id:
                return resp

    def _call(
        self,
        kind: int,
        fields: list[Any],
        timeout: float | None,
        follow_leader: bool = True,
        write: PendingWrite | None = None,
        in_doubt: bool = False,
    ) -> Any:
        call_timeout = self.timeout if timeout is None else timeout
        tries = Attempts(self._targets, call_timeout, follow_leader, self.timeout, write, in_doubt)
        while (budget := tries.budget()) > 0:
            try:
                sock = self._socket(tries.connect_wait(budget))
            except AuthenticationFailed as exc:
                if "tls" not in exc.details:
                    raise tries.fatal(exc) from None  # the cluster secret: the same everywhere
                tries.refused(exc)
            except (OSError, EOFError) as exc:  # refused, unreachable, connect timeout
                self.close()
                tries.unreachable(exc)  # nothing sent on this attempt
            else:
                tries.reached = True
                try:
                    resp = self._request(sock, kind, fields, tries.answer_wait(budget))
                except TimeoutError:
                    self.close()
                    tries.no_answer()
                    continue  # re-send at once elsewhere (the loop ends at the deadline)
                except (OSError, EOFError, p.ProtocolError) as exc:
                    self.close()
                    tries.lost(exc)  # perhaps sent: a write may be in a log
                else:
                    if tries.answered(resp):
                        return resp.value
            time.sleep(tries.pause())
        raise tries.give_up()
