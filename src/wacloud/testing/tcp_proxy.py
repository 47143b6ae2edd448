"""A TCP proxy on 127.0.0.1 that can play a broker outage: `cut()` closes every connection
through it and refuses new ones (the listening socket is closed, so connecting fails at once,
as with a broker that is down), `restore()` listens again on the same port.

What a broker restart or a network cut looks like to its clients, without touching the broker
itself (the machine's RabbitMQ is shared; moto's server keeps its queues in memory, and
restarting it would lose them, which is not what an SQS outage is). The fault harness
(`bench/chaos.py`) and the adapters' outage tests put it between wacloud and the broker.

It runs on an event loop in a thread of its own, so that synchronous and asynchronous callers
alike can use it, and its connections keep flowing while theirs block.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

HOST = "127.0.0.1"
CHUNK = 65536


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` until closed."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.StreamWriter] = set()
        self._closed = False

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def up(self) -> bool:
        return self._server is not None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> int:
        """Start listening; the port (a free one unless given)."""
        self._thread.start()
        self._run(self._listen())
        return self.port

    def cut(self) -> None:
        """The broker goes away: every connection is closed, new ones are refused."""
        self.cuts += 1
        self._run(self._cut())

    def restore(self) -> None:
        """The broker is back: accept connections again, on the same port."""
        self._run(self._listen())

    def close(self) -> None:
        if self._closed or not self._thread.is_alive():
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._run(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        # SO_REUSEADDR (asyncio's default on Unix): the port comes back at once after a cut.
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._streams):
            self._abort(writer)
        self._streams.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    @staticmethod
    def _abort(writer: asyncio.StreamWriter) -> None:
        # An abort (RST), not a polite close: nothing of what is buffered gets through.
        with contextlib.suppress(Exception):
            writer.transport.abort()

    async def _serve(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just as the cut came
            self._abort(client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._abort(client_writer)
            return
        if self._server is None:  # cut while connecting
            self._abort(client_writer)
            self._abort(server_writer)
            return
        pair = {client_writer, server_writer}
        self._streams |= pair
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer),
                                 self._pipe(server_reader, client_writer))
        finally:
            self._streams -= pair
            for writer in pair:
                self._abort(writer)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One side ended: end the other, so the pair never outlives it.
            with contextlib.suppress(Exception):
                writer.transport.abort()
