"""``Watcher``: follows a node's WATCH stream of state machine events (cache invalidations)."""

from __future__ import annotations

import contextlib
import socket
import ssl as ssl_module
import threading
from collections.abc import Iterable
from typing import Any

from raft_node.client.policy import Address, Backoff, Targets, parse_addresses
from raft_node.transport import client_protocol as p
from raft_node.transport.auth import AuthError, client_handshake_sync
from raft_node.transport.codec import decode_payload, encode_payload
from raft_node.transport.wire import MAX_FRAME_BYTES, FrameKind, read_frame_sync, send_frame_sync


class Watcher(threading.Thread):
    """Follows a WATCH stream in a background thread, reconnecting on failure.

    ``on_event(index, payload)`` runs for each event in log order; ``on_resync()`` runs after
    every (re)connection, before any event from it, because events published while we were not
    subscribed are lost: the consumer must drop whatever those events would have corrected (an
    L1 cache drops everything). Stop with ``stop()``.
    """

    def __init__(
        self,
        addresses: str | Iterable[Address] | Iterable[str],
        secret: bytes | str,
        topic: str,
        on_event: Any,
        on_resync: Any = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        super().__init__(daemon=True, name=f"raftsync-watch-{topic}")
        self._targets = Targets(parse_addresses(addresses))
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.topic = topic
        self._on_event, self._on_resync = on_event, on_resync
        self._ssl, self._max = ssl, max_frame_bytes
        self._halt = threading.Event()
        self._sock: socket.socket | None = None
        self.subscribed = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        backoff = Backoff(cap=1.0)
        while not self._halt.is_set():
            try:
                self._follow()
                backoff = Backoff(cap=1.0)
            except (OSError, EOFError, AuthError, p.ProtocolError):
                self.subscribed.clear()
                self._targets.rotate()
            if not self._halt.is_set():
                self._halt.wait(backoff.next())

    def _follow(self) -> None:
        addr = self._targets.current
        sock = socket.create_connection(addr, timeout=2.0)
        try:
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=addr[0])
            client_handshake_sync(sock, self._secret, my_id=f"watch-{self.topic}", timeout=2.0)
            self._sock = sock
            sock.settimeout(None)
            body = encode_payload([p.WATCH, 1, self.topic])
            send_frame_sync(sock, FrameKind.CLIENT_REQUEST, body)
            while not self._halt.is_set():
                kind, raw = read_frame_sync(sock, self._max)
                if kind != FrameKind.CLIENT_RESPONSE:
                    raise ConnectionError(f"unexpected frame kind {kind}")
                resp = p.parse_response(decode_payload(raw))
                if not resp.ok:
                    raise ConnectionError(f"watch refused: {resp.code}: {resp.message}")
                tag = resp.value[0]
                if tag == "subscribed":
                    if self._on_resync is not None:
                        self._on_resync()
                    self.subscribed.set()
                elif tag == "event":
                    self._on_event(resp.value[1], resp.value[2])
        finally:
            self._sock = None
            sock.close()
