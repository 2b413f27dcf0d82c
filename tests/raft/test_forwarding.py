"""A follower's forwarding to its leader when that leader hangs (``raft_node.host.forwarding``).

A hung leader (a paused process, a dead machine behind a live TCP stack) accepts connections
and never completes the handshake. These tests stand one up with a listening socket that
accepts and says nothing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from raft_node.host.config import NodeConfig
from raft_node.host.forwarding import OPEN_TIMEOUT, LeaderForwarder
from raft_node.transport import client_protocol as p
from raft_node.transport.codec import decode_payload, encode_payload

SECRET = b"forward-test-secret"


async def _silent_server() -> tuple[asyncio.Server, tuple[str, int], list[asyncio.StreamWriter]]:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # never answers the handshake

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    return server, (host, port), accepted


def _propose(req_id: int) -> p.Propose:
    return p.Propose(req_id, "c1", req_id, b"x")


def test_requests_share_one_open_and_a_leader_change_answers_them_at_once() -> None:
    """Sixty-four requests to a hung leader open one connection between them, and when the
    leader changes they all answer "unavailable, nothing sent" at once, not after the open's
    timeout; before, each opened its own and a client connection stalled for that long."""

    async def main() -> None:
        server, addr, accepted = await _silent_server()
        config = NodeConfig("n2", {"n1": addr, "n2": ("127.0.0.1", 1)}, Path("."), SECRET)
        forwarder = LeaderForwarder("n2", config)
        tasks = [
            asyncio.create_task(forwarder.forward("n1", _propose(i), "hint")) for i in range(64)
        ]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in tasks)
        assert len(accepted) == 1  # one open, shared
        started = time.monotonic()
        forwarder.leader_changed("n3")
        answers = await asyncio.gather(*tasks)
        assert time.monotonic() - started < OPEN_TIMEOUT / 4
        for answer in answers:
            resp = p.parse_response(decode_payload(encode_payload(answer)))
            assert not resp.ok and resp.kind == p.UNAVAILABLE
            assert resp.error is not None and resp.error.details.get(p.DEFINITE)
        server.close()

    asyncio.run(main())


def test_a_change_to_the_same_leader_keeps_its_opening() -> None:
    async def main() -> None:
        server, addr, _accepted = await _silent_server()
        config = NodeConfig("n2", {"n1": addr, "n2": ("127.0.0.1", 1)}, Path("."), SECRET)
        forwarder = LeaderForwarder("n2", config)
        task = asyncio.create_task(forwarder.forward("n1", _propose(1), "hint"))
        await asyncio.sleep(0.1)
        forwarder.leader_changed("n1")
        await asyncio.sleep(0.1)
        assert not task.done()
        forwarder.leader_changed("")  # no leader known any more: give up on n1
        resp = p.parse_response(decode_payload(encode_payload(await task)))
        assert resp.kind == p.UNAVAILABLE
        server.close()

    asyncio.run(main())
