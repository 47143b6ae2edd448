"""A lean HTTP/1.1 keep-alive client for the benchmarks' load generators.

The generator shares the 2 cores with the gateway and the fake provider, so what it spends is
taken from what it measures: one httpx client per worker cost about 1 ms of CPU per POST here
(3.7 of the 17 CPU-seconds of a 20,000-message inbound run), h11 about 0.3 ms. This one
writes each request in one piece and reads the answer with asyncio's stream buffer, the way
wrk does in C: it knows only what a benchmark needs (Content-Length or chunked answers,
keep-alive), and costs a fraction of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")


class KeepAliveConnection:
    """One connection to `host:port`, reused for request after request (reopened after an
    error or when the server says it will close)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def post(self, target: str, body: bytes, headers: dict[str, str],
                   timeout: float = 30.0) -> tuple[int, bytes]:
        """POST `body`; returns (status, response body). Errors close the connection."""
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(target, body, headers)
        except BaseException:
            await self.close()
            raise

    async def _exchange(self, target: str, body: bytes, headers: dict[str, str]
                        ) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        lines = [f"POST {target} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head[9:12])
        if b"\r\ntransfer-encoding: chunked" in head:
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append((await reader.readexactly(size + 2))[:-2])
            await reader.readuntil(b"\r\n")  # the blank line after the last chunk
            answer = b"".join(parts)
        else:
            length = CONTENT_LENGTH.search(head)
            answer = await reader.readexactly(int(length.group(1))) if length else b""
        if b"\r\nconnection: close" in head:
            await self.close()
        return status, answer
