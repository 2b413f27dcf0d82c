"""A fault-injecting TCP proxy for partition tests and benchmarks on one machine.

Every directed peer link ``src -> dst`` gets its own listening port; ``src`` is configured to
dial ``dst`` through it. ``block(src, dst)`` turns that link into a black hole, as a real network
partition would: open connections are cut, new ones are accepted and then neither forwarded nor
answered, so the dialler sees silence and its timeouts (not a quick refusal); ``heal`` closes
those black-holed connections, as a real network's healed link would let the dialler's next SYN
through (left open, a connection accepted during the cut would stay silent after it, until the
dialler's handshake timeout: seconds of partition that no longer exists). ``mute(src, dst,
direction)`` keeps a link's connections open but silently drops what flows one way: ``"down"``
(the answers: a request arrives and is carried out, its answer is lost) or ``"up"`` (the
requests: nothing arrives). ``heal()`` restores every link. The proxy runs its own event loop
in a daemon thread, so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable

Address = tuple[str, int]


class FaultProxy:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._links: dict[tuple[str, str], _Link] = {}

    def add_link(self, src: str, dst: str, target: Address) -> Address:
        """Create the ``src -> dst`` link forwarding to ``target``; returns its address."""
        link = _Link(target)
        port = asyncio.run_coroutine_threadsafe(link.start(self.host), self._loop).result(5)
        self._links[(src, dst)] = link
        return (self.host, port)

    def block(self, src: str, dst: str) -> None:
        link = self._links[(src, dst)]
        self._loop.call_soon_threadsafe(link.set_blocked, True)

    def mute(self, src: str, dst: str, direction: str = "down") -> None:
        """Drop what flows ``direction`` (``"down"``: dst to src; ``"up"``: src to dst) on the
        link's open and future connections, keeping them open; ``heal`` undoes it."""
        if direction not in ("up", "down"):
            raise ValueError("direction is 'up' or 'down'")
        link = self._links[(src, dst)]
        self._loop.call_soon_threadsafe(link.muted.add, direction)

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        """Cut every link between the two sides, both directions."""
        side_b = list(side_b)
        for a in side_a:
            for b in side_b:
                for src, dst in ((a, b), (b, a)):
                    if (src, dst) in self._links:
                        self.block(src, dst)

    def heal(self) -> None:
        for link in self._links.values():
            self._loop.call_soon_threadsafe(link.set_blocked, False)
            self._loop.call_soon_threadsafe(link.muted.clear)

    def close(self) -> None:
        async def _close() -> None:
            for link in self._links.values():
                await link.close()

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class _Link:
    def __init__(self, target: Address) -> None:
        self.target = target
        self.blocked = False
        self.muted: set[str] = set()  # "up" and/or "down": data dropped that way
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._holes: set[asyncio.StreamWriter] = set()  # accepted while blocked: never forwarded

    async def start(self, host: str) -> int:
        self._server = await asyncio.start_server(self._handle, host, 0)
        return self._server.sockets[0].getsockname()[1]

    def set_blocked(self, blocked: bool) -> None:
        self.blocked = blocked
        for writer in list(self._conns if blocked else self._holes):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            if self.blocked:
                self._holes.add(writer)
                await self._black_hole(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._conns.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, "up"),
                self._pipe(up_reader, writer, "down"),
                return_exceptions=True,
            )
        finally:
            self._conns.discard(writer)
            self._holes.discard(writer)
            writer.close()

    async def _black_hole(self, reader: asyncio.StreamReader) -> None:
        while self.blocked and await reader.read(65536):
            pass

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while not self.blocked:
                data = await reader.read(65536)
                if not data:
                    break
                if direction in self.muted:
                    continue
                writer.write(data)
                await writer.drain()
        finally:
            self._conns.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._conns):
            writer.close()
        with contextlib.suppress(Exception):
            if self._server is not None:
                await self._server.wait_closed()
