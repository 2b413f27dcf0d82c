"""Mutual HMAC-SHA256 challenge-response on a framed connection, keyed by the cluster secret.

The side that accepted the connection (the *server*) and the side that opened it (the
*connector*: another node, or a client) prove to each other that they know the same secret::

    server    -> connector   HELLO    server_nonce (32 random bytes)
    connector -> server      AUTH     [role, id, client_nonce, mac_c]
    server    -> connector   AUTH_OK  [server_id, mac_s]        (or AUTH_FAIL reason, then close)

    mac_c = HMAC(secret, "raftsync/1 client" | server_nonce | client_nonce | role | 0x00 | id)
    mac_s = HMAC(secret, "raftsync/1 server" | client_nonce | server_nonce | server_id)

Both nonces are fresh per connection, so neither MAC can be replayed on another connection; the
distinct labels stop a MAC from one direction being reflected as the other; nonces are fixed
length and ``role`` never contains NUL, so the concatenations are unambiguous. MACs are compared
with ``hmac.compare_digest``. ``role`` and ``id`` are bound into ``mac_c`` so a connector cannot be
relabelled in flight; ``server_id`` is bound into ``mac_s`` so a node that dialled the wrong
address (``expect_server_id``) notices.

``role`` is ``"peer"`` (``id`` must be a node id of the cluster configuration the server was
given) or ``"client"`` (``id`` is informational: a client name for logs).

What this does *not* give: confidentiality or integrity of the frames after the handshake. On a
network you do not trust, run the transport over TLS (``ssl_server``/``ssl_client`` in
``raft_node.transport.tcp``); the HMAC handshake still runs inside TLS and keeps the cluster-secret
check even when certificates are shared widely.

Errors: ``AuthError`` means the credentials or the handshake itself were wrong (wrong secret,
unknown peer, garbage instead of a handshake, empty secret): retrying will not help.
``TimeoutError`` (no answer within ``timeout``, default 5 s) and ``ConnectionError`` (closed during
the handshake) are ordinary network failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import socket
import ssl
from collections.abc import Collection
from dataclasses import dataclass

from raft_node.transport.codec import CodecError, decode_payload, encode_payload
from raft_node.transport.wire import (
    FrameError,
    FrameKind,
    encode_frame,
    read_frame,
    read_frame_sync,
    send_frame_sync,
)

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "ROLE_CLIENT",
    "ROLE_PEER",
    "AuthError",
    "Identity",
    "TLSRefused",
    "check_secret",
    "client_handshake",
    "client_handshake_sync",
    "server_handshake",
]

ROLE_PEER = "peer"
ROLE_CLIENT = "client"
NONCE_BYTES = 32
HANDSHAKE_TIMEOUT = 5.0
MAX_ID_CHARS = 256
HANDSHAKE_MAX_FRAME = 1024
"""Cap on handshake frames: an unauthenticated connection never makes us buffer more."""

_ROLES = frozenset({ROLE_PEER, ROLE_CLIENT})
_CLIENT_LABEL = b"raftsync/1 client"
_SERVER_LABEL = b"raftsync/1 server"


class AuthError(Exception):
    """Authentication failed or could not be attempted (see the message for which side)."""


class TLSRefused(ConnectionError):
    """The node closed a TLS connection right after the TLS handshake, before its HELLO: it
    refused our certificate (none, or from a CA it does not trust). TLS 1.3 finishes the
    client's side of the handshake before the server checks the client's certificate, and
    asyncio's server sends no alert, so this silence is all a refused client ever sees."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is on the other end of an authenticated connection."""

    role: str  # ROLE_PEER or ROLE_CLIENT
    id: str  # node id for peers; self-declared name for clients

    @property
    def is_peer(self) -> bool:
        return self.role == ROLE_PEER


def check_secret(secret: bytes) -> bytes:
    """Return ``secret`` as bytes; ``AuthError`` if it is empty or not bytes."""
    if not isinstance(secret, (bytes, bytearray)):
        raise AuthError(f"the cluster secret must be bytes, not {type(secret).__name__}")
    if not secret:
        raise AuthError(
            "the cluster secret is empty: refusing to run unauthenticated "
            "(configure a shared secret, e.g. 32 random bytes)"
        )
    return bytes(secret)


def client_mac(
    secret: bytes, server_nonce: bytes, client_nonce: bytes, role: str, ident: str
) -> bytes:
    msg = b"".join(
        (_CLIENT_LABEL, server_nonce, client_nonce, role.encode(), b"\0", ident.encode())
    )
    return hmac.new(secret, msg, hashlib.sha256).digest()


