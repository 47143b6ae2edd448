"""`FakeProviderServer`: serve a `FakeProvider` over real HTTP from a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Self

import httpx
import uvicorn

from wacloud.testing.fake_provider.provider import FakeProvider

_POLL_INTERVAL = 0.01


class FakeProviderServer:
    """Runs uvicorn on `host` and a free port (or `port`) until `stop()` / context exit.

    Use `with FakeProviderServer() as server:` or `async with ...`; `server.provider` is the
    `FakeProvider` and `server.base_url` its root URL, e.g. `http://127.0.0.1:40123`.
    """

    def __init__(
        self,
        provider: FakeProvider | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.provider = provider if provider is not None else FakeProvider()
        self.host = host
        self._requested_port = port
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL for `path` on this server, e.g. `url("/v23.0/123")`."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("server already started")
        # Binding here (not inside uvicorn) gives us the port before the thread starts and
        # avoids the race of probing for a free port and then binding it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._socket = sock
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.provider.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(self.shutdown_timeout)),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, name=f"fake-provider-{self._port}", daemon=True
        )
        self._thread.start()
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # surfaced to the starting thread
            self._error = exc

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        health = self.url("/_fake/health")
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError("fake provider server exited during startup") from (
                        self._error
                    )
                try:
                    if client.get(health).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"fake provider not healthy after {self.startup_timeout}s")
                time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(self.shutdown_timeout)
            if thread.is_alive():
                # A client still holding a streaming download open; do not hang the tests.
                server.force_exit = True
                thread.join(self.shutdown_timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # Startup blocks while polling; run it off the caller's event loop.
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
