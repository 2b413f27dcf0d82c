"""A send to a peer whose connection is already closed must not raise: asyncio's transports
drop such a write, uvloop's raise ``RuntimeError``, and that exception, raised while a node
handled a ``Ready``, stopped the node (a leader whose follower was killed -9 stopped with it).
The message stays queued for the pump, which reconnects."""

from __future__ import annotations

import random

import pytest

from raft_node.core.messages import Message, MessageType
from raft_node.transport.peers import PeerRouter
from raft_node.transport.protocol import STAT_KEYS


class ClosedTransport:
    def is_closing(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0


class ClosedWriter:
    """uvloop's behaviour: writing to a closed transport raises."""

    transport = ClosedTransport()

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation: the handler is closed")


def _router() -> PeerRouter:
    return PeerRouter(
        "n1",
        b"s" * 32,
        dict.fromkeys(STAT_KEYS, 0),
        on_unreachable=None,
        on_snapshot_status=None,
        on_fatal=None,
        ssl_client=None,
        max_peer_frame_bytes=1 << 20,
        snapshot_chunk_bytes=1 << 16,
        max_queue=64,
        handshake_timeout=1.0,
        connect_timeout=1.0,
        write_timeout=1.0,
        backoff_first=0.01,
        backoff_max=0.1,
        rng=random.Random(1),
    )


def test_a_send_on_a_closed_connection_is_left_to_the_pump() -> None:
    router = _router()
    router.add("n2", ("127.0.0.1", 1))
    peer = router.peers["n2"]
    peer.writer = ClosedWriter()  # type: ignore[assignment]
    message = Message(MessageType.APP, "n2", "n1", 1)
    router.send([message])  # must not raise
    assert list(peer.queue) == [message] and peer.wake.is_set()
    with pytest.raises(ConnectionResetError):  # the pump's own write: a lost connection
        router._write_batch(peer, peer.writer)  # type: ignore[arg-type]
    assert list(peer.queue) == [message]