def server_mac(secret: bytes, client_nonce: bytes, server_nonce: bytes, server_id: str) -> bytes:
    msg = b"".join((_SERVER_LABEL, client_nonce, server_nonce, server_id.encode()))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _check_id(ident: object) -> str:
    if type(ident) is not str or len(ident) > MAX_ID_CHARS:
        raise AuthError("id must be a string of at most 256 characters")
    return ident


def _parse_auth(body: bytes) -> tuple[str, str, bytes, bytes]:
    try:
        v = decode_payload(body, max_depth=1)
    except CodecError:
        raise AuthError("malformed AUTH frame") from None
    if type(v) is not list or len(v) != 4:
        raise AuthError("malformed AUTH frame")
    role, ident, nonce, mac = v
    if type(role) is not str or role not in _ROLES:
        raise AuthError(f"unknown role {role!r}")
    _check_id(ident)
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES or type(mac) is not bytes:
        raise AuthError("malformed AUTH frame")
    return role, ident, nonce, mac


def _parse_reply(kind: int, body: bytes) -> tuple[str, bytes]:
    if kind == FrameKind.AUTH_FAIL:
        reason = body[:200].decode("utf-8", "replace")
        raise AuthError(f"server refused authentication: {reason}")
    if kind != FrameKind.AUTH_OK:
        raise AuthError(f"expected AUTH_OK, got frame kind {kind}")
    try:
        v = decode_payload(body, max_depth=1)
    except CodecError:
        raise AuthError("malformed AUTH_OK frame") from None
    if type(v) is not list or len(v) != 2 or type(v[1]) is not bytes:
        raise AuthError("malformed AUTH_OK frame")
    return _check_id(v[0]), v[1]


def _verify_server(
    secret: bytes,
    client_nonce: bytes,
    server_nonce: bytes,
    server_id: str,
    mac: bytes,
    expect_server_id: str | None,
) -> str:
    if not hmac.compare_digest(mac, server_mac(secret, client_nonce, server_nonce, server_id)):
        raise AuthError("the server failed to prove it knows the cluster secret (wrong secret?)")
    if expect_server_id is not None and server_id != expect_server_id:
        raise AuthError(f"dialled {expect_server_id!r} but reached {server_id!r}")
    return server_id


# -- asyncio -------------------------------------------------------------------------------------


async def server_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    secret: bytes,
    *,
    server_id: str,
    peers: Collection[str],
    allow_clients: bool = True,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> Identity:
    """Authenticate the connector of an accepted connection; returns who it is.

    ``peers`` are the node ids allowed to connect as ``"peer"``. On failure an ``AUTH_FAIL``
    frame is sent (best effort) and ``AuthError``/``TimeoutError``/``ConnectionError`` raised;
    the caller closes the connection.
    """
    secret = check_secret(secret)
    async with asyncio.timeout(timeout):
        server_nonce = os.urandom(NONCE_BYTES)
        writer.write(_frame(FrameKind.HELLO, server_nonce))
        await writer.drain()
        try:
            kind, body = await read_frame(reader, HANDSHAKE_MAX_FRAME)
        except EOFError:
            raise ConnectionError("connection closed during the handshake") from None
        except FrameError as e:
            raise AuthError(f"not a handshake: {e}") from None
        try:
            if kind != FrameKind.AUTH:
                raise AuthError(f"expected AUTH, got frame kind {kind}")
            role, ident, client_nonce, mac = _parse_auth(body)
            expected = client_mac(secret, server_nonce, client_nonce, role, ident)
            if not hmac.compare_digest(mac, expected):
                raise AuthError(f"bad MAC from {role} {ident!r} (wrong cluster secret?)")
            if role == ROLE_PEER and ident not in peers:
                raise AuthError(f"peer {ident!r} is not in the cluster configuration")
            if role == ROLE_CLIENT and not allow_clients:
                raise AuthError("this endpoint does not accept clients")
        except AuthError as e:
            # The reason tells an operator what to fix; it reveals nothing about the secret.
            writer.write(_frame(FrameKind.AUTH_FAIL, str(e).encode()[:200]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            raise
        body = encode_payload(
            [server_id, server_mac(secret, client_nonce, server_nonce, server_id)]
        )
        writer.write(_frame(FrameKind.AUTH_OK, body))
        await writer.drain()
        return Identity(role, ident)


def _check_client_args(secret: bytes, role: str, my_id: str) -> bytes:
    """Reject a bad secret, role or id before a byte goes on the wire; returns the secret."""
    secret = check_secret(secret)
    if role not in _ROLES:
        raise AuthError(f"unknown role {role!r}")
    _check_id(my_id)
    return secret


async def client_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    secret: bytes,
    *,
    my_id: str,
    role: str = ROLE_CLIENT,
    expect_server_id: str | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> str:
    """Authenticate to the server of a connection we opened, and it to us; returns its node id."""
    secret = _check_client_args(secret, role, my_id)
    deadline = asyncio.get_running_loop().time() + timeout
    tls = writer.get_extra_info("sslcontext") is not None
    try:
        async with asyncio.timeout_at(deadline):
            server_nonce = await _read_hello(reader)
    except TimeoutError:
        raise _no_hello(timeout, tls) from None
    except ConnectionError as e:
        raise _closed_before_hello(e, tls) from None
    async with asyncio.timeout_at(deadline):
        client_nonce = os.urandom(NONCE_BYTES)
        mac = client_mac(secret, server_nonce, client_nonce, role, my_id)
        writer.write(_frame(FrameKind.AUTH, encode_payload([role, my_id, client_nonce, mac])))
        await writer.drain()
        try:
            kind, body = await read_frame(reader, HANDSHAKE_MAX_FRAME)
        except EOFError:
            raise ConnectionError("connection closed during the handshake") from None
        except FrameError as e:
            raise AuthError(f"bad handshake reply: {e}") from None
        server_id, smac = _parse_reply(kind, body)
        return _verify_server(secret, client_nonce, server_nonce, server_id, smac, expect_server_id)


async def _read_hello(reader: asyncio.StreamReader) -> bytes:
    try:
        kind, body = await read_frame(reader, HANDSHAKE_MAX_FRAME)
    except EOFError:
        raise ConnectionError("connection closed during the handshake") from None
    except FrameError as e:
        raise AuthError(f"not a raftsync server: {e}") from None
    if kind != FrameKind.HELLO or len(body) != NONCE_BYTES:
        raise AuthError("not a raftsync server: bad HELLO")
    return body


# -- blocking sockets ----------------------------------------------------------------------------


def client_handshake_sync(
    sock: socket.socket,
    secret: bytes,
    *,
    my_id: str,
    role: str = ROLE_CLIENT,
    expect_server_id: str | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> str:
    """Blocking ``client_handshake``; the socket's previous timeout is restored afterwards."""
    secret = _check_client_args(secret, role, my_id)
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        tls = isinstance(sock, ssl.SSLSocket)
        try:
            kind, server_nonce = _read_sync(sock)
        except TimeoutError:
            raise _no_hello(timeout, tls) from None
        except ConnectionError as e:
            raise _closed_before_hello(e, tls) from None
        if kind != FrameKind.HELLO or len(server_nonce) != NONCE_BYTES:
            raise AuthError("not a raftsync server: bad HELLO")
        client_nonce = os.urandom(NONCE_BYTES)
        mac = client_mac(secret, server_nonce, client_nonce, role, my_id)
        send_frame_sync(sock, FrameKind.AUTH, encode_payload([role, my_id, client_nonce, mac]))
        kind, body = _read_sync(sock)
        server_id, smac = _parse_reply(kind, body)
        return _verify_server(secret, client_nonce, server_nonce, server_id, smac, expect_server_id)
    finally:
        sock.settimeout(previous)


def _no_hello(timeout: float, tls: bool) -> TimeoutError:
    """The server speaks first; silence from a node with TLS on is the usual cause when this
    side has none (the node waits for a TLS hello that never comes), so say so."""
    hint = "" if tls else " (a node with TLS on waits for the client to start TLS: TLS unset here?)"
    return TimeoutError(f"no handshake from the node within {timeout:g} s{hint}")


def _closed_before_hello(exc: ConnectionError, tls: bool) -> ConnectionError:
    if not tls:
        return exc
    return TLSRefused(
        "the node closed the connection after the TLS handshake: it refused this side's "
        "certificate (none, or not signed by a CA in the node's TLS_CA)"
    )


def _read_sync(sock: socket.socket) -> tuple[int, bytes]:
    try:
        return read_frame_sync(sock, HANDSHAKE_MAX_FRAME)
    except EOFError:
        raise ConnectionError("connection closed during the handshake") from None
    except FrameError as e:
        raise AuthError(f"bad handshake frame: {e}") from None


def _frame(kind: int, body: bytes) -> bytes:
    return encode_frame(kind, body, HANDSHAKE_MAX_FRAME)
